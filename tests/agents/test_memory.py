"""LastKnownState: bounded, least recently used dropped first, key containment kept."""

from __future__ import annotations

from mnemomd.agents.identity import Agent
from mnemomd.agents.memory import LastKnownState


def agent(n: int, **changes: object) -> Agent:
    return Agent(agent_hash=f"h{n}", agent_id=f"smolt-{n}", name=None, key_hash=f"k{n}",
                 **changes)  # type: ignore[arg-type]


def test_least_recently_used_agents_and_cards_are_dropped_first():
    memory = LastKnownState(max_agents=2, max_cards=1)
    memory.remember(agent(1))
    memory.remember(agent(2))
    assert memory.agent("h1") is not None  # used: h2 is now the oldest
    memory.remember(agent(3))
    assert (memory.holds("h1"), memory.holds("h2"), memory.holds("h3")) == (True, False, True)
    assert len(memory) == 2
    memory.remember_card("smolt-1", {"a": 1})
    memory.remember_card("smolt-2", {"a": 2})
    assert (memory.card("smolt-1"), memory.card("smolt-2")) == (None, {"a": 2})


def test_a_key_keeps_its_last_known_containment():
    memory = LastKnownState()
    assert memory.key_containment("k1") == "active"
    memory.remember(agent(1, key_containment_status="killed"))
    memory.forget("h1")
    assert memory.key_containment("k1") == "killed"
    memory.remember(agent(1))
    assert memory.key_containment("k1") == "active"
    assert memory.key_containment(None) == "active"

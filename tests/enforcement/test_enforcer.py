"""Enforcement decisions that need no storage: strategies, notices, refusals."""

from __future__ import annotations

import random

import pytest

from mnemomd.agents.identity import Agent
from mnemomd.enforcement.enforcer import (
    NOTICE_HEADER,
    combined_notice,
    containment_refusal,
    nudge_notice_for,
    should_nudge,
)
from mnemomd.enforcement.store import Nudge


def test_always_and_off():
    rng = random.Random(1)
    assert should_nudge("always", 0.0, 99, 1, rng)
    assert not should_nudge("off", 1.0, 1, 99, rng)


def test_sampling_follows_the_rate_with_a_seeded_generator():
    rng = random.Random(42)
    sampled = sum(should_nudge("sampling", 0.3, 3, 1, rng) for _ in range(10_000))
    assert 2700 < sampled < 3300
    first, second = random.Random(7), random.Random(7)
    assert [should_nudge("sampling", 0.5, 3, 1, first) for _ in range(50)] == \
        [second.random() < 0.5 for _ in range(50)]
    assert not any(should_nudge("sampling", 0.0, 3, 1, rng) for _ in range(100))
    assert all(should_nudge("sampling", 1.0, 3, 1, rng) for _ in range(100))


def test_threshold_counts_violations_in_the_session():
    rng = random.Random(0)
    assert [should_nudge("threshold", 1.0, 3, n, rng) for n in (1, 2, 3, 4)] == \
        [False, False, True, True]


def test_notice_carries_derived_analysis_only():
    notice = nudge_notice_for([{"category": "prompt_injection", "severity": "high",
                                "description": "Follows injected text", "evidence": "SECRET"}],
                              "ic-1")
    assert "prompt_injection (high): Follows injected text" in notice
    assert "SECRET" not in notice and "ic-1" in notice
    combined = combined_notice([Nudge("n1", "a", "s", "ic-1", "first", 1),
                                Nudge("n2", "a", "s", "ic-2", "second", 2)])
    assert combined.splitlines() == [NOTICE_HEADER, "- first", "- second"]


def test_contained_agents_are_refused():
    active = Agent("h", "smolt-1", None)
    assert containment_refusal(active) is None
    paused = Agent("h", "smolt-1", None, containment_status="paused")
    assert containment_refusal(paused) == {"error": "Agent contained",
                                           "type": "containment_error",
                                           "reason": "agent_paused", "scope": "agent"}
    killed = Agent("h", "smolt-1", None, containment_status="killed")
    assert containment_refusal(killed)["reason"] == "agent_killed"


@pytest.mark.parametrize("own, key, expected", [
    ("active", "active", None),
    ("paused", "active", ("agent_paused", "agent")),
    ("active", "paused", ("agent_paused", "key")),
    ("active", "killed", ("agent_killed", "key")),
    ("paused", "killed", ("agent_killed", "key")),
    ("killed", "paused", ("agent_killed", "agent")),
    ("paused", "paused", ("agent_paused", "key")),
    ("killed", "killed", ("agent_killed", "key")),
])
def test_the_worse_of_the_agents_and_its_keys_state_refuses(own, key, expected):
    agent = Agent("h", "smolt-1", "x", containment_status=own, key_hash="k",
                  key_containment_status=key)
    refusal = containment_refusal(agent)
    assert (None if refusal is None else (refusal["reason"], refusal["scope"])) == expected

"""The last known state of each agent, in process memory, for when storage is down.

Every agent the directory resolves is remembered here (the whole ``Agent``: mode,
settings, its own and its key's containment), and so are the card and conscience values
the integrity pipeline reads. When both the database and the KV store fail, decisions are
made from this: a paused or killed agent stays refused, an ``enforce`` agent stays held
and is analysed against its last known card. Changes made through the API (or by another
process, seen by the directory's change poll) update the entries as they invalidate the
KV cache, so a pause made before an outage holds during it.

Bounded: the ``max_agents`` most recently used agents and the ``max_cards`` most recently
used cards (each with its conscience values) are kept, the least recently used dropped
first. Nothing here is written
anywhere; it lives and dies with the process.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Generic, TypeVar

from mnemomd.agents.identity import CONTAINMENT_SEVERITY, Agent

#: Agents kept: an ``Agent`` takes about 0.5 KB, so some 26 MB at the most.
MAX_REMEMBERED_AGENTS = 50_000
#: Cards (and conscience value lists) kept: a default card with its values takes about
#: 8 KB once parsed, so some 80 MB at the most. Only analysed agents have one read.
MAX_REMEMBERED_CARDS = 10_000

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A dict that keeps its ``limit`` most recently used entries."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class LastKnownState:
    """Agents by hash, key containment by key hash, cards and conscience values by
    agent id: what the gateway last read of each."""

    def __init__(self, max_agents: int = MAX_REMEMBERED_AGENTS,
                 max_cards: int = MAX_REMEMBERED_CARDS) -> None:
        self._agents: Lru[str, Agent] = Lru(max_agents)
        #: The key's containment state as last seen on any agent of the key.
        self._keys: Lru[str, str] = Lru(max_agents)
        self._cards: Lru[str, dict[str, Any]] = Lru(max_cards)
        self._conscience: Lru[str, list[Any]] = Lru(max_cards)

    def remember(self, agent: Agent) -> None:
        self._agents.put(agent.agent_hash, agent)
        if agent.key_hash is not None:
            self._keys.put(agent.key_hash, agent.key_containment_status)

    def agent(self, hash_: str) -> Agent | None:
        return self._agents.get(hash_)

    def forget(self, hash_: str) -> None:
        self._agents.pop(hash_)

    def holds(self, hash_: str) -> bool:
        return hash_ in self._agents

    def key_containment(self, key_hash: str | None) -> str:
        """The last known containment state of a key (``active`` when unknown)."""
        if key_hash is None:
            return "active"
        status = self._keys.get(key_hash)
        return status if status in CONTAINMENT_SEVERITY else "active"

    def remember_card(self, agent_id: str, card: dict[str, Any]) -> None:
        self._cards.put(agent_id, card)

    def card(self, agent_id: str) -> dict[str, Any] | None:
        return self._cards.get(agent_id)

    def remember_conscience(self, agent_id: str, values: list[Any]) -> None:
        self._conscience.put(agent_id, values)

    def conscience(self, agent_id: str) -> list[Any] | None:
        return self._conscience.get(agent_id)

    def holds_card(self, agent_id: str) -> bool:
        return agent_id in self._cards or agent_id in self._conscience

    def __len__(self) -> int:
        """Agents remembered."""
        return len(self._agents)

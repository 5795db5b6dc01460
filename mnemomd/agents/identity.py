"""Who is calling: agent hash, agent id and session id, derived from the call alone.

The provider key identifies the agent, but the key itself is never kept: only the first
16 hex characters of its SHA-256 (with the agent name for ``/agent/{name}/…`` routes, so
one key can carry several agents). Every agent also records its key's hash (the plain
agent's hash), so that a key-scoped containment reaches every name the key is used under.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, succeed

SESSION_HEADER = b"x-mnemom-session"
_SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_AGENT_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
HOUR_MS = 3_600_000
#: Containment states, least severe first: an agent is held by the worse of its own state
#: and its key's.
CONTAINMENT_SEVERITY = ("active", "paused", "killed")
#: What ``enforce`` does with a response that has no analysable reasoning (SPEC §6.2):
#: deliver it unverified, analyse its output instead, or refuse it.
WITHOUT_REASONING_MODES = ("allow", "analyse_output", "refuse")


def agent_hash(api_key: bytes, agent_name: str | None = None) -> str:
    """First 16 hex chars of SHA-256(key), or of SHA-256(key + "\\n" + name)."""
    material = api_key if agent_name is None else api_key + b"\n" + agent_name.encode()
    return hashlib.sha256(material).hexdigest()[:16]


def default_session_id(hash_: str, epoch_ms: int) -> str:
    """Calls of one agent within one clock hour form a session unless the client says."""
    return f"{hash_}-{epoch_ms // HOUR_MS}"


def is_valid_session_id(value: str) -> bool:
    return _SESSION_ID.fullmatch(value) is not None


def is_valid_agent_name(value: str) -> bool:
    return _AGENT_NAME.fullmatch(value) is not None


def agent_id_candidates(hash_: str) -> list[str]:
    """``smolt-`` + 8 hex chars, growing one char at a time if that id is taken."""
    return [f"smolt-{hash_[:n]}" for n in range(8, len(hash_) + 1)]


@dataclass(frozen=True)
class Agent:
    """An agent and the settings the gateway acts on (SPEC §9.3)."""

    agent_hash: str
    agent_id: str
    name: str | None
    enforcement_mode: str = "observe"
    aip_enabled: bool = True
    aap_enabled: bool = True
    nudge_strategy: str = "always"
    nudge_rate: float = 1.0
    nudge_threshold: int = 3
    #: The agent's own containment state (agent scope).
    containment_status: str = "active"
    auto_containment_threshold: int | None = None
    created_at: int = 0
    without_reasoning: str = "allow"
    #: The hash of the key alone (the plain agent's hash); None for a named agent created
    #: before keys were recorded, until its next call.
    key_hash: str | None = None
    #: The key's containment state (key scope), or the one waiting for the key to be known.
    key_containment_status: str = "active"


def effective_containment(agent: Agent) -> tuple[str, str | None]:
    """(state, scope) that holds the agent: the worse of its own and its key's state.

    The scope is ``key`` when the key's state is at least as severe as the agent's own
    (lifting the agent alone would not free it), ``agent`` when only the agent's own
    state holds it, None for an active agent.
    """
    own = CONTAINMENT_SEVERITY.index(agent.containment_status) \
        if agent.containment_status in CONTAINMENT_SEVERITY else 0
    key = CONTAINMENT_SEVERITY.index(agent.key_containment_status) \
        if agent.key_containment_status in CONTAINMENT_SEVERITY else 0
    if own == 0 and key == 0:
        return "active", None
    if key >= own:
        return CONTAINMENT_SEVERITY[key], "key"
    return CONTAINMENT_SEVERITY[own], "agent"


class AgentDirectory(Protocol):
    """Resolves an agent hash to its agent, creating it on first sight.

    ``key_hash`` is the hash of the call's key alone (``agent_hash(key)``): recorded with
    a new agent, and learnt by a named agent created before keys were recorded.
    """

    def resolve(self, hash_: str, name: str | None,
                key_hash: str | None = None) -> Deferred[Agent]: ...

    def last_known(self, hash_: str, name: str | None,
                   key_hash: str | None) -> Agent | None:
        """What is still known of the agent when ``resolve`` failed or gave up: its last
        known state (or one carrying its key's containment), None when nothing is."""
        ...


class InMemoryAgentDirectory:
    """Agents known to this process only; persistent storage replaces it."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Agent] = {}
        self._taken_ids: set[str] = set()

    def resolve(self, hash_: str, name: str | None,
                key_hash: str | None = None) -> Deferred[Agent]:
        agent = self._by_hash.get(hash_)
        if agent is None:
            agent_id = next(c for c in agent_id_candidates(hash_) if c not in self._taken_ids)
            agent = Agent(agent_hash=hash_, agent_id=agent_id, name=name,
                          key_hash=key_hash if name is not None else hash_)
            self._by_hash[hash_] = agent
            self._taken_ids.add(agent_id)
        return succeed(agent)

    def last_known(self, hash_: str, name: str | None,
                   key_hash: str | None) -> Agent | None:
        return self._by_hash.get(hash_)

    def __len__(self) -> int:
        return len(self._by_hash)

"""Who is calling: agent hash, agent id and session id, derived from the call alone.

The provider key identifies the agent, but the key itself is never kept: only the first
16 hex characters of its SHA-256 (with the agent name for ``/agent/{name}/…`` routes, so
one key can carry several agents).
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
    containment_status: str = "active"
    auto_containment_threshold: int | None = None
    created_at: int = 0
    without_reasoning: str = "allow"


class AgentDirectory(Protocol):
    """Resolves an agent hash to its agent, creating it on first sight."""

    def resolve(self, hash_: str, name: str | None) -> Deferred[Agent]: ...


class InMemoryAgentDirectory:
    """Agents known to this process only; persistent storage replaces it."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Agent] = {}
        self._taken_ids: set[str] = set()

    def resolve(self, hash_: str, name: str | None) -> Deferred[Agent]:
        agent = self._by_hash.get(hash_)
        if agent is None:
            agent_id = next(c for c in agent_id_candidates(hash_) if c not in self._taken_ids)
            agent = Agent(agent_hash=hash_, agent_id=agent_id, name=name)
            self._by_hash[hash_] = agent
            self._taken_ids.add(agent_id)
        return succeed(agent)

    def __len__(self) -> int:
        return len(self._by_hash)

"""Enforcement state: modes and settings, containment with its log, and nudges.

Every containment change is written together with its log row in one transaction, so
the log is a complete history of who paused, resumed, killed or reactivated an agent.

Containment has a scope. ``agent`` changes the agent's own row. ``key`` changes the row of
its API key in ``key_containments``, which holds every agent of the key: the plain one,
every named one, and names first used later (they are read joined with it). Without a
scope, ``kill`` takes the key (a kill is meant to stop whoever holds the key, under any
name), ``pause`` the agent, and ``resume`` / ``reactivate`` the scope in force.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from mnemomd.agents.identity import WITHOUT_REASONING_MODES, Agent
from mnemomd.agents.store import AGENT_COLUMNS, AGENT_FROM, key_agents, row_to_agent
from mnemomd.storage.database import Cursor, Database
from mnemomd.storage.writes import Write, WriteQueue, insert_many
from mnemomd.webhooks.store import enqueue_event, enqueue_events

MODES = ("observe", "nudge", "enforce")
NUDGE_STRATEGIES = ("always", "sampling", "threshold", "off")

#: action -> (states it may start from, state it leads to)
CONTAINMENT_ACTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "pause": (("active",), "paused"),
    "resume": (("paused",), "active"),
    "kill": (("active", "paused"), "killed"),
    "reactivate": (("killed", "paused"), "active"),
}

#: containment status reached -> the webhook event that reports it.
CONTAINMENT_EVENTS = {"paused": "agent.paused", "active": "agent.resumed",
                      "killed": "agent.killed"}

#: What a containment action acts on: the agent alone, or every agent of its API key.
SCOPES = ("agent", "key")

NUDGE_MAX_AGE_MS = 4 * 3600 * 1000
#: The write-queue kind of nudges (``storage.writes``).
NUDGE_WRITE = "nudge"
NUDGE_FIELDS = ("id", "agent_id", "session_id", "checkpoint_id", "notice", "status",
                "created_at", "expires_at")


def write_nudges(cursor: Cursor, writes: list[Write]) -> list[str]:
    """Insert queued nudges and queue ``nudge.created`` for those that were new."""
    rows = [(w.row["id"], w.row["agent_id"], w.row["session_id"], w.row["checkpoint_id"],
             w.row["notice"], "pending", w.row["created_at"], w.row["expires_at"])
            for w in writes]
    inserted = set(insert_many(cursor, "nudges", NUDGE_FIELDS, rows, returning="id"))
    return enqueue_events(cursor, [
        ("nudge.created", w.row["agent_id"],
         {"nudge_id": w.row["id"], "session_id": w.row["session_id"],
          "checkpoint_id": w.row["checkpoint_id"]}, w.row["created_at"])
        for w in writes if w.row["id"] in inserted])
NUDGES_PER_CALL = 5


class EnforcementError(ValueError):
    """A change that cannot be made (unknown agent, invalid value or transition)."""


@dataclass(frozen=True)
class ContainmentChange:
    agent: Agent
    action: str
    from_status: str
    to_status: str
    actor: str
    reason: str | None
    scope: str = "agent"
    #: The key changed (key scope), None when it is not known yet.
    key_hash: str | None = None
    #: False for a key-scoped change through an agent whose key is not known yet: it
    #: holds that agent now and the key from the agent's next call.
    key_known: bool = True
    #: (agent_hash, agent_id) of every agent the change holds or frees.
    agents: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Nudge:
    id: str
    agent_id: str
    session_id: str | None
    checkpoint_id: str | None
    notice: str
    created_at: int


def _agent(cursor: Cursor, agent_id: str) -> Agent:
    row = cursor.execute(f"SELECT {AGENT_COLUMNS} FROM {AGENT_FROM} WHERE a.id = ?",
                         (agent_id,)).fetchone()
    if row is None:
        raise EnforcementError(f"no agent {agent_id}")
    return row_to_agent(row)


SETTING_CHECKS: dict[str, Any] = {
    "enforcement_mode": lambda v: v in MODES,
    "nudge_strategy": lambda v: v in NUDGE_STRATEGIES,
    "nudge_rate": lambda v: isinstance(v, int | float) and not isinstance(v, bool)
    and 0.0 <= v <= 1.0,
    "nudge_threshold": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "aip_enabled": lambda v: isinstance(v, bool),
    "aap_enabled": lambda v: isinstance(v, bool),
    "auto_containment_threshold": lambda v: v is None or (
        isinstance(v, int) and not isinstance(v, bool) and v >= 2),
    "without_reasoning": lambda v: v in WITHOUT_REASONING_MODES,
}


def _update_settings(cursor: Cursor, agent_id: str, changes: dict[str, Any],
                     now_ms: int) -> Agent:
    for name, value in changes.items():
        check = SETTING_CHECKS.get(name)
        if check is None:
            raise EnforcementError(f"unknown setting {name}")
        if not check(value):
            raise EnforcementError(f"invalid value for {name}: {value!r}")
    _agent(cursor, agent_id)
    if changes:
        assignments = ", ".join(f"{name} = ?" for name in changes)
        cursor.execute(f"UPDATE agents SET {assignments}, updated_at = ? WHERE id = ?",
                       (*changes.values(), now_ms, agent_id))
    return _agent(cursor, agent_id)


def default_scope(action: str, agent: Agent) -> str:
    """The scope of an action given without one: ``kill`` the key, ``pause`` the agent,
    ``resume`` / ``reactivate`` the key while the key is held, else the agent."""
    if action == "kill":
        return "key"
    if action == "pause":
        return "agent"
    return "key" if agent.key_containment_status != "active" else "agent"


def _contain(cursor: Cursor, agent_id: str, action: str, actor: str, reason: str | None,
             now_ms: int, scope: str | None = None) -> ContainmentChange:
    if action not in CONTAINMENT_ACTIONS:
        raise EnforcementError(f"unknown containment action {action}")
    agent = _agent(cursor, agent_id)
    scope = scope or default_scope(action, agent)
    if scope not in SCOPES:
        raise EnforcementError(f"unknown containment scope {scope}")
    if scope == "agent":
        return _contain_agent(cursor, agent, action, actor, reason, now_ms)
    if agent.key_hash is None:
        return _contain_unknown_key(cursor, agent, action, actor, reason, now_ms)
    return _contain_key(cursor, agent, agent.key_hash, action, actor, reason, now_ms)


def _log(cursor: Cursor, agent_id: str, action: str, from_status: str, to_status: str,
         actor: str, reason: str | None, now_ms: int, scope: str,
         key_hash: str | None) -> None:
    cursor.execute("INSERT INTO containment_log (id, agent_id, action, from_status, to_status, "
                   "actor, reason, created_at, scope, key_hash) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (f"cl-{uuid.uuid4().hex}", agent_id, action, from_status, to_status, actor,
                    reason, now_ms, scope, key_hash))


def _event(cursor: Cursor, agent_id: str, action: str, from_status: str, to_status: str,
           actor: str, reason: str | None, now_ms: int, **scope: Any) -> None:
    enqueue_event(cursor, CONTAINMENT_EVENTS[to_status], agent_id,
                  {"action": action, "from_status": from_status, "to_status": to_status,
                   "actor": actor, "reason": reason, **scope}, now_ms)


def _contain_agent(cursor: Cursor, agent: Agent, action: str, actor: str, reason: str | None,
                   now_ms: int) -> ContainmentChange:
    allowed_from, to_status = CONTAINMENT_ACTIONS[action]
    agent_id = agent.agent_id
    if to_status == "active" and agent.key_containment_status != "active":
        # Lifting the agent alone would leave it held: say so rather than pretend.
        raise EnforcementError(f"{agent_id} is {agent.key_containment_status} by its key; "
                               f"{action} it with scope key")
    if agent.containment_status not in allowed_from:
        raise EnforcementError(f"cannot {action} an agent that is {agent.containment_status}")
    cursor.execute("UPDATE agents SET containment_status = ?, containment_reason = ?, "
                   "containment_changed_at = ?, updated_at = ? WHERE id = ? "
                   "AND containment_status = ?",
                   (to_status, reason, now_ms, now_ms, agent_id, agent.containment_status))
    _log(cursor, agent_id, action, agent.containment_status, to_status, actor, reason, now_ms,
         "agent", None)
    _event(cursor, agent_id, action, agent.containment_status, to_status, actor, reason,
           now_ms, scope="agent")
    return ContainmentChange(_agent(cursor, agent_id), action, agent.containment_status,
                             to_status, actor, reason, "agent", None, True,
                             ((agent.agent_hash, agent_id),))


def _contain_key(cursor: Cursor, agent: Agent, key_hash: str, action: str, actor: str,
                 reason: str | None, now_ms: int) -> ContainmentChange:
    allowed_from, to_status = CONTAINMENT_ACTIONS[action]
    row = cursor.execute("SELECT containment_status FROM key_containments WHERE key_hash = ?",
                         (key_hash,)).fetchone()
    current = row[0] if row else "active"
    if current not in allowed_from:
        raise EnforcementError(f"cannot {action} a key that is {current}")
    # A lifted key keeps its row ('active'): replicas notice the lift by its updated_at.
    written = cursor.execute(
        "INSERT INTO key_containments (key_hash, containment_status, containment_reason, "
        "containment_changed_at, origin_agent_id, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key_hash) DO UPDATE SET "
        "containment_status = excluded.containment_status, "
        "containment_reason = excluded.containment_reason, "
        "containment_changed_at = excluded.containment_changed_at, "
        "origin_agent_id = excluded.origin_agent_id, updated_at = excluded.updated_at "
        "WHERE key_containments.containment_status = ?",
        (key_hash, to_status, reason, now_ms, agent.agent_id, now_ms, now_ms,
         current)).rowcount
    if written != 1:
        raise EnforcementError(f"the key's containment changed meanwhile; cannot {action} it")
    agents = key_agents(cursor, key_hash)
    _log(cursor, agent.agent_id, action, current, to_status, actor, reason, now_ms, "key",
         key_hash)
    _event(cursor, agent.agent_id, action, current, to_status, actor, reason, now_ms,
           scope="key", key_hash=key_hash, agents=len(agents))
    return ContainmentChange(_agent(cursor, agent.agent_id), action, current, to_status, actor,
                             reason, "key", key_hash, True, tuple(agents))


def _contain_unknown_key(cursor: Cursor, agent: Agent, action: str, actor: str,
                         reason: str | None, now_ms: int) -> ContainmentChange:
    """A key-scoped change through a named agent that has not called since keys were
    recorded: it waits on the agent (``pending_key_status``, read as its key's state),
    and moves to the key when the agent's next call reveals it (``_learn_key``)."""
    allowed_from, to_status = CONTAINMENT_ACTIONS[action]
    current = agent.key_containment_status
    if current not in allowed_from:
        raise EnforcementError(f"cannot {action} a key that is {current}")
    written = cursor.execute(
        "UPDATE agents SET pending_key_status = ?, updated_at = ? WHERE id = ? "
        "AND key_hash IS NULL AND COALESCE(pending_key_status, 'active') = ?",
        (None if to_status == "active" else to_status, now_ms, agent.agent_id,
         current)).rowcount
    if written != 1:
        raise EnforcementError(f"the key's containment changed meanwhile; cannot {action} it")
    _log(cursor, agent.agent_id, action, current, to_status, actor, reason, now_ms, "key",
         None)
    _event(cursor, agent.agent_id, action, current, to_status, actor, reason, now_ms,
           scope="key", key_hash=None, agents=1)
    return ContainmentChange(_agent(cursor, agent.agent_id), action, current, to_status, actor,
                             reason, "key", None, False, ((agent.agent_hash, agent.agent_id),))


def _auto_contain(cursor: Cursor, agent_id: str, threshold: int,
                  now_ms: int) -> ContainmentChange | None:
    # Only violations since the last containment change count: a resumed agent starts
    # a new streak. Synthetic checkpoints (nothing was analysed) neither count nor break
    # it, so an analysis outage under fail_closed does not pause every agent.
    rows = cursor.execute(
        "SELECT c.verdict FROM integrity_checkpoints c JOIN agents a ON a.id = c.agent_id "
        "WHERE c.agent_id = ? AND c.synthetic = ? "
        "AND c.created_at > COALESCE(a.containment_changed_at, 0) "
        "ORDER BY c.created_at DESC, c.id DESC LIMIT ?", (agent_id, False, threshold)).fetchall()
    if len(rows) < threshold or any(r[0] != "boundary_violation" for r in rows):
        return None
    if _agent(cursor, agent_id).containment_status != "active":
        return None
    return _contain(cursor, agent_id, "pause", "system",
                    f"{threshold} consecutive boundary violations", now_ms, "agent")


class EnforcementStore:
    def __init__(self, db: Database, writes: WriteQueue | None = None) -> None:
        """With ``writes``, nudges are written through the write queue (this registers
        their kind)."""
        self._db = db
        self._writes = writes
        if writes is not None:
            writes.register(NUDGE_WRITE, write_nudges)

    def agent(self, agent_id: str) -> Deferred[Agent]:
        return self._db.run_interaction("get_agent", _agent, agent_id)

    def update_settings(self, agent_id: str, changes: dict[str, Any],
                        now_ms: int) -> Deferred[Agent]:
        return self._db.run_interaction("update_agent_settings", _update_settings, agent_id,
                                        changes, now_ms)

    def contain(self, agent_id: str, action: str, actor: str, reason: str | None,
                now_ms: int, scope: str | None = None) -> Deferred[ContainmentChange]:
        """Apply ``action`` to the agent or to its key (``scope``; None: the default)."""
        return self._db.run_interaction("contain_agent", _contain, agent_id, action, actor,
                                        reason, now_ms, scope)

    def auto_contain(self, agent_id: str, threshold: int,
                     now_ms: int) -> Deferred[ContainmentChange | None]:
        """Pause the agent if its last ``threshold`` checkpoints were all violations."""
        return self._db.run_interaction("auto_contain", _auto_contain, agent_id, threshold,
                                        now_ms)

    def containment_log(self, agent_id: str) -> Deferred[list[dict[str, Any]]]:
        """The agent's changes and its key's, oldest first."""
        def read(cursor: Cursor) -> list[dict[str, Any]]:
            agent = _agent(cursor, agent_id)
            rows = cursor.execute(
                "SELECT id, agent_id, action, from_status, to_status, actor, reason, "
                "created_at, scope, key_hash FROM containment_log WHERE agent_id = ? "
                "OR (scope = 'key' AND key_hash = ?) ORDER BY created_at, id",
                (agent_id, agent.key_hash)).fetchall()
            keys = ("id", "agent_id", "action", "from_status", "to_status", "actor", "reason",
                    "created_at", "scope", "key_hash")
            return [dict(zip(keys, r, strict=True)) for r in rows]

        return self._db.run_interaction("containment_log", read)

    def session_violations(self, agent_id: str, session_id: str) -> Deferred[int]:
        """Real violations of the session (the ``threshold`` nudge strategy counts them);
        synthetic ones are not findings."""
        return self._db.run_interaction(
            "session_violations",
            lambda c: int(c.execute(
                "SELECT COUNT(*) FROM integrity_checkpoints WHERE agent_id = ? AND "
                "session_id = ? AND verdict = 'boundary_violation' AND synthetic = ?",
                (agent_id, session_id, False)).fetchone()[0]))

    # -- nudges -----------------------------------------------------------------------

    def create_nudge(self, agent_id: str, session_id: str | None, checkpoint_id: str | None,
                     notice: str, now_ms: int) -> Deferred[str]:
        """A pending nudge (and its ``nudge.created`` event). Through the write queue when
        the store has one: it then survives a database outage in the spool."""
        nudge_id = f"ndg-{uuid.uuid4().hex}"
        if self._writes is not None:
            done = self._writes.submit(Write(NUDGE_WRITE, nudge_id, {
                "id": nudge_id, "agent_id": agent_id, "session_id": session_id,
                "checkpoint_id": checkpoint_id, "notice": notice, "created_at": now_ms,
                "expires_at": now_ms + NUDGE_MAX_AGE_MS}), wait=True)
            assert done is not None
            return done.addCallback(lambda _: nudge_id)

        def write(cursor: Cursor) -> str:
            cursor.execute(
                "INSERT INTO nudges (id, agent_id, session_id, checkpoint_id, notice, status, "
                "created_at, expires_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                (nudge_id, agent_id, session_id, checkpoint_id, notice, now_ms,
                 now_ms + NUDGE_MAX_AGE_MS))
            enqueue_event(cursor, "nudge.created", agent_id,
                          {"nudge_id": nudge_id, "session_id": session_id,
                           "checkpoint_id": checkpoint_id}, now_ms)
            return nudge_id

        return self._db.run_interaction("create_nudge", write)

    def pending_nudges(self, agent_id: str, now_ms: int) -> Deferred[list[Nudge]]:
        def read(cursor: Cursor) -> list[Nudge]:
            rows = cursor.execute(
                "SELECT id, agent_id, session_id, checkpoint_id, notice, created_at FROM nudges "
                "WHERE agent_id = ? AND status = 'pending' AND expires_at > ? "
                "ORDER BY created_at, id LIMIT ?",
                (agent_id, now_ms, NUDGES_PER_CALL)).fetchall()
            return [Nudge(*r) for r in rows]

        return self._db.run_interaction("pending_nudges", read)

    def mark_delivered(self, nudge_ids: list[str], now_ms: int) -> Deferred[int]:
        def write(cursor: Cursor) -> int:
            cursor.executemany(
                "UPDATE nudges SET status = 'delivered', delivered_at = ? "
                "WHERE id = ? AND status = 'pending'", [(now_ms, i) for i in nudge_ids])
            return len(nudge_ids)

        return self._db.run_interaction("mark_nudges_delivered", write)

    def expire_nudges(self, now_ms: int) -> Deferred[int]:
        return self._db.execute("expire_nudges",
                                "UPDATE nudges SET status = 'expired' WHERE status = 'pending' "
                                "AND expires_at <= ?", (now_ms,))

    def nudges(self, agent_id: str) -> Deferred[list[dict[str, Any]]]:
        def read(cursor: Cursor) -> list[dict[str, Any]]:
            rows = cursor.execute(
                "SELECT id, status, session_id, checkpoint_id, created_at, delivered_at "
                "FROM nudges WHERE agent_id = ? ORDER BY created_at, id", (agent_id,)).fetchall()
            keys = ("id", "status", "session_id", "checkpoint_id", "created_at",
                    "delivered_at")
            return [dict(zip(keys, r, strict=True)) for r in rows]

        return self._db.run_interaction("list_nudges", read)

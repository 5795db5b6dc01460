"""Agents, their default alignment card and conscience values, persisted on first sight.

Creation must happen exactly once even when fifty first calls with one new key arrive at
once, on several replicas: the insert is ``ON CONFLICT DO NOTHING`` on both unique
columns, and whoever's row won is read back. Only the inserting transaction adds the
default card and conscience values.

Every agent is read joined with its key's containment (``key_containments``), so the
effective containment costs the hot path no extra round trip.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from aap.schemas.alignment_card import AlignmentCard
from aip import DEFAULT_CONSCIENCE_VALUES
from twisted.internet.defer import Deferred

from mnemomd.agents.identity import CONTAINMENT_SEVERITY, Agent, agent_id_candidates
from mnemomd.storage.database import Cursor, Database

DEFAULT_DECLARED_VALUES = ("transparency", "accuracy", "helpfulness", "safety", "autonomy",
                           "honesty", "quality")
DEFAULT_RETENTION_DAYS = 365

#: An agent is read together with its key's containment, so the one cached lookup of the
#: hot path knows both states (``key_containment_status``: the key's row, else a key action
#: waiting for the key to be known). Select ``AGENT_COLUMNS FROM AGENT_FROM``.
AGENT_COLUMNS = ("a.id, a.agent_hash, a.name, a.enforcement_mode, a.aip_enabled, "
                 "a.aap_enabled, a.nudge_strategy, a.nudge_rate, a.nudge_threshold, "
                 "a.containment_status, a.auto_containment_threshold, a.created_at, "
                 "a.without_reasoning, a.key_hash, "
                 "COALESCE(k.containment_status, a.pending_key_status, 'active')")
AGENT_FROM = "agents a LEFT JOIN key_containments k ON k.key_hash = a.key_hash"


def default_alignment_card(agent_id: str, now_ms: int) -> dict[str, Any]:
    """The card a new agent starts with (SPEC §9.3), validated by the AAP model."""
    issued = datetime.fromtimestamp(now_ms / 1000, UTC)
    card = AlignmentCard.model_validate({
        "card_id": f"ac-{uuid.uuid4().hex}",
        "agent_id": agent_id,
        "issued_at": issued,
        "principal": {"type": "unspecified", "relationship": "delegated_authority"},
        "values": {"declared": list(DEFAULT_DECLARED_VALUES)},
        "autonomy": {"bounded_actions": ["inference"], "escalation_triggers": []},
        # The management API serves the traces: that is where the audit trail is queried.
        "audit": {"retention_days": DEFAULT_RETENTION_DAYS, "queryable": True,
                  "query_endpoint": f"/v1/agents/{agent_id}/traces"},
    })
    return card.model_dump(mode="json", exclude_none=True)


def default_conscience_values() -> list[dict[str, Any]]:
    return [{"type": v.type, "content": v.content, "id": v.id}
            for v in DEFAULT_CONSCIENCE_VALUES]


def row_to_agent(row: tuple[Any, ...]) -> Agent:
    (agent_id, hash_, name, mode, aip_enabled, aap_enabled, strategy, rate, threshold,
     containment, auto_threshold, created_at, without_reasoning, key_hash,
     key_containment) = row
    return Agent(agent_hash=hash_, agent_id=agent_id, name=name, enforcement_mode=mode,
                 aip_enabled=bool(aip_enabled), aap_enabled=bool(aap_enabled),
                 nudge_strategy=strategy, nudge_rate=float(rate),
                 nudge_threshold=int(threshold), containment_status=containment,
                 auto_containment_threshold=auto_threshold, created_at=int(created_at),
                 without_reasoning=without_reasoning, key_hash=key_hash,
                 key_containment_status=key_containment)


def _select_by_hash(cursor: Cursor, hash_: str) -> Agent | None:
    row = cursor.execute(f"SELECT {AGENT_COLUMNS} FROM {AGENT_FROM} WHERE a.agent_hash = ?",
                         (hash_,)).fetchone()
    return row_to_agent(row) if row else None


def _get_or_create(cursor: Cursor, hash_: str, name: str | None, enforcement_mode: str,
                   now_ms: int, without_reasoning: str = "allow",
                   key_hash: str | None = None) -> Agent:
    existing = _select_by_hash(cursor, hash_)
    if existing is not None:
        return existing
    # A plain agent's key is its own hash. The row is read back through the join, so a
    # name first used after its key was contained starts contained.
    key = hash_ if name is None else key_hash
    for agent_id in agent_id_candidates(hash_):
        inserted = cursor.execute(
            "INSERT INTO agents (id, agent_hash, name, enforcement_mode, without_reasoning, "
            "key_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (agent_id, hash_, name, enforcement_mode, without_reasoning, key, now_ms,
             now_ms)).rowcount
        if inserted == 1:
            card = default_alignment_card(agent_id, now_ms)
            cursor.execute(
                "INSERT INTO alignment_cards (agent_id, card_id, card, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (agent_id, card["card_id"], json.dumps(card), now_ms, now_ms))
            cursor.execute(
                "INSERT INTO conscience_values (agent_id, value_set, is_default, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (agent_id, json.dumps(default_conscience_values()), True, now_ms))
        # Inserted by us, by a concurrent creator of the same agent, or the id was
        # taken by another agent (then try the next, longer id).
        agent = _select_by_hash(cursor, hash_)
        if agent is not None:
            return agent
    raise RuntimeError(f"no free agent id for hash {hash_}")


def key_agents(cursor: Cursor, key_hash: str) -> list[tuple[str, str]]:
    """(agent_hash, agent_id) of every agent of a key: what a key change must invalidate."""
    return [(h, i) for h, i in cursor.execute(
        "SELECT agent_hash, id FROM agents WHERE key_hash = ? ORDER BY id",
        (key_hash,)).fetchall()]


def _learn_key(cursor: Cursor, hash_: str, key_hash: str,
               now_ms: int) -> tuple[Agent | None, list[tuple[str, str]]]:
    """Record the key of a named agent created before keys were recorded.

    A key-scoped pause or kill taken through the agent meanwhile (``pending_key_status``)
    moves to the key's row, unless the key is already held at least as hard; the log rows
    of those actions get the key, so every agent of the key shows them. Returns the agent
    and, when the key's state changed, every agent of the key (their cache entries are
    stale).
    """
    row = cursor.execute("SELECT id, pending_key_status FROM agents WHERE agent_hash = ? "
                         "AND key_hash IS NULL", (hash_,)).fetchone()
    if row is None:  # learnt already, or no such agent
        return _select_by_hash(cursor, hash_), []
    agent_id, pending = row
    learnt = cursor.execute(
        "UPDATE agents SET key_hash = ?, pending_key_status = NULL, updated_at = ? "
        "WHERE id = ? AND key_hash IS NULL", (key_hash, now_ms, agent_id)).rowcount
    if learnt != 1:
        return _select_by_hash(cursor, hash_), []
    cursor.execute("UPDATE containment_log SET key_hash = ? WHERE agent_id = ? "
                   "AND scope = 'key' AND key_hash IS NULL", (key_hash, agent_id))
    changed: list[tuple[str, str]] = []
    if pending in CONTAINMENT_SEVERITY[1:]:
        last = cursor.execute(
            "SELECT reason, created_at FROM containment_log WHERE agent_id = ? AND "
            "scope = 'key' AND key_hash = ? ORDER BY created_at DESC, id DESC LIMIT 1",
            (agent_id, key_hash)).fetchone()
        reason, changed_at = last if last else (None, now_ms)
        weaker = CONTAINMENT_SEVERITY[:CONTAINMENT_SEVERITY.index(pending)]
        marks = ", ".join("?" for _ in weaker)
        escalated = cursor.execute(
            "INSERT INTO key_containments (key_hash, containment_status, containment_reason,"
            " containment_changed_at, origin_agent_id, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key_hash) DO UPDATE SET "
            "containment_status = excluded.containment_status, "
            "containment_reason = excluded.containment_reason, "
            "containment_changed_at = excluded.containment_changed_at, "
            "origin_agent_id = excluded.origin_agent_id, updated_at = excluded.updated_at "
            f"WHERE key_containments.containment_status IN ({marks})",
            (key_hash, pending, reason, int(changed_at), agent_id, now_ms, now_ms,
             *weaker)).rowcount
        if escalated:
            changed = key_agents(cursor, key_hash)
    return _select_by_hash(cursor, hash_), changed


def _touch(cursor: Cursor, seen: list[tuple[int, str]]) -> int:
    cursor.executemany(
        "UPDATE agents SET last_seen_at = ? WHERE id = ? AND "
        "(last_seen_at IS NULL OR last_seen_at < ?)",
        [(at, agent_id, at) for at, agent_id in seen])
    return len(seen)


class AgentStore:
    """Agent rows and what hangs off them."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get_or_create(self, hash_: str, name: str | None, enforcement_mode: str,
                      now_ms: int, without_reasoning: str = "allow",
                      key_hash: str | None = None) -> Deferred[Agent]:
        """The agent of ``hash_``; a new one starts with the deployment's defaults and
        records ``key_hash``, the hash of its key alone (a plain agent's is its own
        hash)."""
        return self._db.run_interaction("get_or_create_agent", _get_or_create, hash_, name,
                                        enforcement_mode, now_ms, without_reasoning, key_hash)

    def learn_key(self, hash_: str, key_hash: str,
                  now_ms: int) -> Deferred[tuple[Agent | None, list[tuple[str, str]]]]:
        """Give a named agent without a recorded key its key (see ``_learn_key``)."""
        return self._db.run_interaction("learn_agent_key", _learn_key, hash_, key_hash,
                                        now_ms)

    def get_by_hash(self, hash_: str) -> Deferred[Agent | None]:
        return self._db.run_interaction("get_agent_by_hash", _select_by_hash, hash_)

    def touch_last_seen(self, seen: dict[str, int]) -> Deferred[int]:
        """Record when agents were last seen: one batched write, not one per call."""
        return self._db.run_interaction("touch_last_seen", _touch,
                                        [(at, agent_id) for agent_id, at in seen.items()])

    def card(self, agent_id: str) -> Deferred[dict[str, Any] | None]:
        def read(cursor: Cursor) -> dict[str, Any] | None:
            row = cursor.execute("SELECT card FROM alignment_cards WHERE agent_id = ?",
                                 (agent_id,)).fetchone()
            return json.loads(row[0]) if row else None

        return self._db.run_interaction("get_card", read)

    def conscience_values(self, agent_id: str) -> Deferred[list[dict[str, Any]] | None]:
        def read(cursor: Cursor) -> list[dict[str, Any]] | None:
            row = cursor.execute("SELECT value_set FROM conscience_values WHERE agent_id = ?",
                                 (agent_id,)).fetchone()
            return json.loads(row[0]) if row else None

        return self._db.run_interaction("get_conscience_values", read)

    def changed_since(self, since_ms: int) -> Deferred[list[tuple[str, int, str]]]:
        """(agent_hash, updated_at, agent_id) of agents changed after ``since_ms``: their
        own rows, or their key's containment."""
        return self._db.run_interaction(
            "agents_changed_since",
            lambda c: [(h, int(u), i) for h, u, i in c.execute(
                "SELECT agent_hash, updated_at, id FROM agents WHERE updated_at > ? "
                "UNION ALL SELECT a.agent_hash, k.updated_at, a.id FROM key_containments k "
                "JOIN agents a ON a.key_hash = k.key_hash WHERE k.updated_at > ?",
                (since_ms, since_ms)).fetchall()])

    def count(self) -> Deferred[int]:
        return self._db.run_interaction(
            "count_agents", lambda c: int(c.execute("SELECT COUNT(*) FROM agents").fetchone()[0]))

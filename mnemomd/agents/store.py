"""Agents, their default alignment card and conscience values, persisted on first sight.

Creation must happen exactly once even when fifty first calls with one new key arrive at
once, on several replicas: the insert is ``ON CONFLICT DO NOTHING`` on both unique
columns, and whoever's row won is read back. Only the inserting transaction adds the
default card and conscience values.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from aap.schemas.alignment_card import AlignmentCard
from aip import DEFAULT_CONSCIENCE_VALUES
from twisted.internet.defer import Deferred

from mnemomd.agents.identity import Agent, agent_id_candidates
from mnemomd.storage.database import Cursor, Database

DEFAULT_DECLARED_VALUES = ("transparency", "accuracy", "helpfulness", "safety", "autonomy",
                           "honesty", "quality")
DEFAULT_RETENTION_DAYS = 365

AGENT_COLUMNS = ("id, agent_hash, name, enforcement_mode, aip_enabled, aap_enabled, "
                 "nudge_strategy, nudge_rate, nudge_threshold, containment_status, "
                 "auto_containment_threshold, created_at, without_reasoning")


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
     containment, auto_threshold, created_at, without_reasoning) = row
    return Agent(agent_hash=hash_, agent_id=agent_id, name=name, enforcement_mode=mode,
                 aip_enabled=bool(aip_enabled), aap_enabled=bool(aap_enabled),
                 nudge_strategy=strategy, nudge_rate=float(rate),
                 nudge_threshold=int(threshold), containment_status=containment,
                 auto_containment_threshold=auto_threshold, created_at=int(created_at),
                 without_reasoning=without_reasoning)


def _select_by_hash(cursor: Cursor, hash_: str) -> Agent | None:
    row = cursor.execute(f"SELECT {AGENT_COLUMNS} FROM agents WHERE agent_hash = ?",
                         (hash_,)).fetchone()
    return row_to_agent(row) if row else None


def _get_or_create(cursor: Cursor, hash_: str, name: str | None, enforcement_mode: str,
                   now_ms: int, without_reasoning: str = "allow") -> Agent:
    existing = _select_by_hash(cursor, hash_)
    if existing is not None:
        return existing
    for agent_id in agent_id_candidates(hash_):
        inserted = cursor.execute(
            "INSERT INTO agents (id, agent_hash, name, enforcement_mode, without_reasoning, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (agent_id, hash_, name, enforcement_mode, without_reasoning, now_ms,
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
                      now_ms: int, without_reasoning: str = "allow") -> Deferred[Agent]:
        """The agent of ``hash_``; a new one starts with the deployment's defaults."""
        return self._db.run_interaction("get_or_create_agent", _get_or_create, hash_, name,
                                        enforcement_mode, now_ms, without_reasoning)

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
        """(agent_hash, updated_at, agent_id) of agents changed after ``since_ms``."""
        return self._db.run_interaction(
            "agents_changed_since",
            lambda c: [(h, int(u), i) for h, u, i in c.execute(
                "SELECT agent_hash, updated_at, id FROM agents WHERE updated_at > ?",
                (since_ms,)).fetchall()])

    def count(self) -> Deferred[int]:
        return self._db.run_interaction(
            "count_agents", lambda c: int(c.execute("SELECT COUNT(*) FROM agents").fetchone()[0]))

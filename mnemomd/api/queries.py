"""The queries behind the management API (SPEC §10.2): pages, counts and edits.

Every list is one transaction that reads a page and its total together, so ``total``
describes the same snapshot as ``items``. Edits that change what the gateway acts on
bump ``agents.updated_at``: that is how replicas without a shared KV store notice them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from mnemomd.agents.identity import Agent, effective_containment
from mnemomd.agents.store import default_conscience_values
from mnemomd.api.schemas import TIMELINE_KINDS
from mnemomd.integrity.checkpoints import CHECKPOINT_COLUMNS, row_to_checkpoint
from mnemomd.storage.database import Cursor, Database

AGENT_FIELDS = ("agent_id", "agent_hash", "name", "enforcement_mode", "aip_enabled",
                "aap_enabled", "nudge_strategy", "nudge_rate", "nudge_threshold",
                "containment_status", "containment_reason", "containment_changed_at",
                "auto_containment_threshold", "created_at", "updated_at", "last_seen_at",
                "without_reasoning", "key_hash", "key_containment_status")
#: The agent with its key's containment (``AGENT_FIELDS`` in order, then the key's reason
#: and time of change): a view shows the state that holds the agent and why.
_AGENT_SELECT = (
    "SELECT a.id, a.agent_hash, a.name, a.enforcement_mode, a.aip_enabled, a.aap_enabled,"
    " a.nudge_strategy, a.nudge_rate, a.nudge_threshold, a.containment_status,"
    " a.containment_reason, a.containment_changed_at, a.auto_containment_threshold,"
    " a.created_at, a.updated_at, a.last_seen_at, a.without_reasoning, a.key_hash,"
    " COALESCE(k.containment_status, a.pending_key_status, 'active'),"
    " k.containment_reason, k.containment_changed_at"
    " FROM agents a LEFT JOIN key_containments k ON k.key_hash = a.key_hash")
#: The fields of an agent view, in the order they are shown.
_AGENT_VIEW = ("agent_id", "agent_hash", "name", "key_hash", "enforcement_mode",
               "aip_enabled", "aap_enabled", "nudge_strategy", "nudge_rate", "nudge_threshold",
               "without_reasoning", "containment_status", "containment_scope",
               "agent_containment_status", "key_containment_status", "containment_reason",
               "containment_changed_at", "auto_containment_threshold", "created_at",
               "updated_at", "last_seen_at")
_AGENT_TABLE = "agents a LEFT JOIN key_containments k ON k.key_hash = a.key_hash"
#: The effective containment state in SQL (the worse of the agent's and its key's), for
#: the list filter; ``effective_containment`` is the same rule in Python.
_EFFECTIVE_STATUS = (
    "CASE WHEN a.containment_status = 'killed' OR COALESCE(k.containment_status, "
    "a.pending_key_status) = 'killed' THEN 'killed' WHEN a.containment_status = 'paused' "
    "OR COALESCE(k.containment_status, a.pending_key_status) = 'paused' THEN 'paused' "
    "ELSE 'active' END")
_BOOLEAN_FIELDS = ("aip_enabled", "aap_enabled")

DRIFT_FIELDS = ("id", "agent_id", "session_id", "source", "severity", "alert", "created_at")


@dataclass(frozen=True)
class Page:
    """One page of a list and the size of the whole list."""

    items: list[dict[str, Any]]
    total: int


def _agent_dict(row: Sequence[Any]) -> dict[str, Any]:
    """An agent view: ``containment_status`` is the state that holds the agent (the worse
    of ``agent_containment_status`` and ``key_containment_status``), ``containment_scope``
    says which, and the reason and time are that scope's."""
    agent = dict(zip(AGENT_FIELDS, row[:len(AGENT_FIELDS)], strict=True))
    key_reason, key_changed_at = row[len(AGENT_FIELDS):]
    for name in _BOOLEAN_FIELDS:
        agent[name] = bool(agent[name])
    agent["nudge_rate"] = float(agent["nudge_rate"])
    own = agent["containment_status"]
    status, scope = effective_containment(Agent(
        agent["agent_hash"], agent["agent_id"], agent["name"], containment_status=own,
        key_containment_status=agent["key_containment_status"]))
    agent.update(containment_status=status, containment_scope=scope,
                 agent_containment_status=own)
    if scope == "key":
        agent.update(containment_reason=key_reason, containment_changed_at=key_changed_at)
    return {name: agent[name] for name in _AGENT_VIEW}


def page(cursor: Cursor, select: str, where: list[str], params: list[Any], order: str,
          limit: int, offset: int, convert: Callable[[Sequence[Any]], dict[str, Any]],
          table: str) -> Page:
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = cursor.execute(f"{select}{clause} ORDER BY {order} LIMIT ? OFFSET ?",
                          (*params, limit, offset)).fetchall()
    total = cursor.execute(f"SELECT COUNT(*) FROM {table}{clause}", params).fetchone()
    return Page([convert(r) for r in rows], int(total[0]) if total else 0)


def equal_to(**conditions: Any) -> tuple[list[str], list[Any]]:
    """WHERE terms and parameters for the conditions that are not None (filters)."""
    given = {column: value for column, value in conditions.items() if value is not None}
    return [f"{column} = ?" for column in given], list(given.values())


def _load_json(value: Any) -> Any:
    return None if value is None else json.loads(value)


def _agent_exists(cursor: Cursor, agent_id: str) -> bool:
    return cursor.execute("SELECT 1 FROM agents WHERE id = ?", (agent_id,)).fetchone() is not None


def _checkpoint_dict(row: Sequence[Any]) -> dict[str, Any]:
    record = row_to_checkpoint(tuple(row))
    return {"id": record.id, "agent_id": record.agent_id, "session_id": record.session_id,
            "provider": record.provider, "model": record.model, "verdict": record.verdict,
            "concerns": record.concerns, "reasoning_summary": record.reasoning_summary,
            "conscience_context": record.conscience_context,
            "window_position": record.window_position,
            "analysis_metadata": record.analysis_metadata,
            "thinking_block_hash": record.thinking_block_hash, "synthetic": record.synthetic,
            "synthetic_reason": record.synthetic_reason, "trace_id": record.trace_id,
            "output_block_hash": record.output_block_hash, "created_at": record.created_at}


def _drift_dict(row: Sequence[Any]) -> dict[str, Any]:
    alert = dict(zip(DRIFT_FIELDS, row, strict=True))
    alert["alert"] = _load_json(alert["alert"])
    return alert


#: Each source of the timeline as (kind, SELECT of: kind, id, created_at, three details;
#: its parameters are the agent's id, and its key's hash where the SQL has a second ``?``).
#: Key-scoped containment changes belong to every agent of the key.
_TIMELINE_SOURCES = (
    ("checkpoint", "SELECT 'checkpoint', id, created_at, verdict, session_id, NULL "
                   "FROM integrity_checkpoints WHERE agent_id = ?"),
    ("trace", "SELECT 'trace', id, created_at, checkpoint_id, session_id, NULL "
              "FROM ap_traces WHERE agent_id = ?"),
    ("nudge", "SELECT 'nudge', id, created_at, status, session_id, NULL "
              "FROM nudges WHERE agent_id = ?"),
    ("containment", "SELECT 'containment', id, created_at, action, actor, scope "
                    "FROM containment_log WHERE agent_id = ? "
                    "OR (scope = 'key' AND key_hash = ?)"),
    ("tool", "SELECT 'tool', tool, first_seen_at, seen_as, NULL, NULL "
             "FROM tool_first_seen WHERE agent_id = ?"),
    # ``blocked`` as text: one column of the union holds text on both engines.
    ("policy_violation", "SELECT 'policy_violation', id, created_at, verdict, mode, "
                         "CASE WHEN blocked THEN 'yes' ELSE 'no' END "
                         "FROM policy_violations WHERE agent_id = ?"),
)
_TIMELINE_DETAILS = {"checkpoint": ("verdict", "session_id"),
                     "trace": ("checkpoint_id", "session_id"),
                     "nudge": ("status", "session_id"),
                     "containment": ("action", "actor", "scope"),
                     "tool": ("seen_as",),
                     "policy_violation": ("verdict", "mode", "blocked")}


def _timeline_entry(row: Sequence[Any]) -> dict[str, Any]:
    kind, id_, created_at, *details = row
    names = _TIMELINE_DETAILS[kind]
    data = dict(zip(names, details, strict=False))
    if kind == "policy_violation":
        data["blocked"] = data["blocked"] == "yes"
    return {"kind": kind, "id": id_, "created_at": int(created_at), "data": data}


def _key_of(cursor: Cursor, agent_id: str) -> str | None:
    row = cursor.execute("SELECT key_hash FROM agents WHERE id = ?", (agent_id,)).fetchone()
    return row[0] if row else None


#: The containment log of an agent: its own changes and its key's.
_CONTAINMENT_LOG_FIELDS = ("id", "agent_id", "action", "scope", "key_hash", "from_status",
                           "to_status", "actor", "reason", "created_at")


#: Verdicts listed per agent by ``GET /v1/agents?include=integrity`` (a sparkline's worth).
RECENT_VERDICTS = 20


def _score(cursor: Cursor, agent_id: str) -> dict[str, Any]:
    counts = dict(cursor.execute(
        "SELECT verdict, COUNT(*) FROM integrity_checkpoints WHERE agent_id = ? "
        "GROUP BY verdict", (agent_id,)).fetchall())
    latest = cursor.execute(
        "SELECT verdict, created_at FROM integrity_checkpoints WHERE agent_id = ? "
        "ORDER BY created_at DESC, id DESC LIMIT 1", (agent_id,)).fetchone()
    total = sum(int(n) for n in counts.values())
    clear = int(counts.get("clear", 0))
    return {"agent_id": agent_id, "total_checks": total, "clear_count": clear,
            "review_count": int(counts.get("review_needed", 0)),
            "violation_count": int(counts.get("boundary_violation", 0)),
            "integrity_ratio": round(clear / total, 4) if total else 1.0,
            "latest_verdict": latest[0] if latest else None,
            "latest_at": int(latest[1]) if latest else None}


class ManagementStore:
    """What the management API reads and changes, beyond the gateway's own stores."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- agents -----------------------------------------------------------------------

    def list_agents(self, limit: int, offset: int, containment_status: str | None = None,
                    enforcement_mode: str | None = None) -> Deferred[Page]:
        where: list[str] = []
        params: list[Any] = []
        if containment_status is not None:  # the state that holds the agent
            where.append(f"{_EFFECTIVE_STATUS} = ?")
            params.append(containment_status)
        if enforcement_mode is not None:
            where.append("a.enforcement_mode = ?")
            params.append(enforcement_mode)
        return self._db.run_interaction(
            "api_list_agents", page, _AGENT_SELECT, where, params, "a.created_at DESC, a.id",
            limit, offset, _agent_dict, _AGENT_TABLE)

    def agent(self, agent_id: str) -> Deferred[dict[str, Any] | None]:
        def read(cursor: Cursor) -> dict[str, Any] | None:
            row = cursor.execute(f"{_AGENT_SELECT} WHERE a.id = ?", (agent_id,)).fetchone()
            return _agent_dict(row) if row else None

        return self._db.run_interaction("api_get_agent", read)

    # -- card and conscience values ---------------------------------------------------

    def card(self, agent_id: str) -> Deferred[dict[str, Any] | None]:
        def read(cursor: Cursor) -> dict[str, Any] | None:
            row = cursor.execute(
                "SELECT card, updated_at FROM alignment_cards WHERE agent_id = ?",
                (agent_id,)).fetchone()
            return {"card": json.loads(row[0]), "updated_at": int(row[1])} if row else None

        return self._db.run_interaction("api_get_card", read)

    def replace_card(self, agent_id: str, card: dict[str, Any], now_ms: int) -> Deferred[bool]:
        """False when there is no such agent."""
        def write(cursor: Cursor) -> bool:
            if not _agent_exists(cursor, agent_id):
                return False
            text = json.dumps(card, separators=(",", ":"))
            updated = cursor.execute(
                "UPDATE alignment_cards SET card_id = ?, card = ?, updated_at = ? "
                "WHERE agent_id = ?", (card["card_id"], text, now_ms, agent_id)).rowcount
            if updated == 0:
                cursor.execute(
                    "INSERT INTO alignment_cards (agent_id, card_id, card, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?)",
                    (agent_id, card["card_id"], text, now_ms, now_ms))
            cursor.execute("UPDATE agents SET updated_at = ? WHERE id = ?", (now_ms, agent_id))
            return True

        return self._db.run_interaction("api_replace_card", write)

    def conscience(self, agent_id: str) -> Deferred[dict[str, Any] | None]:
        def read(cursor: Cursor) -> dict[str, Any] | None:
            row = cursor.execute(
                "SELECT value_set, is_default, updated_at FROM conscience_values "
                "WHERE agent_id = ?", (agent_id,)).fetchone()
            if row is None:
                if not _agent_exists(cursor, agent_id):
                    return None
                return {"values": default_conscience_values(), "is_default": True,
                        "updated_at": None}
            return {"values": json.loads(row[0]), "is_default": bool(row[1]),
                    "updated_at": int(row[2])}

        return self._db.run_interaction("api_get_conscience", read)

    def replace_conscience(self, agent_id: str, values: list[dict[str, Any]] | None,
                           now_ms: int) -> Deferred[bool]:
        """Store ``values``, or the defaults when None (a reset); False: no such agent."""
        is_default = values is None
        value_set = json.dumps(default_conscience_values() if values is None else values)

        def write(cursor: Cursor) -> bool:
            if not _agent_exists(cursor, agent_id):
                return False
            updated = cursor.execute(
                "UPDATE conscience_values SET value_set = ?, is_default = ?, updated_at = ? "
                "WHERE agent_id = ?", (value_set, is_default, now_ms, agent_id)).rowcount
            if updated == 0:
                cursor.execute(
                    "INSERT INTO conscience_values (agent_id, value_set, is_default, "
                    "updated_at) VALUES (?, ?, ?, ?)", (agent_id, value_set, is_default, now_ms))
            cursor.execute("UPDATE agents SET updated_at = ? WHERE id = ?", (now_ms, agent_id))
            return True

        return self._db.run_interaction("api_replace_conscience", write)

    # -- checkpoints, score, drift --------------------------------------------

    def checkpoints(self, agent_id: str, limit: int, offset: int, verdict: str | None = None,
                    session_id: str | None = None) -> Deferred[Page]:
        where, params = equal_to(agent_id=agent_id, verdict=verdict, session_id=session_id)
        return self._db.run_interaction(
            "api_list_checkpoints", page,
            f"SELECT {CHECKPOINT_COLUMNS} FROM integrity_checkpoints", where, params,
            "created_at DESC, id", limit, offset, _checkpoint_dict, "integrity_checkpoints")

    def checkpoint(self, checkpoint_id: str) -> Deferred[dict[str, Any] | None]:
        def read(cursor: Cursor) -> dict[str, Any] | None:
            row = cursor.execute(
                f"SELECT {CHECKPOINT_COLUMNS} FROM integrity_checkpoints WHERE id = ?",
                (checkpoint_id,)).fetchone()
            return _checkpoint_dict(row) if row else None

        return self._db.run_interaction("api_get_checkpoint", read)

    def integrity_score(self, agent_id: str) -> Deferred[dict[str, Any]]:
        """Counts by verdict; ``integrity_ratio`` is clear / total (1.0 with no checks)."""
        return self._db.run_interaction("api_integrity_score", _score, agent_id)

    def integrity_scores(self, agent_ids: list[str],
                         recent: int = RECENT_VERDICTS) -> Deferred[dict[str, dict[str, Any]]]:
        """Each agent's score with its last ``recent`` verdicts (oldest first), read in one
        transaction: a page of agents costs one trip to the database thread, not one per
        agent."""
        def read(cursor: Cursor) -> dict[str, dict[str, Any]]:
            scores = {}
            for agent_id in agent_ids:
                score = _score(cursor, agent_id)
                rows = cursor.execute(
                    "SELECT verdict FROM integrity_checkpoints WHERE agent_id = ? "
                    "ORDER BY created_at DESC, id DESC LIMIT ?", (agent_id, recent)).fetchall()
                score["recent_verdicts"] = [row[0] for row in reversed(rows)]
                scores[agent_id] = score
            return scores

        return self._db.run_interaction("api_integrity_scores", read)

    def drift_alerts(self, agent_id: str, limit: int, offset: int) -> Deferred[Page]:
        return self._db.run_interaction(
            "api_list_drift_alerts", page, f"SELECT {', '.join(DRIFT_FIELDS)} FROM drift_alerts",
            ["agent_id = ?"], [agent_id], "created_at DESC, id", limit, offset, _drift_dict,
            "drift_alerts")

    # -- timeline and containment -----------------------------------------------------

    def timeline(self, agent_id: str, limit: int, offset: int,
                 kinds: Sequence[str] = TIMELINE_KINDS) -> Deferred[Page]:
        """Checkpoints, traces, nudges, containment changes, tools first seen (the tool's
        name is the id) and tool policy violations, newest first."""
        sources = [sql for kind, sql in _TIMELINE_SOURCES if kind in kinds]
        union = " UNION ALL ".join(sources)

        def read(cursor: Cursor) -> Page:
            key_hash = _key_of(cursor, agent_id)
            params = [p for sql in sources for p in (agent_id, key_hash)[:sql.count("?")]]
            rows = cursor.execute(
                f"SELECT * FROM ({union}) AS events ORDER BY 3 DESC, 2 DESC LIMIT ? OFFSET ?",
                (*params, limit, offset)).fetchall()
            total = cursor.execute(f"SELECT COUNT(*) FROM ({union}) AS events",
                                   params).fetchone()
            return Page([_timeline_entry(r) for r in rows], int(total[0]))

        return self._db.run_interaction("api_timeline", read)

    def containment_log(self, agent_id: str, key_hash: str | None, limit: int,
                        offset: int) -> Deferred[Page]:
        """The agent's containment changes and its key's (``key_hash``), newest first."""
        fields = _CONTAINMENT_LOG_FIELDS
        return self._db.run_interaction(
            "api_containment_log", page, f"SELECT {', '.join(fields)} FROM containment_log",
            ["(agent_id = ? OR (scope = 'key' AND key_hash = ?))"], [agent_id, key_hash],
            "created_at DESC, id DESC", limit, offset,
            lambda r: dict(zip(fields, r, strict=True)), "containment_log")


def new_card_id() -> str:
    return f"ac-{uuid.uuid4().hex}"

"""The trace outbox and the AP-traces built from it (SPEC §8.1, §8.2).

The outbox is the one place short excerpts of model output touch storage: a row lives
until its trace is built, and never past ``expires_at`` (``OUTBOX_TTL``), whatever state
it is in. Rows are claimed with a lease, so with several schedulers each row is worked
on by one at a time; the trace insert is idempotent per outbox row (``outbox_id`` is
unique) and deletes the row in the same transaction, so a row becomes exactly one trace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from mnemomd.storage.database import Cursor, Database

#: A row that failed this many times is parked: kept for inspection until its TTL, never
#: retried, never blocking the rows behind it.
MAX_ATTEMPTS = 5

OUTBOX_FIELDS = ("id", "agent_id", "session_id", "provider", "model", "checkpoint_id",
                 "payload", "attempts", "created_at", "expires_at")
TRACE_FIELDS = ("id", "agent_id", "session_id", "checkpoint_id", "outbox_id", "trace",
                "verification", "verified", "created_at")


def outbox_sweep_interval(ttl: float) -> float:
    """Seconds between sweeps of expired outbox rows for a TTL of ``ttl`` seconds."""
    return max(0.25, min(30.0, ttl / 10))


def outbox_expiry_ms(created_ms: int, ttl: float) -> int:
    """When a row written at ``created_ms`` expires: one sweep before its TTL is up, so
    the sweep deletes it before it outlives the TTL."""
    return created_ms + int((ttl - outbox_sweep_interval(ttl)) * 1000)


@dataclass(frozen=True)
class OutboxRow:
    id: str
    agent_id: str
    session_id: str | None
    provider: str
    model: str | None
    checkpoint_id: str | None
    #: tool names with argument keys, capped thinking and response excerpts.
    payload: dict[str, Any]
    attempts: int
    created_at: int
    expires_at: int


@dataclass(frozen=True)
class TraceRecord:
    id: str
    agent_id: str
    session_id: str | None
    checkpoint_id: str | None
    outbox_id: str | None
    trace: dict[str, Any]
    verification: dict[str, Any] | None
    verified: bool | None
    created_at: int

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "agent_id": self.agent_id, "session_id": self.session_id,
                "checkpoint_id": self.checkpoint_id, "trace": self.trace,
                "verification": self.verification, "verified": self.verified,
                "created_at": self.created_at}


def row_to_outbox(row: tuple[Any, ...]) -> OutboxRow:
    (id_, agent_id, session_id, provider, model, checkpoint_id, payload, attempts,
     created_at, expires_at) = row
    return OutboxRow(id_, agent_id, session_id, provider, model, checkpoint_id,
                     json.loads(payload), int(attempts), int(created_at), int(expires_at))


def row_to_trace(row: tuple[Any, ...]) -> TraceRecord:
    (id_, agent_id, session_id, checkpoint_id, outbox_id, trace, verification, verified,
     created_at) = row
    return TraceRecord(id_, agent_id, session_id, checkpoint_id, outbox_id, json.loads(trace),
                       json.loads(verification) if verification else None,
                       None if verified is None else bool(verified), int(created_at))


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class OutboxStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, row: OutboxRow) -> Deferred[Any]:
        return self._db.execute(
            "add_trace_outbox",
            f"INSERT INTO trace_outbox ({', '.join(OUTBOX_FIELDS)}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (row.id, row.agent_id, row.session_id, row.provider, row.model, row.checkpoint_id,
             _dump(row.payload), row.attempts, row.created_at, row.expires_at))

    def claim(self, owner: str, now_ms: int, lease_ms: int,
              limit: int) -> Deferred[list[OutboxRow]]:
        """Oldest ready rows, leased to ``owner``; each claim counts as an attempt."""
        return self._db.run_interaction("claim_trace_outbox", _claim, owner, now_ms, lease_ms,
                                        limit)

    def complete(self, row: OutboxRow, trace: TraceRecord) -> Deferred[bool]:
        """Store the trace, link its checkpoint and drop the outbox row, in one transaction.
        Fires False when another scheduler already built this row's trace."""
        return self._db.run_interaction("store_trace", _complete, row, trace)

    def fail(self, row: OutboxRow, owner: str, error: str) -> Deferred[bool]:
        """Give up on a row for now (it is claimable again when its lease runs out); fires
        True when it is now parked."""
        return self._db.run_interaction("fail_trace_outbox", _fail, row, owner, error)

    def purge_expired(self, now_ms: int) -> Deferred[int]:
        return self._db.execute("expire_trace_outbox",
                                "DELETE FROM trace_outbox WHERE expires_at <= ?", (now_ms,))

    def counts(self) -> Deferred[dict[str, int]]:
        def read(cursor: Cursor) -> dict[str, int]:
            rows = cursor.execute("SELECT parked, COUNT(*) FROM trace_outbox GROUP BY parked"
                                  ).fetchall()
            counts = {"ready": 0, "parked": 0}
            for parked, count in rows:
                counts["parked" if parked else "ready"] += int(count)
            return counts

        return self._db.run_interaction("count_trace_outbox", read)


def _claim(cursor: Cursor, owner: str, now_ms: int, lease_ms: int,
           limit: int) -> list[OutboxRow]:
    candidates = cursor.execute(
        "SELECT id FROM trace_outbox WHERE parked = ? AND expires_at > ? AND "
        "(lease_expires_at IS NULL OR lease_expires_at < ?) ORDER BY created_at, id LIMIT ?",
        (False, now_ms, now_ms, limit)).fetchall()
    claimed = []
    for (row_id,) in candidates:
        won = cursor.execute(
            "UPDATE trace_outbox SET lease_owner = ?, lease_expires_at = ?, "
            "attempts = attempts + 1 WHERE id = ? AND parked = ? AND "
            "(lease_expires_at IS NULL OR lease_expires_at < ?)",
            (owner, now_ms + lease_ms, row_id, False, now_ms)).rowcount
        if won:
            row = cursor.execute(f"SELECT {', '.join(OUTBOX_FIELDS)} FROM trace_outbox "
                                 "WHERE id = ?", (row_id,)).fetchone()
            if row is not None:
                claimed.append(row_to_outbox(row))
    return claimed


def _complete(cursor: Cursor, row: OutboxRow, trace: TraceRecord) -> bool:
    stored = cursor.execute(
        f"INSERT INTO ap_traces ({', '.join(TRACE_FIELDS)}) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (trace.id, trace.agent_id, trace.session_id, trace.checkpoint_id, trace.outbox_id,
         _dump(trace.trace), _dump(trace.verification) if trace.verification else None,
         trace.verified, trace.created_at)).rowcount > 0
    if stored and trace.checkpoint_id:
        cursor.execute("UPDATE integrity_checkpoints SET trace_id = ? WHERE id = ?",
                       (trace.id, trace.checkpoint_id))
    cursor.execute("DELETE FROM trace_outbox WHERE id = ?", (row.id,))
    return stored


def _fail(cursor: Cursor, row: OutboxRow, owner: str, error: str) -> bool:
    parked = row.attempts >= MAX_ATTEMPTS
    # The lease's expiry is kept: the row is tried again only once it has run out, so one
    # run of the job (which claims until nothing is left) cannot spend all the attempts.
    cursor.execute("UPDATE trace_outbox SET parked = ?, last_error = ?, lease_owner = NULL "
                   "WHERE id = ? AND lease_owner = ?", (parked, error[:500], row.id, owner))
    return parked


class TraceStore:
    """AP-traces, as the API and the drift job read them."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, trace_id: str) -> Deferred[TraceRecord | None]:
        def read(cursor: Cursor) -> TraceRecord | None:
            row = cursor.execute(f"SELECT {', '.join(TRACE_FIELDS)} FROM ap_traces "
                                 "WHERE id = ?", (trace_id,)).fetchone()
            return row_to_trace(row) if row else None

        return self._db.run_interaction("get_trace", read)

    def list_for_agent(self, agent_id: str, limit: int = 50, offset: int = 0,
                       ) -> Deferred[tuple[list[TraceRecord], int]]:
        """Newest first, with the total for pagination."""
        def read(cursor: Cursor) -> tuple[list[TraceRecord], int]:
            total = cursor.execute("SELECT COUNT(*) FROM ap_traces WHERE agent_id = ?",
                                   (agent_id,)).fetchone()
            rows = cursor.execute(
                f"SELECT {', '.join(TRACE_FIELDS)} FROM ap_traces WHERE agent_id = ? "
                "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                (agent_id, limit, offset)).fetchall()
            return [row_to_trace(r) for r in rows], int(total[0]) if total else 0

        return self._db.run_interaction("list_traces", read)

    def agents_with_traces(self, minimum: int, since_ms: int = 0) -> Deferred[list[str]]:
        """Agents with at least ``minimum`` traces and at least one since ``since_ms``."""
        return self._db.run_interaction(
            "agents_with_traces",
            lambda c: [r[0] for r in c.execute(
                "SELECT agent_id FROM ap_traces GROUP BY agent_id "
                "HAVING COUNT(*) >= ? AND MAX(created_at) >= ? ORDER BY agent_id",
                (minimum, since_ms)).fetchall()])

    def earliest(self, agent_id: str, count: int) -> Deferred[list[TraceRecord]]:
        """The agent's first ``count`` traces still stored, oldest first."""
        def read(cursor: Cursor) -> list[TraceRecord]:
            rows = cursor.execute(
                f"SELECT {', '.join(TRACE_FIELDS)} FROM ap_traces WHERE agent_id = ? "
                "ORDER BY created_at, id LIMIT ?", (agent_id, count)).fetchall()
            return [row_to_trace(r) for r in rows]

        return self._db.run_interaction("earliest_traces", read)

    def latest(self, agent_id: str, count: int) -> Deferred[list[TraceRecord]]:
        """The agent's latest ``count`` traces, oldest first."""
        def read(cursor: Cursor) -> list[TraceRecord]:
            rows = cursor.execute(
                f"SELECT {', '.join(TRACE_FIELDS)} FROM ap_traces WHERE agent_id = ? "
                "ORDER BY created_at DESC, id DESC LIMIT ?", (agent_id, count)).fetchall()
            return [row_to_trace(r) for r in reversed(rows)]

        return self._db.run_interaction("latest_traces", read)

"""The trace outbox and the AP-traces built from it (SPEC §8.1, §8.2).

The outbox is the one place short excerpts of model output touch storage: a row lives
until its trace is built, and never past ``expires_at`` (``OUTBOX_TTL``), whatever state
it is in. Rows are claimed with a lease, so with several schedulers each row is worked
on by one at a time; the trace insert is idempotent per outbox row (``outbox_id`` is
unique) and deletes the row in the same transaction, so a row becomes exactly one trace.

The traces job works in batches (``claim`` many rows in one statement, ``finish`` a whole
batch in one transaction with multi-row statements) because the per-row round trips,
not the trace building, are what limits how many traces a second the job can make.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from mnemomd.storage.database import Cursor, Database
from mnemomd.storage.writes import Write, insert_many

#: A row that failed this many times is parked: kept for inspection until its TTL, never
#: retried, never blocking the rows behind it.
MAX_ATTEMPTS = 5
#: Rows per multi-row statement: well under SQLite's 32,766 bound parameters (9 a trace).
STATEMENT_ROWS = 500

OUTBOX_FIELDS = ("id", "agent_id", "session_id", "provider", "model", "checkpoint_id",
                 "payload", "attempts", "created_at", "expires_at")
TRACE_FIELDS = ("id", "agent_id", "session_id", "checkpoint_id", "outbox_id", "trace",
                "verification", "verified", "created_at")


#: The write-queue kind of outbox rows (``storage.writes``).
OUTBOX_WRITE = "trace_outbox"


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
    #: The stored text of the payload (tool names with argument keys, capped thinking and
    #: response excerpts), sealed before it gets here: storage keeps it as opaque text.
    payload: str
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


def outbox_write(row: OutboxRow) -> Write:
    """The outbox row as a queued write; it is never written after ``expires_at``."""
    payload = row.payload if isinstance(row.payload, str) else _dump(row.payload)
    return Write(OUTBOX_WRITE, row.id, {
        "id": row.id, "agent_id": row.agent_id, "session_id": row.session_id,
        "provider": row.provider, "model": row.model, "checkpoint_id": row.checkpoint_id,
        "payload": payload, "attempts": row.attempts, "created_at": row.created_at,
        "expires_at": row.expires_at}, expires_at=row.expires_at)


def write_outbox(cursor: Cursor, writes: list[Write]) -> int:
    """Insert queued outbox rows (multi-row statements); returns how many were given."""
    insert_many(cursor, "trace_outbox", OUTBOX_FIELDS,
                [tuple(w.row.get(f) for f in OUTBOX_FIELDS) for w in writes])
    return len(writes)


def row_to_outbox(row: tuple[Any, ...]) -> OutboxRow:
    (id_, agent_id, session_id, provider, model, checkpoint_id, payload, attempts,
     created_at, expires_at) = row
    return OutboxRow(id_, agent_id, session_id, provider, model, checkpoint_id,
                     str(payload), int(attempts), int(created_at), int(expires_at))


def row_to_trace(row: tuple[Any, ...]) -> TraceRecord:
    (id_, agent_id, session_id, checkpoint_id, outbox_id, trace, verification, verified,
     created_at) = row
    return TraceRecord(id_, agent_id, session_id, checkpoint_id, outbox_id, json.loads(trace),
                       json.loads(verification) if verification else None,
                       None if verified is None else bool(verified), int(created_at))


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class OutboxFailure:
    """A claimed row whose trace could not be built this time."""

    row: OutboxRow
    error: str


@dataclass(frozen=True)
class BatchResult:
    """What ``finish`` did: the outbox ids that became a trace now, those whose trace
    another scheduler had already stored, and the failed rows now parked."""

    stored: frozenset[str]
    duplicates: frozenset[str]
    parked: frozenset[str]
    #: (checkpoint id, trace id) of traces stored whose checkpoint was not there (yet).
    unlinked: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class OutboxDepth:
    """The outbox as ``gateway_outbox_depth`` shows it; ``oldest_ready_at`` is None when
    no row is ready."""

    ready: int
    parked: int
    oldest_ready_at: int | None


def _chunks(items: list[Any], size: int = STATEMENT_ROWS) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _marks(count: int, width: int = 1) -> str:
    row = "?" if width == 1 else "(" + ", ".join("?" * width) + ")"
    return ", ".join([row] * count)


class OutboxStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, row: OutboxRow) -> Deferred[Any]:
        return self._db.execute(
            "add_trace_outbox",
            f"INSERT INTO trace_outbox ({', '.join(OUTBOX_FIELDS)}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (row.id, row.agent_id, row.session_id, row.provider, row.model, row.checkpoint_id,
             row.payload, row.attempts, row.created_at, row.expires_at))

    def claim(self, owner: str, now_ms: int, lease_ms: int,
              limit: int) -> Deferred[list[OutboxRow]]:
        """Oldest ready rows, leased to ``owner``; each claim counts as an attempt."""
        return self._db.run_interaction("claim_trace_outbox", _claim, owner, now_ms, lease_ms,
                                        limit)

    def finish(self, owner: str, traces: list[tuple[OutboxRow, TraceRecord]],
               failures: list[OutboxFailure]) -> Deferred[BatchResult]:
        """A whole batch in one transaction: the traces stored (idempotent per outbox
        row), their checkpoints linked and their rows dropped, the failures recorded.
        One row the database refuses fails the whole transaction; the caller then
        finishes the rows one by one (``complete`` and ``fail``)."""
        return self._db.run_interaction("finish_trace_batch", _finish, owner, traces,
                                        failures)

    def link(self, links: list[tuple[str, str]]) -> Deferred[set[str]]:
        """Link checkpoints to their traces (``(checkpoint id, trace id)``) where not yet
        linked; fires with the checkpoint ids that exist now (linked either way)."""
        def run(cursor: Cursor) -> set[str]:
            present: set[str] = set()
            for chunk in _chunks(links):
                ids = [c for c, _ in chunk]
                _set_trace_ids(cursor, chunk, only_unlinked=True)
                present.update(r[0] for r in cursor.execute(
                    f"SELECT id FROM integrity_checkpoints WHERE id IN ({_marks(len(ids))})",
                    ids).fetchall())
            return present

        return self._db.run_interaction("link_traces", run)

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

    def discard(self, ids: list[str]) -> Deferred[int]:
        """Delete rows by id, whatever their state (rows no key can open any more)."""
        def delete(cursor: Cursor) -> int:
            deleted = 0
            for chunk in _chunks(ids):
                deleted += cursor.execute(
                    f"DELETE FROM trace_outbox WHERE id IN ({_marks(len(chunk))})",
                    chunk).rowcount
            return deleted

        return self._db.run_interaction("discard_trace_outbox", delete)

    def discard_prefixed(self, prefix: str) -> Deferred[int]:
        """Delete the rows whose stored payload starts with ``prefix`` (those sealed
        under keys that die with this process, at its shutdown)."""
        if not prefix:
            raise ValueError("an empty prefix would match every row")
        return self._db.execute(
            "discard_trace_outbox_prefixed",
            "DELETE FROM trace_outbox WHERE substr(payload, 1, ?) = ?", (len(prefix), prefix))

    def depth(self) -> Deferred[OutboxDepth]:
        """Ready and parked rows, and when the oldest ready row was written."""
        def read(cursor: Cursor) -> OutboxDepth:
            counts = _counts(cursor)
            oldest = cursor.execute("SELECT MIN(created_at) FROM trace_outbox WHERE parked = ?",
                                    (False,)).fetchone()
            return OutboxDepth(counts["ready"], counts["parked"],
                               int(oldest[0]) if oldest and oldest[0] is not None else None)

        return self._db.run_interaction("trace_outbox_depth", read)

    def counts(self) -> Deferred[dict[str, int]]:
        return self._db.run_interaction("count_trace_outbox", _counts)


def _counts(cursor: Cursor) -> dict[str, int]:
    rows = cursor.execute("SELECT parked, COUNT(*) FROM trace_outbox GROUP BY parked"
                          ).fetchall()
    counts = {"ready": 0, "parked": 0}
    for parked, count in rows:
        counts["parked" if parked else "ready"] += int(count)
    return counts


def _claim(cursor: Cursor, owner: str, now_ms: int, lease_ms: int,
           limit: int) -> list[OutboxRow]:
    """One statement leases up to ``limit`` rows and returns them. On PostgreSQL the
    candidates are locked ``FOR UPDATE SKIP LOCKED``, so concurrent claimers take
    disjoint rows without waiting for each other; a row another claimer committed
    meanwhile is re-checked against the lease condition and left out. SQLite has one
    writer at a time, so its claims cannot interleave."""
    lock = " FOR UPDATE SKIP LOCKED" if cursor.engine == "postgresql" else ""
    ready = "parked = ? AND (lease_expires_at IS NULL OR lease_expires_at < ?)"
    rows = cursor.execute(
        "UPDATE trace_outbox SET lease_owner = ?, lease_expires_at = ?, "
        f"attempts = attempts + 1 WHERE {ready} AND id IN (SELECT id FROM trace_outbox "
        f"WHERE {ready} AND expires_at > ? ORDER BY created_at, id LIMIT ?{lock}) "
        f"RETURNING {', '.join(OUTBOX_FIELDS)}",
        (owner, now_ms + lease_ms, False, now_ms, False, now_ms, now_ms, limit)).fetchall()
    return sorted((row_to_outbox(r) for r in rows), key=lambda r: (r.created_at, r.id))


def link_stored_traces(cursor: Cursor, checkpoint_ids: list[str]) -> int:
    """Link checkpoints just stored to traces built before them; the rows linked.

    A call's outbox row is written when its response ends, its checkpoint only once the
    analysis has answered, so the traces job can build the trace first: its link then
    found no checkpoint (``_finish``), and is made here, when the checkpoint arrives.
    (Both transactions committing at once can each miss the other's row: the traces job
    remembers the links it missed and makes them on its next run, ``link``.)"""
    if not checkpoint_ids:
        return 0
    linked = 0
    for chunk in _chunks(checkpoint_ids):
        linked += cursor.execute(
            "UPDATE integrity_checkpoints SET trace_id = (SELECT MIN(t.id) FROM ap_traces t "
            "WHERE t.checkpoint_id = integrity_checkpoints.id) "
            f"WHERE id IN ({_marks(len(chunk))}) AND trace_id IS NULL AND EXISTS "
            "(SELECT 1 FROM ap_traces t WHERE t.checkpoint_id = integrity_checkpoints.id)",
            chunk).rowcount
    return linked


def _set_trace_ids(cursor: Cursor, links: list[tuple[str, str]],
                   only_unlinked: bool = False) -> set[str]:
    """Set each checkpoint's ``trace_id`` (``(checkpoint id, trace id)``, one statement);
    the checkpoint ids that were there to set."""
    cases = " ".join(["WHEN ? THEN ?"] * len(links))
    unlinked = " AND trace_id IS NULL" if only_unlinked else ""
    return {r[0] for r in cursor.execute(
        f"UPDATE integrity_checkpoints SET trace_id = CASE id {cases} END "
        f"WHERE id IN ({_marks(len(links))}){unlinked} RETURNING id",
        [v for link in links for v in link] + [c for c, _ in links]).fetchall()}


def _finish(cursor: Cursor, owner: str, traces: list[tuple[OutboxRow, TraceRecord]],
            failures: list[OutboxFailure]) -> BatchResult:
    stored: set[str] = set()
    unlinked: set[tuple[str, str]] = set()
    for chunk in _chunks(traces):
        params: list[Any] = []
        for _, t in chunk:
            params += [t.id, t.agent_id, t.session_id, t.checkpoint_id, t.outbox_id,
                       _dump(t.trace), _dump(t.verification) if t.verification else None,
                       t.verified, t.created_at]
        # Only the rows inserted now come back: a trace another scheduler already stored
        # for the same outbox row is left as it is (exactly one trace per outbox row).
        stored.update(r[0] for r in cursor.execute(
            f"INSERT INTO ap_traces ({', '.join(TRACE_FIELDS)}) VALUES "
            f"{_marks(len(chunk), len(TRACE_FIELDS))} ON CONFLICT DO NOTHING "
            "RETURNING outbox_id", params).fetchall())
        links = [(t.checkpoint_id, t.id) for _, t in chunk
                 if t.checkpoint_id and t.outbox_id in stored]
        if links:
            found = _set_trace_ids(cursor, links)
            unlinked.update((c, t) for c, t in links if c not in found)
        ids = [row.id for row, _ in chunk]
        cursor.execute(f"DELETE FROM trace_outbox WHERE id IN ({_marks(len(ids))})", ids)
    parked = set()
    for failure in failures:
        if _fail(cursor, failure.row, owner, failure.error):
            parked.add(failure.row.id)
    done = {row.id for row, _ in traces}
    return BatchResult(frozenset(stored), frozenset(done - stored), frozenset(parked),
                       frozenset(unlinked))


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

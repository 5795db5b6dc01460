"""The write path: every piece of bookkeeping the proxy records goes through one queue.

Checkpoints, trace-outbox rows, drift alerts and nudges are handed to a ``WriteQueue``
instead of being written by the call that made them. The queue is bounded; a writer
drains it in batches, one transaction per batch, each kind with multi-row statements, so
the database does a handful of transactions a second instead of two a call, and no
proxied call waits for, or fails because of, its bookkeeping (SPEC §15, §16).

When the database fails, the same batches go to the durable local spool
(``storage/spool.py``) and are replayed, exactly once, when it returns: every write has an
idempotent key, and every kind's batch statement ignores a key it already has. When the
queue is full (the database is slower than the traffic) writes go to the spool too; when
the spool is full as well, bookkeeping is shed, counted and logged loudly. Nothing in
this module ever raises to the caller.

The kinds are registered by the packages that own the tables (``register``), so this
layer knows nothing of checkpoints or traces: a kind is a name, a batch function that
writes many rows in the caller's transaction, and an optional hook told what the batch
did once it is committed.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mnemomd.ops.labels import LabelCache
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.storage.database import Cursor, Database, TransactionThreads
from mnemomd.storage.spool import Spool, SpoolRecord

log = Logger()

#: Writes a batch takes at most (one transaction; each kind chunks its statements).
BATCH_ROWS = 500
#: How long a write may wait for companions before its batch is written (seconds).
FLUSH_INTERVAL = 0.02
#: Seconds between attempts to replay the spool while the database is down (doubling).
REPLAY_RETRY_MIN = 0.5
REPLAY_RETRY_MAX = 10.0

STORED, SPOOLED, SHED = "stored", "spooled", "shed"


@dataclass(frozen=True)
class Write:
    """One row of bookkeeping: ``kind`` names its batch function, ``key`` makes a second
    write of it a no-op, ``row`` is what the batch function writes (JSON values only: it
    may be spooled). A write past ``expires_at`` (ms since the epoch) is dropped, never
    written: trace-outbox rows carry their TTL here."""

    kind: str
    key: str
    row: dict[str, Any]
    expires_at: int | None = None

    def record(self) -> SpoolRecord:
        return SpoolRecord(self.kind, self.key, self.row, self.expires_at)

    @classmethod
    def from_record(cls, record: SpoolRecord) -> Write:
        return cls(record.kind, record.key, record.row, record.expires_at)


#: Writes ``rows`` (one kind) in the caller's transaction; returns what the hook is told.
BatchFunction = Callable[[Cursor, list[Write]], Any]
#: Told, on the reactor, what a committed batch of its kind returned.
CommitHook = Callable[[Any], None]


@dataclass(frozen=True)
class WriteKind:
    name: str
    batch: BatchFunction
    committed: CommitHook | None = None


#: Bound parameters per statement: well under SQLite's limit of 32,766.
STATEMENT_PARAMETERS = 30_000


def insert_many(cursor: Cursor, table: str, columns: tuple[str, ...],
                rows: list[tuple[Any, ...]], returning: str | None = None) -> list[Any]:
    """Multi-row ``INSERT … ON CONFLICT DO NOTHING`` of ``rows`` (chunked to the engines'
    parameter limits); with ``returning``, the values of that column of the rows this
    statement inserted (a key that was already there is not returned)."""
    per_statement = max(1, STATEMENT_PARAMETERS // len(columns))
    placeholders = "(" + ", ".join("?" for _ in columns) + ")"
    inserted: list[Any] = []
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
               + ", ".join(placeholders for _ in chunk) + " ON CONFLICT DO NOTHING")
        params = [value for row in chunk for value in row]
        if returning is None:
            cursor.execute(sql, params)
        else:
            inserted += [r[0] for r in cursor.execute(f"{sql} RETURNING {returning}",
                                                      params).fetchall()]
    return inserted


def is_outage(error: BaseException) -> bool:
    """Whether a failed batch failed because the database is unavailable (spool it and
    try again later) rather than because of what it holds (a bug: never retried)."""
    if isinstance(error, sqlite3.OperationalError | sqlite3.InterfaceError | OSError):
        return True
    try:
        import psycopg2
    except ImportError:  # pragma: no cover - psycopg2 is a dependency
        return False
    if isinstance(error, psycopg2.OperationalError | psycopg2.InterfaceError):
        return True
    from twisted.enterprise.adbapi import ConnectionLost

    return isinstance(error, ConnectionLost)


def split_expired(writes: Iterable[Write], now_ms: int) -> tuple[list[Write], int]:
    """(writes still to make, how many had expired)."""
    live = [w for w in writes if w.expires_at is None or w.expires_at > now_ms]
    return live, sum(1 for w in writes if w.expires_at is not None and w.expires_at <= now_ms)


def by_kind(writes: Iterable[Write]) -> dict[str, list[Write]]:
    """Writes grouped by kind, in order of first appearance, duplicates dropped."""
    grouped: dict[str, list[Write]] = {}
    seen: set[tuple[str, str]] = set()
    for write in writes:
        if (write.kind, write.key) in seen:
            continue
        seen.add((write.kind, write.key))
        grouped.setdefault(write.kind, []).append(write)
    return grouped


class WriteQueue:
    """The bounded queue, its batch writer and the spool behind it."""

    def __init__(self, reactor: Any, db: Database, spool_directory: str,
                 metrics: GatewayMetrics, *, max_pending: int = 50_000,
                 spool_max_bytes: int = 256 * 1024 * 1024, batch_rows: int = BATCH_ROWS,
                 flush_interval: float = FLUSH_INTERVAL,
                 threads: TransactionThreads | None = None,
                 adopt: list[str] | None = None) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._db = db
        self._metrics = metrics
        self._written = LabelCache(metrics.bookkeeping_writes)
        self._kinds: dict[str, WriteKind] = {}
        self._pending: deque[tuple[Write, Deferred[str] | None]] = deque()
        self._max_pending = max_pending
        self._batch_rows = batch_rows
        self._flush_interval = flush_interval
        self._spool = Spool(spool_directory)
        #: Spools of processes that no longer exist, moved into this one at start.
        self._adopt = adopt or []
        self._spool_max_bytes = spool_max_bytes
        self._spool_records = 0
        self._spool_bytes = 0
        self._own_threads = threads is None
        self._threads: Any = threads if threads is not None else ThreadPool(1, 1, "spool")
        self._flush_call: IDelayedCall | None = None
        self._replay_call: IDelayedCall | None = None
        self._replay_delay = REPLAY_RETRY_MIN
        self._busy = False
        self._running = False
        self._replaying: list[Deferred[bool]] | None = None
        self._flushing: Deferred[Any] | None = None
        self._spilling = False
        #: True while the database is unavailable: batches go straight to the spool.
        self.outage = False
        self._shedding = False
        self._shed_count: Counter[str] = Counter()

    # -- kinds ----------------------------------------------------------------------------

    def register(self, kind: str, batch: BatchFunction,
                 committed: CommitHook | None = None) -> None:
        self._kinds[kind] = WriteKind(kind, batch, committed)

    # -- what the proxy calls -------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def shedding(self) -> bool:
        return self._shedding

    @property
    def spool_depth(self) -> int:
        return self._spool_records

    def submit(self, write: Write, wait: bool = False) -> Deferred[str] | None:
        """Queue ``write``. With ``wait``, a Deferred fires with what became of it
        (``stored``, ``spooled`` or ``shed``) once that is so; it never fails."""
        if write.kind not in self._kinds:
            raise KeyError(f"no write kind {write.kind!r} is registered")
        waiter: Deferred[str] | None = Deferred() if wait else None
        self._pending.append((write, waiter))
        self._metrics.write_queue_depth.set(len(self._pending))
        if len(self._pending) > self._max_pending and self._running and not self._spilling:
            self._spilling = True
            self._spill().addBoth(self._spilled)
        if wait or len(self._pending) >= self._batch_rows:
            # Someone waits for this one (enforcement reads it back): write it now.
            self._schedule(0)
        else:
            self._schedule(self._flush_interval)
        return waiter

    # -- the writer -----------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if self._busy or not self._running:
            return
        if self._flush_call is not None and self._flush_call.active():
            if delay > 0:
                return
            self._flush_call.cancel()
        self._flush_call = self._clock.callLater(delay, self._flush_tick)

    def _flush_tick(self) -> None:
        self._flushing = self._flush()

    def _take(self) -> list[tuple[Write, Deferred[str] | None]]:
        taken = []
        while self._pending and len(taken) < self._batch_rows:
            taken.append(self._pending.popleft())
        self._metrics.write_queue_depth.set(len(self._pending))
        return taken

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    @inlineCallbacks
    def _flush(self) -> Any:
        """Write one batch: to the database, or the spool when it is down or behind."""
        self._flush_call = None
        if self._busy:
            return
        self._busy = True
        try:
            batch = self._take()
            if batch:
                if self.outage:
                    yield self._to_spool(batch)
                else:
                    yield self._to_database(batch)
        finally:
            self._busy = False
        if self._pending:
            self._schedule(0)
        elif self._spool_records and not self.outage and self._replay_call is None:
            self._replay_soon(0)

    @inlineCallbacks
    def _spill(self) -> Any:
        """Behind: what the writer cannot keep up with goes to the spool now, oldest
        first, so memory stays bounded however slow the database is."""
        while len(self._pending) > self._max_pending:
            excess = len(self._pending) - self._max_pending
            spilled = [self._pending.popleft()
                       for _ in range(min(excess, self._batch_rows))]
            self._metrics.write_queue_depth.set(len(self._pending))
            yield self._to_spool(spilled)

    def _spilled(self, result: Any) -> None:
        self._spilling = False
        if isinstance(result, Failure):
            log.failure("Spilling the write queue to the spool failed", result)

    @inlineCallbacks
    def _to_database(self, batch: list[tuple[Write, Deferred[str] | None]]) -> Any:
        writes, expired = split_expired([w for w, _ in batch], self._now_ms())
        self._count("expired", expired)
        try:
            results = yield self._write(writes)
        except Exception as e:
            if is_outage(e):
                self._enter_outage(e)
                yield self._to_spool(batch)
                return
            results, unwritten = yield self._write_one_by_one(writes)
            if unwritten:  # the database went away meanwhile: the rest waits in the spool
                keys = {(w.kind, w.key) for w in unwritten}
                yield self._to_spool([(w, d) for w, d in batch if (w.kind, w.key) in keys])
                batch = [(w, d) for w, d in batch if (w.kind, w.key) not in keys]
                writes = [w for w in writes if (w.kind, w.key) not in keys]
        self._committed(results)
        self._count_writes(writes, STORED)
        _fire(batch, STORED)

    def _count_writes(self, writes: Iterable[Write], outcome: str) -> None:
        for kind, count in Counter(w.kind for w in writes).items():
            self._written(kind, outcome).inc(count)

    def _write(self, writes: list[Write]) -> Deferred[dict[str, Any]]:
        grouped = by_kind(writes)

        def transaction(cursor: Cursor) -> dict[str, Any]:
            return {kind: self._kinds[kind].batch(cursor, rows)
                    for kind, rows in grouped.items()}

        if not grouped:
            return succeed({})
        return self._db.run_interaction("write_batch", transaction)

    @inlineCallbacks
    def _write_one_by_one(self, writes: list[Write]) -> Any:
        """A batch the database refused for what it holds: each write alone, so one bad
        row costs only itself (logged loudly: it is a bug, never retried). Fires with
        (results by kind, the writes left unwritten because the database went away)."""
        results: dict[str, list[Any]] = {}
        for n, write in enumerate(writes):
            try:
                result = yield self._write([write])
            except Exception as e:
                if is_outage(e):
                    self._enter_outage(e)
                    return ({kind: _merge(values) for kind, values in results.items()},
                            writes[n:])
                log.failure("The database refused a {kind} write ({key}); dropped",
                            kind=write.kind, key=write.key)
                self._count("rejected", 1, write.kind)
                continue
            for kind, value in result.items():
                results.setdefault(kind, []).append(value)
        return {kind: _merge(values) for kind, values in results.items()}, []

    def _committed(self, results: dict[str, Any]) -> None:
        for kind, result in results.items():
            hook = self._kinds[kind].committed
            if hook is None:
                continue
            try:
                hook(result)
            except Exception:
                log.failure("After writing {kind} rows", kind=kind)

    def _count(self, outcome: str, count: int, kind: str = "any") -> None:
        if count:
            self._written(kind, outcome).inc(count)

    # -- the spool ------------------------------------------------------------------------

    def _in_thread(self, func: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._threads, func, *args)

    @inlineCallbacks
    def _to_spool(self, batch: list[tuple[Write, Deferred[str] | None]]) -> Any:
        room = self._spool_max_bytes - self._spool_bytes
        writes, expired = split_expired([w for w, _ in batch], self._now_ms())
        self._count("expired", expired)
        records = [w.record() for w in writes]
        if room <= 0:
            self._shed(writes)
            _fire(batch, SHED)
            return
        try:
            written = yield self._in_thread(self._spool.append, records)
        except Exception:
            log.failure("Could not append {count} write(s) to the spool", count=len(records))
            self._shed(writes)
            _fire(batch, SHED)
            return
        self._spool_records += len(records)
        self._spool_bytes += written
        self._spool_gauges()
        self._count_writes(writes, SPOOLED)
        if self._shedding and self._spool_bytes < self._spool_max_bytes:
            self._stop_shedding()
        _fire(batch, SPOOLED)
        if self._replay_call is None and not self.outage:
            self._replay_soon(self._flush_interval)

    def _shed(self, writes: list[Write]) -> None:
        for write in writes:
            self._metrics.bookkeeping_shed.labels(write.kind).inc()
            self._shed_count[write.kind] += 1
        if not self._shedding:
            self._shedding = True
            log.critical("The spool is full ({bytes} bytes, SPOOL_MAX_BYTES): bookkeeping "
                         "is being SHED — checkpoints and traces of this period are lost "
                         "until the database catches up", bytes=self._spool_bytes)

    def _stop_shedding(self) -> None:
        self._shedding = False
        shed = ", ".join(f"{n} {k}" for k, n in sorted(self._shed_count.items()))
        log.warn("The spool has room again; shed meanwhile: {shed}", shed=shed or "nothing")
        self._shed_count.clear()

    def _spool_gauges(self) -> None:
        self._metrics.spool_depth.set(self._spool_records)
        self._metrics.spool_bytes.set(self._spool_bytes)

    def _enter_outage(self, error: BaseException) -> None:
        if not self.outage:
            self.outage = True
            log.warn("The database is unavailable ({reason}); bookkeeping goes to the "
                     "local spool until it returns", reason=_reason(error))
        self._replay_soon(self._replay_delay)

    def drain(self) -> Deferred[None]:
        """Write everything queued now (to the database, or the spool); fires when done."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        return self._drain()

    @inlineCallbacks
    def _drain(self) -> Any:
        if self._flushing is not None and not self._flushing.called:
            yield self._flushing  # a batch on its way counts as queued
        while self._pending:
            batch = self._take()
            if self.outage:
                yield self._to_spool(batch)
            else:
                yield self._to_database(batch)

    def _replay_soon(self, delay: float) -> None:
        if not self._running:
            return
        if self._replay_call is not None and self._replay_call.active():
            return
        self._replay_call = self._clock.callLater(delay, self._replay)

    def _replay(self) -> Deferred[bool]:
        self._replay_call = None
        return self.replay()

    def replay(self) -> Deferred[bool]:
        """Write the spool to the database, oldest segment first; leave outage mode once
        it is empty. Fires with True when the spool was emptied, False when the database
        failed again (a retry is then scheduled). One pass at a time: a second call while
        one runs gets the running pass's result."""
        if self._replay_call is not None and self._replay_call.active():
            self._replay_call.cancel()
        self._replay_call = None
        if self._replaying is not None:
            mine: Deferred[bool] = Deferred()
            self._replaying.append(mine)
            return mine
        self._replaying = []

        def done(result: Any) -> Any:
            waiters, self._replaying = self._replaying or [], None
            for waiter in waiters:
                waiter.callback(result if not isinstance(result, Failure) else False)
            return result

        return self._replay_pass().addBoth(done)

    @inlineCallbacks
    def _replay_pass(self) -> Any:
        while self._running:
            done = yield self._replay_segment()
            if done is None:
                continue
            return done
        return False

    @inlineCallbacks
    def _replay_segment(self) -> Any:
        """One segment into the database: None when one was replayed (go on), True when
        the spool is empty, False when the database failed."""
        try:
            oldest = yield self._in_thread(self._spool.oldest)
        except Exception:
            log.failure("Could not read the spool")
            self._replay_soon(self._replay_delay)
            return False
        if oldest is None:
            self._spool_records, self._spool_bytes = 0, 0
            self._spool_gauges()
            if self.outage:
                self.outage = False
                self._replay_delay = REPLAY_RETRY_MIN
                log.info("The database is back; the spool is written and empty")
            if self._pending:
                self._schedule(0)
            return True
        path, contents = oldest
        if contents.damaged:
            log.warn("Skipped {count} damaged line(s) in {path} (torn by a crash: never "
                     "acknowledged)", count=contents.damaged, path=path)
        writes = [Write.from_record(r) for r in contents.records]
        unknown = [w for w in writes if w.kind not in self._kinds]
        if unknown:
            log.error("Dropped {count} spooled write(s) of kinds this build does not know",
                      count=len(unknown))
        writes, expired = split_expired([w for w in writes if w.kind in self._kinds],
                                        self._now_ms())
        self._count("expired", expired)
        try:
            for start in range(0, len(writes), self._batch_rows):
                results = yield self._write(writes[start:start + self._batch_rows])
                self._committed(results)
        except Exception as e:
            if is_outage(e):
                self._enter_outage(e)
                self._replay_delay = min(self._replay_delay * 2, REPLAY_RETRY_MAX)
                return False
            log.failure("The database refused a spooled batch; writing it row by row")
            results, unwritten = yield self._write_one_by_one(writes)
            self._committed(results)
            if unwritten:  # the database went away meanwhile: the segment stays
                self._replay_delay = min(self._replay_delay * 2, REPLAY_RETRY_MAX)
                return False
        freed = yield self._in_thread(self._spool.remove, path)
        self._count_writes(writes, "replayed")
        self._spool_records = max(0, self._spool_records - len(contents.records))
        self._spool_bytes = max(0, self._spool_bytes - freed)
        self._spool_gauges()
        if self._shedding and self._spool_bytes < self._spool_max_bytes:
            self._stop_shedding()
        return None

    # -- lifecycle ------------------------------------------------------------------------

    @inlineCallbacks
    def start(self) -> Any:
        """Count what an earlier run left in the spool, then replay it."""
        if self._own_threads:
            self._threads.start()
        self._running = True
        try:
            if self._adopt:
                moved = yield self._in_thread(self._spool.adopt, self._adopt)
                if moved:
                    log.info("Adopted {count} spool segment(s) of processes that are gone",
                             count=moved)
            records, size = yield self._in_thread(self._spool.census)
        except Exception:
            log.failure("Could not read the spool directory")
            records, size = 0, 0
        self._spool_records, self._spool_bytes = records, size
        self._spool_gauges()
        if records:
            log.info("Replaying {count} spooled write(s) left by an earlier run",
                     count=records)
            self._replay_soon(0)
        if self._pending:
            self._schedule(0)

    @inlineCallbacks
    def stop(self) -> Any:
        """Write what is queued (to the database, or the spool), then stop."""
        for call in (self._flush_call, self._replay_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._replay_call = None
        yield self._drain()
        self._running = False
        if self._replay_call is not None and self._replay_call.active():
            self._replay_call.cancel()
        self._replay_call = None
        if self._replaying is not None:
            yield self.replay()
        yield self._in_thread(self._spool.close_segment)
        if self._own_threads:
            self._threads.stop()


def _fire(batch: list[tuple[Write, Deferred[str] | None]], outcome: str) -> None:
    for _, waiter in batch:
        if waiter is not None and not waiter.called:
            waiter.callback(outcome)


def _merge(values: list[Any]) -> Any:
    """Per-write results of one kind, as one batch result (lists concatenated)."""
    if all(isinstance(v, list) for v in values):
        return [item for v in values for item in v]
    return values


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


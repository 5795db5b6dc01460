"""The write queue and the durable spool on both engines (SPEC §15, §16).

Outages are real: SQLite is switched to ``PRAGMA query_only`` (every write then fails as
on a read-only file), PostgreSQL is reached through a TCP gate that the test closes.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.trial import unittest

from mnemomd.enforcement.store import NUDGE_WRITE, write_nudges
from mnemomd.integrity.checkpoints import (
    CHECKPOINT_WRITE,
    DRIFT_ALERT_WRITE,
    CheckpointRecord,
    checkpoint_write,
    drift_alert_write,
    write_checkpoints,
    write_drift_alerts,
)
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.storage.database import Database
from mnemomd.storage.spool import Spool
from mnemomd.storage.traces import OUTBOX_WRITE, OutboxRow, outbox_write, write_outbox
from mnemomd.storage.writes import SHED, SPOOLED, STORED, Write, WriteQueue
from tests.e2e.tcpgate import TcpGate
from tests.storage.engines import NOW, AgentDatabase


def checkpoint(n: int, agent_id: str, verdict: str = "clear") -> CheckpointRecord:
    return CheckpointRecord(
        id=f"ic-{n:05d}", agent_id=agent_id, session_id="s1", provider="anthropic",
        model="claude-x", verdict=verdict, concerns=[], reasoning_summary="fine",
        conscience_context=None, window_position={"index": n}, analysis_metadata=None,
        thinking_block_hash="ab" * 32, synthetic=False, synthetic_reason=None,
        created_at=NOW + n)


def outbox(n: int, agent_id: str, expires_at: int = 2 * NOW) -> OutboxRow:
    return OutboxRow(f"ob-{n:05d}", agent_id, "s1", "anthropic", "claude-x", None,
                     {"tools": []}, 0, NOW + n, expires_at)


class WriteQueueTests(AgentDatabase):
    """Mixed into one class per engine below."""

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.metrics = GatewayMetrics(process_collectors=False)
        self.spool_dir = str(self.tmp / "spool")
        self.queues: list[WriteQueue] = []
        self.queue = yield self.start_queue(self.queue_database())
        yield self.add_endpoint()

    def queue_database(self) -> Database:
        return self.db

    @inlineCallbacks
    def tearDown(self):
        for queue in self.queues:
            yield queue.stop()
        yield super().tearDown()

    @inlineCallbacks
    def start_queue(self, db: Database, **kwargs: Any):
        queue = WriteQueue(reactor, db, self.spool_dir, self.metrics, **kwargs)
        queue.register(CHECKPOINT_WRITE, write_checkpoints)
        queue.register(DRIFT_ALERT_WRITE, write_drift_alerts)
        queue.register(OUTBOX_WRITE, write_outbox)
        queue.register(NUDGE_WRITE, write_nudges)
        self.queues.append(queue)
        yield queue.start()
        return queue

    def add_endpoint(self):
        return self.db.execute(
            "t", "INSERT INTO webhook_endpoints (id, url, description, event_types, secret, "
            "allow_http, enabled, consecutive_failures, disabled_reason, created_at, "
            "updated_at) VALUES ('we-1', 'https://hooks.test/x', NULL, ?, 's', ?, ?, 0, NULL, "
            "?, ?)", (json.dumps(["*"]), False, True, NOW, NOW))

    @inlineCallbacks
    def count(self, table: str, where: str = "1 = 1"):
        row = yield self.db.fetchone("t", f"SELECT COUNT(*) FROM {table} WHERE {where}")
        return int(row[0])

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    # -- the normal path ------------------------------------------------------------------

    @inlineCallbacks
    def test_many_writes_become_few_transactions(self):
        transactions: list[str] = []
        original = self.db.run_interaction

        def counting(desc, *args, **kwargs):
            transactions.append(desc)
            return original(desc, *args, **kwargs)

        self.db.run_interaction = counting  # type: ignore[method-assign]
        waits = []
        for n in range(1200):
            self.queue.submit(checkpoint_write(checkpoint(n, self.agent_id)))
            waits.append(self.queue.submit(outbox_write(outbox(n, self.agent_id)), wait=True))
        outcomes = set()
        for d in waits:
            outcomes.add((yield d))
        self.assertEqual(outcomes, {STORED})
        self.assertEqual((yield self.count("integrity_checkpoints")), 1200)
        self.assertEqual((yield self.count("trace_outbox")), 1200)
        # 2,400 rows in at most ceil(2400 / 500) transactions, not 2,400.
        self.assertLessEqual(transactions.count("write_batch"), 5)
        self.assertEqual(self.metric("gateway_bookkeeping_writes_total",
                                     kind="checkpoint", outcome="stored"), 1200)

    @inlineCallbacks
    def test_checkpoint_events_are_queued_once_even_when_written_twice(self):
        write = checkpoint_write(checkpoint(1, self.agent_id, "boundary_violation"))
        self.assertEqual((yield self.queue.submit(write, wait=True)), STORED)
        self.assertEqual((yield self.queue.submit(write, wait=True)), STORED)
        self.assertEqual((yield self.count("integrity_checkpoints")), 1)
        self.assertEqual((yield self.count(
            "webhook_deliveries", "event_type = 'verdict.boundary_violation'")), 1)

    @inlineCallbacks
    def test_one_drift_alert_per_streak_even_within_one_batch(self):
        a = drift_alert_write("da-1", self.agent_id, "s1", "high", {"k": 1}, "s1:ic-1", NOW)
        b = drift_alert_write("da-2", self.agent_id, "s1", "high", {"k": 2}, "s1:ic-1", NOW)
        self.queue.submit(a)
        yield self.queue.submit(b, wait=True)
        self.assertEqual((yield self.count("drift_alerts")), 1)
        self.assertEqual((yield self.count(
            "webhook_deliveries", "event_type = 'drift.detected'")), 1)

    @inlineCallbacks
    def test_a_row_the_database_refuses_costs_only_itself(self):
        bad = Write(CHECKPOINT_WRITE, "ic-bad", {**checkpoint_write(
            checkpoint(1, self.agent_id)).row, "id": "ic-bad", "agent_id": None})
        self.queue.submit(bad)
        good = self.queue.submit(checkpoint_write(checkpoint(2, self.agent_id)), wait=True)
        self.assertEqual((yield good), STORED)
        self.assertEqual((yield self.count("integrity_checkpoints")), 1)
        self.assertEqual(self.metric("gateway_bookkeeping_writes_total",
                                     kind="checkpoint", outcome="rejected"), 1)
        self.flushLoggedErrors()

    # -- outages --------------------------------------------------------------------------

    @inlineCallbacks
    def test_an_outage_spools_everything_and_the_return_writes_it_once(self):
        yield self.cut()
        waits = [self.queue.submit(checkpoint_write(checkpoint(n, self.agent_id,
                                                               "boundary_violation")),
                                   wait=True) for n in range(300)]
        waits += [self.queue.submit(outbox_write(outbox(n, self.agent_id)), wait=True)
                  for n in range(300)]
        outcomes = set()
        for d in waits:
            outcomes.add((yield d))
        self.assertEqual(outcomes, {SPOOLED})
        self.assertTrue(self.queue.outage)
        self.assertEqual(self.queue.spool_depth, 600)
        self.assertEqual(self.metric("gateway_spool_depth"), 600)
        self.assertTrue(Spool(self.spool_dir).segments())
        yield self.restore()
        emptied = yield self.queue.replay()
        self.assertTrue(emptied)
        self.assertFalse(self.queue.outage)
        self.assertEqual(self.queue.spool_depth, 0)
        self.assertEqual(Spool(self.spool_dir).segments(), [])
        self.assertEqual((yield self.count("integrity_checkpoints")), 300)
        self.assertEqual((yield self.count("trace_outbox")), 300)
        self.assertEqual((yield self.count("webhook_deliveries")), 300)
        # A replay that runs again (a crash after the rows, before the segment's removal)
        # writes nothing twice.
        yield self.queue.replay()
        self.assertEqual((yield self.count("webhook_deliveries")), 300)

    @inlineCallbacks
    def test_the_spool_survives_a_restart(self):
        yield self.cut()
        for n in range(50):
            self.queue.submit(checkpoint_write(checkpoint(n, self.agent_id)))
        yield self.queue.stop()
        self.queues.remove(self.queue)
        self.assertGreater(Spool(self.spool_dir).census()[0], 0)
        yield self.restore()
        second = yield self.start_queue(self.queue_database())
        self.assertEqual(second.spool_depth, 50)
        self.assertTrue((yield second.replay()))
        self.assertEqual((yield self.count("integrity_checkpoints")), 50)

    @inlineCallbacks
    def test_a_torn_last_line_is_skipped(self):
        yield self.cut()
        yield self.queue.submit(checkpoint_write(checkpoint(1, self.agent_id)), wait=True)
        segment = Spool(self.spool_dir).segments()[-1]
        with open(segment, "ab") as f:
            f.write(b'0badc0de {"kind":"checkpoint","key":"ic-torn","ro')
        yield self.restore()
        self.assertTrue((yield self.queue.replay()))
        self.assertEqual((yield self.count("integrity_checkpoints")), 1)

    @inlineCallbacks
    def test_outbox_rows_past_their_ttl_are_never_written_from_the_spool(self):
        yield self.cut()
        # Already past its time when the spool is replayed (the clock is the wall clock).
        yield self.queue.submit(outbox_write(outbox(1, self.agent_id, expires_at=NOW)),
                                wait=True)
        yield self.restore()
        yield self.queue.replay()
        self.assertEqual((yield self.count("trace_outbox")), 0)
        self.assertEqual(self.metric("gateway_bookkeeping_writes_total",
                                     kind="any", outcome="expired"), 1)

    @inlineCallbacks
    def test_a_full_spool_sheds_loudly_and_never_fails_the_caller(self):
        yield self.queue.stop()
        self.queues.remove(self.queue)
        queue = yield self.start_queue(self.queue_database(), spool_max_bytes=2_000)
        yield self.cut()
        outcomes = []
        for n in range(20):
            outcomes.append((yield queue.submit(checkpoint_write(checkpoint(n, self.agent_id)),
                                                wait=True)))
        self.assertIn(SPOOLED, outcomes)
        self.assertIn(SHED, outcomes)
        self.assertTrue(queue.shedding)
        self.assertEqual(self.metric("gateway_bookkeeping_shed_total", kind="checkpoint"),
                         outcomes.count(SHED))
        yield self.restore()
        yield queue.replay()
        self.assertFalse(queue.shedding)
        self.assertEqual((yield self.count("integrity_checkpoints")), outcomes.count(SPOOLED))

    @inlineCallbacks
    def test_a_queue_over_its_bound_spills_to_the_spool(self):
        yield self.queue.stop()
        self.queues.remove(self.queue)
        queue = yield self.start_queue(self.queue_database(), max_pending=100, batch_rows=50)
        waits = [queue.submit(checkpoint_write(checkpoint(n, self.agent_id)), wait=True)
                 for n in range(400)]
        self.assertLessEqual(queue.depth, 400)
        outcomes = []
        for d in waits:
            outcomes.append((yield d))
        self.assertIn(SPOOLED, outcomes)
        self.assertEqual(set(outcomes), {STORED, SPOOLED})
        yield queue.replay()
        self.assertEqual((yield self.count("integrity_checkpoints")), 400)


class SQLiteWriteQueueTests(WriteQueueTests, unittest.TestCase):
    engine = "sqlite"

    def cut(self):
        # Every write now fails as on a read-only file; reads still work.
        return self.db.run_interaction("t", lambda c: c.execute("PRAGMA query_only = ON"))

    def restore(self):
        return self.db.run_interaction("t", lambda c: c.execute("PRAGMA query_only = OFF"))


class PostgreSQLWriteQueueTests(WriteQueueTests, unittest.TestCase):
    """The queue's database is reached through a TCP gate; the test's own is not."""

    engine = "postgresql"

    def queue_database(self) -> Database:
        if not hasattr(self, "gate"):
            parts = urlsplit(self.url)
            self.gate = TcpGate(parts.hostname or "127.0.0.1", parts.port or 5432)
            gated = urlunsplit((parts.scheme, f"{parts.username}@127.0.0.1:{self.gate.port}",
                                parts.path, parts.query, ""))
            self.gated = Database(reactor, gated, max_connections=2)
            self.gated.start()
            self.databases.append(self.gated)
        return self.gated

    def cut(self):
        self.gate.close()
        return succeed(None)

    def restore(self):
        self.gate.open()
        return succeed(None)

    @inlineCallbacks
    def tearDown(self):
        self.gate.open()
        yield super().tearDown()
        self.gate.close()

"""The trace outbox and trace storage on both engines (SPEC §8.1, §8.2)."""

from __future__ import annotations

import sqlite3

import psycopg2
import pytest
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from mnemomd.integrity.checkpoints import CheckpointRecord, CheckpointStore
from mnemomd.storage.traces import (
    MAX_ATTEMPTS,
    BatchResult,
    OutboxFailure,
    OutboxRow,
    OutboxStore,
    TraceRecord,
    TraceStore,
)
from tests.storage.engines import AgentDatabase

NOW = 1_700_000_000_000
LEASE = 120_000
TTL = 600_000


def outbox_row(n: int, agent_id: str, created_at: int = NOW, ttl: int = TTL,
               checkpoint_id: str | None = None) -> OutboxRow:
    return OutboxRow(f"ob-{n:03d}", agent_id, "s1", "anthropic", "claude-x", checkpoint_id,
                     f"s1.e1.sealed-{n}", 0,
                     created_at + n, created_at + n + ttl)


def trace_record(trace_id: str, row: OutboxRow) -> TraceRecord:
    return TraceRecord(trace_id, row.agent_id, row.session_id, row.checkpoint_id, row.id,
                       {"trace_id": trace_id}, {"verified": True}, True, NOW + 5)


class OutboxTests(AgentDatabase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.outbox = OutboxStore(self.db)
        self.traces = TraceStore(self.db)

    @inlineCallbacks
    def add(self, *rows):
        for row in rows:
            yield self.outbox.add(row)

    @inlineCallbacks
    def outbox_ids(self):
        rows = yield self.db.fetchall("t", "SELECT id FROM trace_outbox ORDER BY id")
        return [r[0] for r in rows]

    @inlineCallbacks
    def test_add_is_idempotent_and_claim_returns_the_row(self):
        row = outbox_row(1, self.agent_id)
        yield self.add(row, row)
        [claimed] = yield self.outbox.claim("a", NOW + 10, LEASE, 10)
        self.assertEqual(claimed.payload, row.payload)
        self.assertEqual((claimed.id, claimed.agent_id, claimed.attempts), (row.id, row.agent_id,
                                                                            1))

    @inlineCallbacks
    def test_two_owners_never_claim_the_same_row(self):
        rows = [outbox_row(n, self.agent_id) for n in range(20)]
        yield self.add(*rows)
        other = OutboxStore(self.open_database())
        a, b = yield gatherResults([self.outbox.claim("a", NOW + 100, LEASE, 50),
                                    other.claim("b", NOW + 100, LEASE, 50)])
        ids_a, ids_b = {r.id for r in a}, {r.id for r in b}
        self.assertEqual(ids_a & ids_b, set())
        self.assertEqual(ids_a | ids_b, {r.id for r in rows})
        self.assertEqual((yield self.outbox.claim("c", NOW + 100 + LEASE, LEASE, 50)), [])
        self.assertTrue(all(r.attempts == 1 for r in a + b))

    @inlineCallbacks
    def test_claim_takes_the_oldest_first_up_to_the_limit(self):
        yield self.add(*[outbox_row(n, self.agent_id) for n in (3, 1, 2)])
        claimed = yield self.outbox.claim("a", NOW + 10, LEASE, 2)
        self.assertEqual([r.id for r in claimed], ["ob-001", "ob-002"])

    @inlineCallbacks
    def test_each_claim_counts_an_attempt_and_the_fifth_failure_parks(self):
        stuck = outbox_row(1, self.agent_id, ttl=TTL * 100)
        behind = outbox_row(2, self.agent_id, ttl=TTL * 100)
        yield self.add(stuck)
        now = NOW + 10
        for attempt in range(1, MAX_ATTEMPTS + 1):
            [row] = yield self.outbox.claim("a", now, LEASE, 10)
            self.assertEqual(row.attempts, attempt)
            parked = yield self.outbox.fail(row, "a", "no card")
            self.assertEqual(parked, attempt == MAX_ATTEMPTS)
            now += LEASE + 1
        self.assertEqual((yield self.outbox.counts()), {"ready": 0, "parked": 1})
        # Parked rows are never claimed again and do not block the rows behind them.
        yield self.add(behind)
        claimed = yield self.outbox.claim("a", now + LEASE * 10, LEASE, 10)
        self.assertEqual([r.id for r in claimed], [behind.id])
        self.assertEqual((yield self.outbox_ids()), [stuck.id, behind.id])

    @inlineCallbacks
    def test_a_failed_row_waits_for_its_lease_before_another_attempt(self):
        """So one run of the job cannot burn all five attempts in a loop."""
        yield self.add(outbox_row(1, self.agent_id))
        [row] = yield self.outbox.claim("a", NOW + 10, LEASE, 10)
        yield self.outbox.fail(row, "a", "transient")
        self.assertEqual((yield self.outbox.claim("a", NOW + 10, LEASE, 10)), [])
        [again] = yield self.outbox.claim("a", NOW + 11 + LEASE, LEASE, 10)
        self.assertEqual(again.attempts, 2)

    @inlineCallbacks
    def test_fail_by_a_non_owner_changes_nothing(self):
        yield self.add(outbox_row(1, self.agent_id))
        [row] = yield self.outbox.claim("a", NOW + 10, LEASE, 10)
        yield self.outbox.fail(row, "intruder", "x")
        self.assertEqual((yield self.outbox.claim("b", NOW + 10, LEASE, 10)), [])

    @inlineCallbacks
    def test_complete_stores_one_trace_links_the_checkpoint_and_drops_the_row(self):
        yield CheckpointStore(self.db).insert(CheckpointRecord(
            id="ic-1", agent_id=self.agent_id, session_id="s1", provider="anthropic",
            model=None, verdict="clear", concerns=[], reasoning_summary=None,
            conscience_context=None, window_position=None, analysis_metadata=None,
            thinking_block_hash=None, synthetic=False, synthetic_reason=None, created_at=NOW))
        row = outbox_row(1, self.agent_id, checkpoint_id="ic-1")
        yield self.add(row)
        [claimed] = yield self.outbox.claim("a", NOW + 10, LEASE, 10)
        # Two schedulers built a trace for the same row (say, after a lease ran out).
        other = OutboxStore(self.open_database())
        first, second = yield gatherResults([
            self.outbox.complete(claimed, trace_record("tr-a", claimed)),
            other.complete(claimed, trace_record("tr-b", claimed))])
        self.assertEqual(sorted([first, second]), [False, True])
        winner = "tr-a" if first else "tr-b"
        traces, total = yield self.traces.list_for_agent(self.agent_id)
        self.assertEqual((total, [t.id for t in traces]), (1, [winner]))
        self.assertEqual(traces[0].outbox_id, row.id)
        self.assertEqual(traces[0].verification, {"verified": True})
        self.assertTrue(traces[0].verified)
        self.assertEqual((yield CheckpointStore(self.db).get("ic-1")).trace_id, winner)
        self.assertEqual((yield self.outbox_ids()), [])
        # A third, late completion changes nothing either.
        self.assertFalse((yield self.outbox.complete(claimed, trace_record("tr-c", claimed))))
        self.assertEqual((yield CheckpointStore(self.db).get("ic-1")).trace_id, winner)
        self.assertEqual((yield self.traces.get(winner)).trace, {"trace_id": winner})

    @inlineCallbacks
    def test_finish_stores_a_batch_links_its_checkpoints_and_records_failures(self):
        checkpoints = CheckpointStore(self.db)
        for n in (1, 2):
            yield checkpoints.insert(CheckpointRecord(
                id=f"ic-{n}", agent_id=self.agent_id, session_id="s1", provider="anthropic",
                model=None, verdict="clear", concerns=[], reasoning_summary=None,
                conscience_context=None, window_position=None, analysis_metadata=None,
                thinking_block_hash=None, synthetic=False, synthetic_reason=None,
                created_at=NOW))
        rows = [outbox_row(n, self.agent_id, checkpoint_id=f"ic-{n}" if n < 3 else None)
                for n in (1, 2, 3, 4)]
        yield self.add(*rows)
        claimed = yield self.outbox.claim("a", NOW + 10, LEASE, 10)
        one, two, three, four = claimed
        # Another scheduler already stored ob-002's trace.
        yield self.outbox.complete(two, trace_record("tr-old", two))
        result = yield self.outbox.finish(
            "a", [(one, trace_record("tr-1", one)), (two, trace_record("tr-2", two)),
                  (three, trace_record("tr-3", three))],
            [OutboxFailure(four, "no card")])
        self.assertEqual(result, BatchResult(frozenset({one.id, three.id}),
                                             frozenset({two.id}), frozenset()))
        self.assertEqual((yield checkpoints.get("ic-1")).trace_id, "tr-1")
        self.assertEqual((yield checkpoints.get("ic-2")).trace_id, "tr-old")
        traces, total = yield self.traces.list_for_agent(self.agent_id)
        self.assertEqual(sorted(t.id for t in traces), ["tr-1", "tr-3", "tr-old"])
        self.assertEqual((yield self.outbox_ids()), [four.id])
        # The failed row keeps its lease: not claimable again until it runs out.
        self.assertEqual((yield self.outbox.claim("b", NOW + 10, LEASE, 10)), [])

    @inlineCallbacks
    def test_finish_is_one_transaction(self):
        rows = [outbox_row(n, self.agent_id) for n in (1, 2)]
        yield self.add(*rows)
        one, two = yield self.outbox.claim("a", NOW + 10, LEASE, 10)
        ghost = TraceRecord("tr-2", "no-such-agent", None, None, two.id, {}, None, None, NOW)
        # The foreign key on the agent refuses the second trace.
        with self.assertRaises((sqlite3.IntegrityError, psycopg2.IntegrityError)):
            yield self.outbox.finish("a", [(one, trace_record("tr-1", one)), (two, ghost)],
                                     [])
        self.assertEqual((yield self.traces.list_for_agent(self.agent_id))[1], 0)
        self.assertEqual((yield self.outbox_ids()), [one.id, two.id])

    @inlineCallbacks
    def test_purge_removes_expired_rows_in_any_state(self):
        leased = outbox_row(1, self.agent_id, ttl=1000)
        parked = outbox_row(2, self.agent_id, ttl=1000)
        ready = outbox_row(3, self.agent_id, ttl=1000)
        fresh = outbox_row(4, self.agent_id, ttl=TTL)
        yield self.add(parked)
        for n in range(MAX_ATTEMPTS):
            [row] = yield self.outbox.claim("a", NOW + 2 + 2 * n, 1, 1)
            yield self.outbox.fail(row, "a", "x")
        self.assertEqual((yield self.outbox.counts())["parked"], 1)
        yield self.add(leased)
        yield self.outbox.claim("a", NOW + 2, LEASE * 100, 1)
        yield self.add(ready, fresh)
        self.assertEqual((yield self.outbox.purge_expired(NOW + 1002)), 2)  # leased, parked
        self.assertEqual((yield self.outbox_ids()), [ready.id, fresh.id])
        self.assertEqual((yield self.outbox.purge_expired(NOW + 1003)), 1)  # ready, at its TTL
        self.assertEqual((yield self.outbox_ids()), [fresh.id])

    @inlineCallbacks
    def test_expired_rows_are_not_claimed(self):
        yield self.add(outbox_row(1, self.agent_id, ttl=1000), outbox_row(2, self.agent_id))
        claimed = yield self.outbox.claim("a", NOW + 1001, LEASE, 10)
        self.assertEqual([r.id for r in claimed], ["ob-002"])

    @inlineCallbacks
    def test_latest_and_agents_with_traces(self):
        for n in range(4):
            row = outbox_row(n, self.agent_id)
            record = trace_record(f"tr-{n}", row)
            yield self.outbox.complete(row, TraceRecord(
                record.id, record.agent_id, None, None, row.id, record.trace, None, None,
                NOW + n))
        latest = yield self.traces.latest(self.agent_id, 2)
        self.assertEqual([t.id for t in latest], ["tr-2", "tr-3"])
        self.assertIsNone(latest[0].verified)
        self.assertEqual((yield self.traces.agents_with_traces(4)), [self.agent_id])
        self.assertEqual((yield self.traces.agents_with_traces(5)), [])
        self.assertEqual((yield self.traces.agents_with_traces(4, NOW + 4)), [])


class SQLiteOutboxTests(OutboxTests, unittest.TestCase):
    engine = "sqlite"


class PostgresOutboxTests(OutboxTests, unittest.TestCase):
    engine = "postgresql"


@pytest.mark.parametrize("ttl", [1.0, 60.0, 600.0, 86400.0])
def test_a_row_is_swept_before_its_ttl_is_up(ttl):
    from mnemomd.storage.traces import outbox_expiry_ms, outbox_sweep_interval

    sweep = outbox_sweep_interval(ttl)
    expires = outbox_expiry_ms(1_000_000, ttl)
    assert 0 < sweep <= 30
    # The last sweep before the TTL runs out is at or after the row's expiry.
    assert expires + sweep * 1000 <= 1_000_000 + ttl * 1000
    assert expires > 1_000_000

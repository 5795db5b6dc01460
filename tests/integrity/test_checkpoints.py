"""Checkpoints and drift alerts on both engines."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from mnemomd.integrity.checkpoints import CheckpointRecord, CheckpointStore
from tests.storage.engines import AgentDatabase


def record(n: int, agent_id: str, verdict: str = "clear", session: str = "s1"):
    return CheckpointRecord(
        id=f"ic-{n}", agent_id=agent_id, session_id=session, provider="anthropic",
        model="claude-x", verdict=verdict,
        concerns=[{"category": "deception", "severity": "high", "description": "d",
                   "evidence": "e" * 10}],
        reasoning_summary="summary", conscience_context={"values_checked": ["x"]},
        window_position={"index": n, "window_size": 10}, analysis_metadata={"backend": "x"},
        thinking_block_hash="a" * 64, synthetic=False, synthetic_reason=None, created_at=n)


class CheckpointStoreTests(AgentDatabase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.store = CheckpointStore(self.db)

    @inlineCallbacks
    def test_insert_get_round_trip_and_idempotent(self):
        original = record(1, self.agent_id)
        yield self.store.insert(original)
        yield self.store.insert(original)
        self.assertEqual((yield self.store.get("ic-1")), original)
        self.assertIsNone((yield self.store.get("ic-missing")))

    @inlineCallbacks
    def test_an_output_analysis_keeps_the_output_hash_and_no_thinking_hash(self):
        original = replace(record(1, self.agent_id), thinking_block_hash=None,
                           output_block_hash="b" * 64,
                           analysis_metadata={"analysis_scope": "output_only"})
        yield self.store.insert(original)
        self.assertEqual((yield self.store.get("ic-1")), original)
        [listed] = yield self.store.list_for_agent(self.agent_id)
        self.assertEqual(listed.output_block_hash, "b" * 64)

    @inlineCallbacks
    def test_list_filters_and_pages_newest_first(self):
        for n, verdict in enumerate(["clear", "review_needed", "clear", "boundary_violation"]):
            yield self.store.insert(record(n, self.agent_id, verdict,
                                           "s2" if n == 3 else "s1"))
        everything = yield self.store.list_for_agent(self.agent_id)
        self.assertEqual([c.id for c in everything], ["ic-3", "ic-2", "ic-1", "ic-0"])
        clear = yield self.store.list_for_agent(self.agent_id, verdict="clear")
        self.assertEqual([c.id for c in clear], ["ic-2", "ic-0"])
        page = yield self.store.list_for_agent(self.agent_id, limit=2, offset=1)
        self.assertEqual([c.id for c in page], ["ic-2", "ic-1"])
        session = yield self.store.list_for_agent(self.agent_id, session_id="s2")
        self.assertEqual([c.id for c in session], ["ic-3"])

    @inlineCallbacks
    def test_one_drift_alert_per_streak(self):
        first = yield self.store.insert_drift_alert("ida-1", self.agent_id, "s1", "medium",
                                                    {"x": 1}, "s1:ic-1", 5)
        again = yield self.store.insert_drift_alert("ida-2", self.agent_id, "s1", "medium",
                                                    {"x": 1}, "s1:ic-1", 6)
        other = yield self.store.insert_drift_alert("ida-3", self.agent_id, "s1", "medium",
                                                    {"x": 1}, "s1:ic-9", 7)
        self.assertEqual((first, again, other), (True, False, True))


class SQLiteCheckpointStoreTests(CheckpointStoreTests, unittest.TestCase):
    engine = "sqlite"


class PostgresCheckpointStoreTests(CheckpointStoreTests, unittest.TestCase):
    engine = "postgresql"

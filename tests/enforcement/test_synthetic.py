"""Synthetic verdicts block where they are given but are no finding (SPEC §5.5, §6.3).

A ``fail_closed`` violation says nothing about the agent's reasoning: it must not become a
nudge that tells the agent its reasoning was found in violation, nor count towards
auto-containment (an analysis outage would otherwise pause every agent). Real violations
next to them still do both. On both engines.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from mnemomd.agents.identity import Agent
from mnemomd.enforcement.enforcer import Enforcement
from mnemomd.enforcement.store import EnforcementStore
from mnemomd.integrity.checkpoints import CheckpointRecord, CheckpointStore
from mnemomd.kv import KVCache
from mnemomd.kv.memory import MemoryKeyValueStore
from tests.storage.engines import NOW, AgentDatabase

CONCERNS = [{"category": "prompt_injection", "severity": "critical", "description": "d"}]


class SyntheticVerdictTests(AgentDatabase):
    @inlineCallbacks
    def setUp(self):  # noqa: ANN201
        yield super().setUp()
        self.store = EnforcementStore(self.db)
        self.checkpoints = CheckpointStore(self.db)
        self.invalidated: list[str] = []
        self.enforcement = Enforcement(
            self.clock, self.store, KVCache(MemoryKeyValueStore(self.clock), "", 3600.0),
            self.invalidated.append)
        self.count = 0

    @inlineCallbacks
    def agent(self, mode: str, threshold: int | None = None) -> Any:
        changes: dict[str, Any] = {"enforcement_mode": mode}
        if threshold is not None:
            changes["auto_containment_threshold"] = threshold
        agent = yield self.store.update_settings(self.agent_id, changes, NOW)
        return agent

    @inlineCallbacks
    def outcome(self, agent: Agent, synthetic: bool,
                verdict: str = "boundary_violation") -> Any:
        """A stored checkpoint, then what enforcement does with it, as the pipeline does."""
        self.count += 1
        checkpoint_id = f"ic-{self.count}"
        yield self.checkpoints.insert(CheckpointRecord(
            id=checkpoint_id, agent_id=self.agent_id, session_id="s1", provider="anthropic",
            model="m", verdict=verdict, concerns=[] if synthetic else CONCERNS,
            reasoning_summary="r", conscience_context=None, window_position=None,
            analysis_metadata=None, thinking_block_hash=None, synthetic=synthetic,
            synthetic_reason="analysis failed: timeout" if synthetic else None,
            created_at=NOW + self.count))
        yield self.enforcement.on_outcome(agent, "s1", verdict, checkpoint_id,
                                          [] if synthetic else CONCERNS, synthetic=synthetic)

    @inlineCallbacks
    def nudges(self) -> Any:
        rows = yield self.store.nudges(self.agent_id)
        return [row["checkpoint_id"] for row in rows]

    @inlineCallbacks
    def test_a_synthetic_violation_creates_no_nudge_in_nudge_mode(self):
        agent = yield self.agent("nudge")
        yield self.outcome(agent, synthetic=True)
        self.assertEqual((yield self.nudges()), [])
        yield self.outcome(agent, synthetic=False)
        self.assertEqual((yield self.nudges()), ["ic-2"])

    @inlineCallbacks
    def test_a_synthetic_violation_creates_no_nudge_in_enforce_mode(self):
        agent = yield self.agent("enforce")
        yield self.outcome(agent, synthetic=True)
        self.assertEqual((yield self.nudges()), [])
        self.assertEqual((yield self.enforcement.take_nudges(agent)), [])
        yield self.outcome(agent, synthetic=False)
        self.assertEqual((yield self.nudges()), ["ic-2"])

    @inlineCallbacks
    def test_the_threshold_strategy_counts_real_violations_only(self):
        agent = yield self.agent("nudge")
        agent = replace(agent, nudge_strategy="threshold", nudge_threshold=2)
        for _ in range(3):
            yield self.outcome(agent, synthetic=True)
        self.assertEqual((yield self.store.session_violations(self.agent_id, "s1")), 0)
        yield self.outcome(agent, synthetic=False)
        self.assertEqual((yield self.nudges()), [])
        yield self.outcome(agent, synthetic=False)
        self.assertEqual((yield self.nudges()), ["ic-5"])

    @inlineCallbacks
    def test_synthetic_checkpoints_neither_count_nor_break_an_auto_containment_streak(self):
        agent = yield self.agent("enforce", threshold=2)
        for _ in range(3):  # an outage under fail_closed
            yield self.outcome(agent, synthetic=True)
        yield self.outcome(agent, synthetic=False)
        stored = yield self.store.agent(self.agent_id)
        self.assertEqual(stored.containment_status, "active", "one real violation so far")
        self.assertEqual(self.invalidated, [])
        yield self.outcome(agent, synthetic=True, verdict="clear")  # an outage, fail_open
        yield self.outcome(agent, synthetic=False)
        stored = yield self.store.agent(self.agent_id)
        self.assertEqual(stored.containment_status, "paused", "two real violations in a row")
        self.assertEqual(self.invalidated, [agent.agent_hash])


class SQLiteSyntheticVerdictTests(SyntheticVerdictTests, unittest.TestCase):
    engine = "sqlite"


class PostgresSyntheticVerdictTests(SyntheticVerdictTests, unittest.TestCase):
    engine = "postgresql"

"""The drift job: AAP drift over stored traces, one alert per streak, with its webhook event.

Drift is measured by the AAP SDK against a baseline centroid of an agent's first traces
(``aap.verification.divergence``), from structural features only (action type, category
and name, values applied, escalation). "Aligned" traces below share every feature with
the baseline; "divergent" ones share none, so their similarity is 0 and a run of three
of them is a sustained low-similarity streak.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from aap import APTrace
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from mnemomd.integrity.checkpoints import CheckpointStore
from mnemomd.observer.drift import MIN_TRACES, DriftDetector
from mnemomd.storage.traces import OutboxRow, OutboxStore, TraceRecord, TraceStore
from mnemomd.webhooks.store import WebhookStore
from tests.storage.engines import NOW, AgentDatabase
from tests.support import synchronously


def ap_trace(n: int, agent_id: str, card_id: str, divergent: bool) -> dict:
    if divergent:
        action = {"type": "escalate", "name": "exfiltrate", "category": "forbidden"}
        values = ["profit"]
        escalation = {"evaluated": True, "required": True, "reason": "r"}
    else:
        action = {"type": "execute", "name": "inference", "category": "bounded"}
        values = ["helpfulness"]
        escalation = {"evaluated": False, "required": False, "reason": "r"}
    trace = {
        "trace_id": f"tr-{n:03d}", "agent_id": agent_id, "card_id": card_id,
        "timestamp": datetime.fromtimestamp((NOW + n * 1000) / 1000, UTC).isoformat(),
        "action": {**action, "parameters": {}},
        "decision": {"alternatives_considered": [{"option_id": "a", "description": "a"}],
                     "selected": "a", "selection_reasoning": "r", "values_applied": values},
        "escalation": escalation,
    }
    return APTrace.model_validate(trace).model_dump(mode="json", exclude_none=True)


class DriftTests(AgentDatabase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.outbox = OutboxStore(self.db)
        self.webhooks = WebhookStore(self.db)
        self.endpoint = yield self.webhooks.create_endpoint("https://hooks.example/x",
                                                            ["drift.detected"], "s", NOW)
        self.count = 0

    def detector(self):
        return DriftDetector(self.clock, TraceStore(self.db), self.agents,
                             CheckpointStore(self.db), to_thread=synchronously)

    @inlineCallbacks
    def add_traces(self, pattern: str):
        """One stored trace per character: ``.`` aligned, ``x`` divergent."""
        for kind in pattern:
            n = self.count
            self.count += 1
            trace = ap_trace(n, self.agent_id, self.card["card_id"], kind == "x")
            row = OutboxRow(f"ob-{n}", self.agent_id, None, "anthropic", None, None, "", 1,
                            NOW, NOW + 1)
            yield self.outbox.complete(row, TraceRecord(trace["trace_id"], self.agent_id,
                                                        None, None, row.id, trace, None,
                                                        None, NOW + n * 1000))
        self.clock.advance(len(pattern))

    @inlineCallbacks
    def alerts(self):
        rows = yield self.db.fetchall("t", "SELECT streak_key, source, severity, alert "
                                           "FROM drift_alerts WHERE agent_id = ?",
                                      (self.agent_id,))
        return [(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    @inlineCallbacks
    def drift_events(self):
        deliveries, _ = yield self.webhooks.deliveries(self.endpoint.id)
        return [json.loads(d.payload) for d in deliveries if d.event_type == "drift.detected"]

    @inlineCallbacks
    def test_a_sustained_divergence_is_one_alert(self):
        yield self.add_traces("." * 10 + "xxxxx")  # a baseline of 10, then 5 divergent
        detector = self.detector()
        self.assertEqual((yield detector.run()), 1)
        [(streak, source, severity, alert)] = yield self.alerts()
        self.assertEqual((streak, source), ("aap:tr-010", "aap"))
        self.assertEqual(severity, "high")  # similarity 0
        self.assertEqual(alert["trace_ids"], ["tr-010", "tr-011", "tr-012"])
        self.assertEqual(alert["agent_id"], self.agent_id)
        [event] = yield self.drift_events()
        self.assertEqual(event["agent_id"], self.agent_id)
        self.assertEqual(event["data"]["alert"]["trace_ids"], alert["trace_ids"])
        # The same streak is not alerted again: not by the next run, not by another
        # scheduler that starts fresh, not when the streak goes on.
        self.assertEqual((yield detector.run()), 0)
        self.assertEqual((yield self.detector().run()), 0)
        yield self.add_traces("x")
        self.assertEqual((yield detector.run()), 0)
        self.assertEqual(len((yield self.alerts())), 1)
        self.assertEqual(len((yield self.drift_events())), 1)

    @inlineCallbacks
    def test_a_new_streak_after_a_recovery_is_a_new_alert(self):
        yield self.add_traces("." * 10 + "xxx")
        detector = self.detector()
        self.assertEqual((yield detector.run()), 1)
        yield self.add_traces("..xxx")
        self.assertEqual((yield detector.run()), 1)
        self.assertEqual(sorted(a[0] for a in (yield self.alerts())),
                         ["aap:tr-010", "aap:tr-015"])

    @inlineCallbacks
    def test_a_long_streak_stays_one_alert_as_traces_accumulate(self):
        # The SDK's own detect_drift grows its baseline with the number of traces, which
        # would move the streak's first trace and alert the same streak again.
        yield self.add_traces("." * 10 + "xxxx")
        detector = self.detector()
        self.assertEqual((yield detector.run()), 1)
        for _ in range(4):
            yield self.add_traces("x" * 10)
            self.assertEqual((yield detector.run()), 0)
        self.assertEqual([a[0] for a in (yield self.alerts())], ["aap:tr-010"])
        yield self.add_traces("..." + "xxx")
        self.assertEqual((yield detector.run()), 1)
        self.assertEqual(len((yield self.drift_events())), 2)

    @inlineCallbacks
    def test_aligned_traces_raise_nothing(self):
        yield self.add_traces("." * 12)
        self.assertEqual((yield self.detector().run()), 0)
        self.assertEqual((yield self.alerts()), [])

    @inlineCallbacks
    def test_fewer_than_ten_traces_raise_nothing(self):
        # Enough for the SDK to see a streak (baseline 3 + 3), not for the job to look.
        yield self.add_traces("..." + "x" * (MIN_TRACES - 4))
        self.assertEqual(self.count, MIN_TRACES - 1)
        self.assertEqual((yield self.detector().run()), 0)
        self.assertEqual((yield self.alerts()), [])
        self.assertEqual((yield self.drift_events()), [])


class SQLiteDriftTests(DriftTests, unittest.TestCase):
    engine = "sqlite"


class PostgresDriftTests(DriftTests, unittest.TestCase):
    engine = "postgresql"

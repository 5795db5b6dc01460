"""The management API's queries, on both engines."""

from __future__ import annotations

import json

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from mnemomd.agents.store import AgentStore, default_conscience_values
from mnemomd.api.queries import ManagementStore
from mnemomd.enforcement.store import EnforcementStore
from mnemomd.integrity.checkpoints import CheckpointStore
from tests.integrity.test_checkpoints import record
from tests.storage.engines import MigratedDatabase


class ManagementStoreTests(MigratedDatabase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        agents = AgentStore(self.db)
        self.ids = []
        for n in range(3):
            agent = yield agents.get_or_create(f"{n:016x}", f"a{n}", "observe", 10 + n)
            self.ids.append(agent.agent_id)
        self.store = ManagementStore(self.db)

    @inlineCallbacks
    def test_agents_page_with_total_and_filters(self):
        page = yield self.store.list_agents(2, 0)
        self.assertEqual(page.total, 3)
        self.assertEqual([a["agent_id"] for a in page.items], self.ids[:0:-1])
        rest = yield self.store.list_agents(2, 2)
        self.assertEqual(([a["agent_id"] for a in rest.items], rest.total), ([self.ids[0]], 3))
        yield EnforcementStore(self.db).contain(self.ids[1], "pause", "t", None, 50)
        paused = yield self.store.list_agents(50, 0, containment_status="paused")
        self.assertEqual(([a["agent_id"] for a in paused.items], paused.total),
                         ([self.ids[1]], 1))
        nudging = yield self.store.list_agents(50, 0, enforcement_mode="nudge")
        self.assertEqual(nudging.total, 0)
        agent = yield self.store.agent(self.ids[1])
        self.assertEqual((agent["containment_status"], agent["aip_enabled"],
                          agent["updated_at"]), ("paused", True, 50))
        self.assertIsNone((yield self.store.agent("smolt-none")))

    @inlineCallbacks
    def test_agent_views_show_the_state_that_holds_them_and_its_scope(self):
        agents = AgentStore(self.db)
        plain = yield agents.get_or_create("f" * 16, None, "observe", 20)
        sibling = yield agents.get_or_create("e" * 16, "sibling", "observe", 21,
                                           key_hash="f" * 16)
        enforcement = EnforcementStore(self.db)
        yield enforcement.contain(self.ids[0], "pause", "t", "own", 40, "agent")
        yield enforcement.contain(plain.agent_id, "kill", "t", "the key leaked", 50)
        view = yield self.store.agent(sibling.agent_id)
        self.assertEqual(
            {k: view[k] for k in ("containment_status", "containment_scope",
                                  "agent_containment_status", "key_containment_status",
                                  "key_hash", "containment_reason", "containment_changed_at")},
            {"containment_status": "killed", "containment_scope": "key",
             "agent_containment_status": "active", "key_containment_status": "killed",
             "key_hash": "f" * 16, "containment_reason": "the key leaked",
             "containment_changed_at": 50})
        own = yield self.store.agent(self.ids[0])
        self.assertEqual((own["containment_status"], own["containment_scope"],
                          own["containment_reason"]), ("paused", "agent", "own"))
        killed = yield self.store.list_agents(50, 0, containment_status="killed")
        self.assertEqual(sorted(a["agent_id"] for a in killed.items),
                         sorted([plain.agent_id, sibling.agent_id]))
        self.assertEqual(killed.total, 2)
        active = yield self.store.list_agents(50, 0, containment_status="active")
        self.assertEqual(active.total, 2)
        log = yield self.store.containment_log(sibling.agent_id, "f" * 16, 10, 0)
        self.assertEqual([(e["agent_id"], e["action"], e["scope"]) for e in log.items],
                         [(plain.agent_id, "kill", "key")])
        timeline = yield self.store.timeline(sibling.agent_id, 10, 0)
        self.assertEqual([e["data"] for e in timeline.items],
                         [{"action": "kill", "actor": "t", "scope": "key"}])

    @inlineCallbacks
    def test_card_and_conscience_replacement_bump_updated_at(self):
        agent_id = self.ids[0]
        card = (yield self.store.card(agent_id))["card"]
        yield self.store.replace_card(agent_id, {**card, "card_id": "ac-new"}, 100)
        stored = yield self.store.card(agent_id)
        self.assertEqual((stored["card"]["card_id"], stored["updated_at"]), ("ac-new", 100))
        values = [{"type": "BOUNDARY", "content": "never x"}]
        yield self.store.replace_conscience(agent_id, values, 200)
        self.assertEqual((yield self.store.conscience(agent_id)),
                         {"values": values, "is_default": False, "updated_at": 200})
        yield self.store.replace_conscience(agent_id, None, 300)
        reset = yield self.store.conscience(agent_id)
        self.assertEqual((reset["values"], reset["is_default"]),
                         (default_conscience_values(), True))
        self.assertEqual((yield self.store.agent(agent_id))["updated_at"], 300)
        self.assertFalse((yield self.store.replace_card("smolt-none", card, 1)))
        self.assertIsNone((yield self.store.conscience("smolt-none")))

    @inlineCallbacks
    def test_checkpoints_page_and_integrity_score(self):
        agent_id = self.ids[0]
        checkpoints = CheckpointStore(self.db)
        verdicts = ["clear", "clear", "review_needed", "boundary_violation"]
        for n, verdict in enumerate(verdicts):
            yield checkpoints.insert(record(n, agent_id, verdict))
        page = yield self.store.checkpoints(agent_id, 2, 0, verdict="clear")
        self.assertEqual(([c["id"] for c in page.items], page.total), (["ic-1", "ic-0"], 2))
        self.assertEqual(page.items[0]["concerns"][0]["category"], "deception")
        self.assertEqual((yield self.store.checkpoint("ic-2"))["verdict"], "review_needed")
        score = yield self.store.integrity_score(agent_id)
        self.assertEqual(score, {"agent_id": agent_id, "total_checks": 4, "clear_count": 2,
                                 "review_count": 1, "violation_count": 1,
                                 "integrity_ratio": 0.5, "latest_verdict": "boundary_violation",
                                 "latest_at": 3})
        empty = yield self.store.integrity_score(self.ids[1])
        self.assertEqual((empty["total_checks"], empty["integrity_ratio"]), (0, 1.0))

    @inlineCallbacks
    def test_a_page_of_scores_in_one_transaction_with_recent_verdicts_oldest_first(self):
        checkpoints = CheckpointStore(self.db)
        verdicts = ["clear", "review_needed", "clear", "boundary_violation", "clear"]
        for n, verdict in enumerate(verdicts):
            yield checkpoints.insert(record(n, self.ids[0], verdict))
        scores = yield self.store.integrity_scores(self.ids[:2], recent=3)
        self.assertEqual(set(scores), set(self.ids[:2]))
        first = scores[self.ids[0]]
        single = yield self.store.integrity_score(self.ids[0])
        self.assertEqual({k: v for k, v in first.items() if k != "recent_verdicts"}, single)
        self.assertEqual(first["recent_verdicts"], ["clear", "boundary_violation", "clear"])
        self.assertEqual((first["total_checks"], first["integrity_ratio"]), (5, 0.6))
        self.assertEqual(scores[self.ids[1]]["recent_verdicts"], [])
        self.assertEqual((yield self.store.integrity_scores([])), {})

    @inlineCallbacks
    def test_timeline_merges_every_kind_newest_first(self):
        agent_id = self.ids[0]
        yield CheckpointStore(self.db).insert(record(5, agent_id, "boundary_violation"))
        yield self.db.execute(
            "seed_trace", "INSERT INTO ap_traces (id, agent_id, session_id, checkpoint_id, "
            "trace, verified, created_at) VALUES ('tr-1', ?, 's1', 'ic-5', ?, ?, 6)",
            (agent_id, json.dumps({"trace_id": "tr-1"}), True))
        yield EnforcementStore(self.db).create_nudge(agent_id, "s1", "ic-5", "notice", 7)
        yield EnforcementStore(self.db).contain(agent_id, "pause", "ops", "why", 8)
        page = yield self.store.timeline(agent_id, 10, 0)
        self.assertEqual([(e["kind"], e["created_at"]) for e in page.items],
                         [("containment", 8), ("nudge", 7), ("trace", 6), ("checkpoint", 5)])
        self.assertEqual(page.items[0]["data"],
                         {"action": "pause", "actor": "ops", "scope": "agent"})
        self.assertEqual(page.items[3]["data"], {"verdict": "boundary_violation",
                                                 "session_id": "s1"})
        second = yield self.store.timeline(agent_id, 2, 2)
        self.assertEqual(([e["kind"] for e in second.items], second.total),
                         (["trace", "checkpoint"], 4))
        only = yield self.store.timeline(agent_id, 10, 0, ("nudge",))
        self.assertEqual([e["kind"] for e in only.items], ["nudge"])

    @inlineCallbacks
    def test_timeline_shows_tools_first_seen_and_policy_violations(self):
        agent_id = self.ids[0]
        yield self.db.execute(
            "seed_tool", "INSERT INTO tool_first_seen (agent_id, tool, seen_as, first_seen_at) "
            "VALUES (?, 'send_email', 'offered', 3), (?, 'web_search', 'called', 4)",
            (agent_id, agent_id))
        yield self.db.execute(
            "seed_violation", "INSERT INTO policy_violations (id, agent_id, verdict, mode, "
            "blocked, violations, created_at) VALUES ('pv-1', ?, 'fail', 'enforce', ?, '[]', 5)",
            (agent_id, True))
        page = yield self.store.timeline(agent_id, 10, 0)
        self.assertEqual([(e["kind"], e["id"], e["created_at"], e["data"]) for e in page.items],
                         [("policy_violation", "pv-1", 5,
                           {"verdict": "fail", "mode": "enforce", "blocked": True}),
                          ("tool", "web_search", 4, {"seen_as": "called"}),
                          ("tool", "send_email", 3, {"seen_as": "offered"})])
        only = yield self.store.timeline(agent_id, 10, 0, ("tool",))
        self.assertEqual([e["id"] for e in only.items], ["web_search", "send_email"])


class SQLiteManagementStoreTests(ManagementStoreTests, unittest.TestCase):
    engine = "sqlite"


class PostgresManagementStoreTests(ManagementStoreTests, unittest.TestCase):
    engine = "postgresql"

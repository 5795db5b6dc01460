"""Agents persisted on first sight, exactly once, on both engines."""

from __future__ import annotations

import json

from aap.schemas.alignment_card import AlignmentCard
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from mnemomd.agents.store import DEFAULT_DECLARED_VALUES, AgentStore
from tests.storage.engines import MigratedDatabase


class AgentStoreTests(MigratedDatabase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.store = AgentStore(self.db)

    @inlineCallbacks
    def count(self, table):
        row = yield self.db.fetchone("t", f"SELECT COUNT(*) FROM {table}")
        return row[0]

    @inlineCallbacks
    def test_first_sight_creates_agent_card_and_conscience_values(self):
        agent = yield self.store.get_or_create("0123456789abcdef", "planner", "nudge", 5000)
        self.assertEqual(agent.agent_id, "smolt-01234567")
        self.assertEqual((agent.name, agent.enforcement_mode, agent.created_at),
                         ("planner", "nudge", 5000))
        self.assertEqual(agent.containment_status, "active")
        self.assertIs(agent.aip_enabled, True)
        card = yield self.store.card(agent.agent_id)
        AlignmentCard.model_validate(card)
        self.assertEqual(card["values"]["declared"], list(DEFAULT_DECLARED_VALUES))
        self.assertEqual(card["autonomy"]["bounded_actions"], ["inference"])
        self.assertEqual(card["audit"]["retention_days"], 365)
        row = yield self.db.fetchone("t", "SELECT value_set, is_default FROM conscience_values")
        self.assertTrue(any(v["type"] == "BOUNDARY" for v in json.loads(row[0])))
        self.assertTrue(bool(row[1]))
        again = yield self.store.get_or_create("0123456789abcdef", "other", "observe", 9000)
        self.assertEqual(again, agent)

    @inlineCallbacks
    def test_fifty_concurrent_first_calls_create_one_agent_and_one_card(self):
        # Five pools stand in for five replicas, ten calls each.
        stores = [self.store] + [AgentStore(self.open_database()) for _ in range(4)]
        calls = [store.get_or_create("feedfacecafebeef", None, "observe", 1)
                 for store in stores for _ in range(10)]
        agents = yield gatherResults(calls, consumeErrors=True)
        self.assertEqual(len({a.agent_id for a in agents}), 1)
        self.assertEqual((yield self.count("agents")), 1)
        self.assertEqual((yield self.count("alignment_cards")), 1)
        self.assertEqual((yield self.count("conscience_values")), 1)

    @inlineCallbacks
    def test_id_collision_takes_a_longer_id(self):
        first = yield self.store.get_or_create("abcdef0011111111", None, "observe", 1)
        second = yield self.store.get_or_create("abcdef0022222222", None, "observe", 1)
        self.assertEqual(first.agent_id, "smolt-abcdef00")
        self.assertEqual(second.agent_id, "smolt-abcdef002")
        self.assertEqual((yield self.count("alignment_cards")), 2)

    @inlineCallbacks
    def test_last_seen_batched_and_never_moves_back(self):
        agent = yield self.store.get_or_create("1111222233334444", None, "observe", 1)
        yield self.store.touch_last_seen({agent.agent_id: 500})
        yield self.store.touch_last_seen({agent.agent_id: 400})
        row = yield self.db.fetchone("t", "SELECT last_seen_at FROM agents")
        self.assertEqual(row[0], 500)

    @inlineCallbacks
    def test_no_secret_material_in_agent_rows(self):
        agent = yield self.store.get_or_create("5555666677778888", "n", "observe", 1)
        row = yield self.db.fetchone("t", "SELECT * FROM agents WHERE id = ?", (agent.agent_id,))
        self.assertNotIn("sk-", json.dumps([str(v) for v in row]))


class SQLiteAgentStoreTests(AgentStoreTests, unittest.TestCase):
    engine = "sqlite"


class PostgresAgentStoreTests(AgentStoreTests, unittest.TestCase):
    engine = "postgresql"

"""Agents persisted on first sight, exactly once, on both engines."""

from __future__ import annotations

import json

from aap.schemas.alignment_card import AlignmentCard
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from mnemomd.agents.identity import agent_hash
from mnemomd.agents.store import DEFAULT_DECLARED_VALUES, AgentStore
from tests.storage.engines import MigratedDatabase, every_row

#: Fixed keys shaped like each provider's (a public head, then the secret part); fixed,
#: with upper-case letters no hex digest contains, so a match can only be a leak.
ANTHROPIC_KEY = "sk-ant-api03-Zq7TnW2xKp9LmR4vYs8BdF3hJc6GtN1eQw5UoX"
OPENAI_KEY = "sk-proj-Hv3KdP8sLq2MxT7wRb5NcY9gZe4JfU6aWo1Ti"
GEMINI_KEY = "AIzaSyQ4mT8vKp2RxW6nLd9HsB3cYf7GjZ5eUo1"
HEADS = ("sk-ant-api03-", "sk-proj-", "AIza")


def secret_fragments(key: str) -> list[str]:
    """What of ``key`` must never be stored: its shortest prefix that reaches past the
    public head (so every longer prefix too), and every run of 8 characters of the
    secret part (a suffix or a middle of the key, a key stripped of its head)."""
    head = next(h for h in HEADS if key.startswith(h))
    secret = key[len(head):]
    return [key[:len(head) + 1]] + [secret[i:i + 8] for i in range(len(secret) - 7)]


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
    def test_no_key_material_in_any_row_of_any_table(self):
        # Agents made from real-looking keys of each provider, named and unnamed, seen
        # and touched as the proxy does; then every column of every row is scanned.
        for key, name in ((ANTHROPIC_KEY, None), (OPENAI_KEY, "planner"), (GEMINI_KEY, None)):
            agent = yield self.store.get_or_create(agent_hash(key.encode(), name), name,
                                                   "observe", 1)
            yield self.store.touch_last_seen({agent.agent_id: 2})
        tables = yield every_row(self.db)
        self.assertEqual(len(tables["agents"]), 3)
        cells = [(table, str(cell)) for table, rows in tables.items()
                 for row in rows for cell in row]
        for key in (ANTHROPIC_KEY, OPENAI_KEY, GEMINI_KEY):
            fragments = secret_fragments(key)
            leaks = [(table, cell) for table, cell in cells
                     if any(fragment in cell for fragment in fragments)]
            self.assertEqual(leaks, [], f"material of {key[:6]}... stored")

    def test_the_fragments_cover_prefixes_and_runs_of_the_secret_part(self):
        fragments = secret_fragments(ANTHROPIC_KEY)
        for leaked in (ANTHROPIC_KEY, ANTHROPIC_KEY[:16], "x" + ANTHROPIC_KEY[20:28] + "y",
                       ANTHROPIC_KEY[-8:]):
            self.assertTrue(any(f in leaked for f in fragments), leaked)
        self.assertFalse(any(f in "sk-ant-api03-" for f in fragments))


class SQLiteAgentStoreTests(AgentStoreTests, unittest.TestCase):
    engine = "sqlite"


class PostgresAgentStoreTests(AgentStoreTests, unittest.TestCase):
    engine = "postgresql"

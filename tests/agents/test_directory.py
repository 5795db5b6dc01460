"""The agent directory drops what it cached about agents changed elsewhere, on both
engines."""

from __future__ import annotations

import json

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from mnemomd.agents.directory import PersistentAgentDirectory, agent_derived_keys
from mnemomd.agents.store import AgentStore
from mnemomd.enforcement.store import EnforcementStore
from mnemomd.kv import KVCache, MemoryKeyValueStore
from tests.storage.engines import MigratedDatabase


class DirectoryChangeTests(MigratedDatabase):
    @inlineCallbacks
    def test_a_change_made_elsewhere_drops_agent_card_and_conscience_entries(self):
        clock = Clock()
        clock.advance(1)
        kv = MemoryKeyValueStore(clock)
        cache = KVCache(kv, "", 300)
        directory = PersistentAgentDirectory(clock, AgentStore(self.db), cache)
        agent = yield directory.resolve("abcdabcdabcdabcd", None)
        keys = agent_derived_keys(agent.agent_hash, agent.agent_id)
        for key in keys[1:]:
            yield cache.set_json(key, {"cached": True})
        self.assertIsNotNone((yield kv.get(keys[0])))
        # Another replica (another process) pauses the agent: only the database knows.
        yield EnforcementStore(self.db).contain(agent.agent_id, "pause", "ops", None, 5000)
        yield directory.drop_changed()
        remaining = yield gatherResults([kv.get(key) for key in keys])
        self.assertEqual(remaining, [None, None, None])
        again = yield directory.resolve("abcdabcdabcdabcd", None)
        self.assertEqual(again.containment_status, "paused")
        self.assertEqual(json.loads((yield kv.get(keys[0])))["containment_status"], "paused")


class SQLiteDirectoryChangeTests(DirectoryChangeTests, unittest.TestCase):
    engine = "sqlite"


class PostgresDirectoryChangeTests(DirectoryChangeTests, unittest.TestCase):
    engine = "postgresql"

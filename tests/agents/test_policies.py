"""Tool policies in storage, on both engines: versions and change history, the cached
``PolicyBook`` (and the last policy read when storage is gone), and what the gateway
records of them (``policy_violations``, ``tool_first_seen``): tool names and rules only."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import fail, inlineCallbacks
from twisted.trial import unittest

from mnemomd.agents.policies import ORG, PolicyBook, PolicyStore
from mnemomd.kv import KVCache
from mnemomd.kv.memory import MemoryKeyValueStore
from mnemomd.policy import compile_policy, evaluate, parse_policy
from mnemomd.proxy.policy import (
    TOOL_SEEN_FIELDS,
    VIOLATION_FIELDS,
    write_tools_seen,
    write_violations,
)
from mnemomd.storage.writes import Write
from tests.storage.engines import NOW, AgentDatabase


def document(name: str = "browsing", forbidden: str = "send_*", scope: str = "agent",
             mode: str = "enforce") -> dict[str, Any]:
    return {"meta": {"schema_version": "1.0", "name": name, "scope": scope},
            "capability_mappings": {"web_browsing": {"tools": ["web_search"],
                                                     "card_actions": ["browse"]}},
            "forbidden": [{"pattern": forbidden, "reason": "No data leaves",
                           "severity": "critical"}],
            "defaults": {"unmapped_tool_action": "allow", "unmapped_severity": "low",
                         "fail_open": False, "enforcement_mode": mode,
                         "grace_period_hours": 0}}


class _Unreachable:
    """A policy store whose database is gone."""

    def get(self, owner: str) -> Any:
        return fail(ConnectionError("database unavailable"))


class PolicyStoreTests(AgentDatabase):
    @inlineCallbacks
    def setUp(self):  # noqa: ANN201
        yield super().setUp()
        self.store = PolicyStore(self.db)

    @inlineCallbacks
    def test_a_policy_is_created_then_versioned_with_its_history(self):
        self.assertIsNone((yield self.store.get(self.agent_id)))
        first = yield self.store.put(self.agent_id, document(), NOW)
        self.assertTrue(first.id.startswith("pol-"))
        self.assertEqual((first.version, first.created_at, first.updated_at), (1, NOW, NOW))
        second = yield self.store.put(self.agent_id, document(forbidden="delete_*"), NOW + 5)
        self.assertEqual((second.id, second.version, second.created_at, second.updated_at),
                         (first.id, 2, NOW, NOW + 5))
        read = yield self.store.get(self.agent_id)
        self.assertEqual(read, second)
        self.assertEqual(read.document["forbidden"][0]["pattern"], "delete_*")
        self.assertTrue((yield self.store.delete(self.agent_id, NOW + 9)))
        self.assertFalse((yield self.store.delete(self.agent_id, NOW + 10)))
        self.assertIsNone((yield self.store.get(self.agent_id)))
        history = yield self.store.history(self.agent_id)
        self.assertEqual([(h["policy_id"], h["version"], h["change"], h["changed_at"])
                          for h in history],
                         [(first.id, 3, "deleted", NOW + 9), (first.id, 2, "updated", NOW + 5),
                          (first.id, 1, "created", NOW)])

    @inlineCallbacks
    def test_the_org_policy_and_an_agent_policy_are_kept_apart(self):
        org = yield self.store.put(ORG, document("org", "delete_*", "org"), NOW)
        agent = yield self.store.put(self.agent_id, document(), NOW)
        self.assertNotEqual(org.id, agent.id)
        self.assertEqual((yield self.store.get(ORG)).public()["scope"], "org")
        self.assertEqual((yield self.store.get(self.agent_id)).public()["agent_id"],
                         self.agent_id)
        self.assertEqual(len((yield self.store.history(ORG))), 1)

    @inlineCallbacks
    def test_the_book_merges_caches_and_keeps_the_last_policy_when_storage_is_gone(self):
        kv = MemoryKeyValueStore(self.clock)
        cache = KVCache(kv, "t", 60)
        book = PolicyBook(self.clock, self.store, cache)
        self.assertIsNone((yield book.active(self.agent_id)))
        yield self.store.put(ORG, document("org", "delete_*", "org"), NOW)
        yield self.store.put(self.agent_id, document(), NOW)
        yield book.invalidate(ORG)
        yield book.invalidate(self.agent_id)
        active = yield book.active(self.agent_id)
        self.assertEqual(active.mode, "enforce")
        self.assertEqual(evaluate(active.compiled, ("delete_all", "send_email"),
                                  active.mode).verdict, "fail")
        self.assertEqual([r.pattern for r in active.policy.forbidden], ["delete_*", "send_*"])
        # The database and the KV store go away: the last policy read still holds.
        book._store = _Unreachable()  # type: ignore[assignment]
        self.clock.advance(120)  # past the cache's TTL
        kept = yield book.active(self.agent_id)
        self.assertEqual(kept.source, active.source)
        self.assertEqual(kept.mode, "enforce")


class RecordedRowsTests(AgentDatabase):
    """What the proxy step writes: violation rows with their ``policy.violation`` event,
    and first-seen tools, once each."""

    @inlineCallbacks
    def test_violations_and_first_seen_tools_are_stored_once(self):
        result = evaluate(compile_policy(parse_policy(document())), ("send_email",), "enforce")
        row = {"id": "pv-1", "agent_id": self.agent_id, "verdict": result.verdict,
               "mode": result.mode, "blocked": result.blocked,
               "violations": json.dumps(result.violations), "created_at": NOW}
        seen = {"agent_id": self.agent_id, "tool": "send_email", "seen_as": "offered",
                "first_seen_at": NOW}
        for _ in range(2):  # a replay (the spool, another replica) inserts nothing
            yield self.db.run_interaction("t", write_violations,
                                          [Write("policy_violation", "pv-1", row)])
            yield self.db.run_interaction("t", write_tools_seen,
                                          [Write("tool_first_seen", "x", seen)])
        rows = yield self.db.fetchall("t", f"SELECT {', '.join(VIOLATION_FIELDS)} "
                                           "FROM policy_violations")
        self.assertEqual([(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows],
                         [("pv-1", self.agent_id, "fail", "enforce", True)])
        self.assertEqual(json.loads(rows[0][5])[0]["rule"], "send_*")
        tools = yield self.db.fetchall("t", f"SELECT {', '.join(TOOL_SEEN_FIELDS)} "
                                            "FROM tool_first_seen")
        self.assertEqual(tools, [(self.agent_id, "send_email", "offered", NOW)])


class SQLitePolicyStoreTests(PolicyStoreTests, unittest.TestCase):
    engine = "sqlite"


class PostgresPolicyStoreTests(PolicyStoreTests, unittest.TestCase):
    engine = "postgresql"


class SQLiteRecordedRowsTests(RecordedRowsTests, unittest.TestCase):
    engine = "sqlite"


class PostgresRecordedRowsTests(RecordedRowsTests, unittest.TestCase):
    engine = "postgresql"

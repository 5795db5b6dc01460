"""Containment by key, in storage, on both engines: one API key carries several agents (its
plain agent and every ``/agent/{name}/`` agent), and a key-scoped action holds them all,
names first used after it included."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from mnemomd.agents.directory import PersistentAgentDirectory
from mnemomd.agents.identity import agent_hash, effective_containment
from mnemomd.agents.store import AgentStore
from mnemomd.enforcement.store import EnforcementError, EnforcementStore
from mnemomd.kv import KVCache, MemoryKeyValueStore
from mnemomd.storage.database import Database
from mnemomd.storage.migrations import migrate, migrations_dir
from mnemomd.webhooks.store import WebhookStore
from tests.storage.engines import MigratedDatabase, discard_database_url, new_database_url

KEY = b"sk-ant-api03-key-containment-one"
OTHER_KEY = b"sk-ant-api03-key-containment-two"
#: Plain agents are identified by the hash of their key: that is the key's hash.
K = agent_hash(KEY)
OTHER = agent_hash(OTHER_KEY)


def named(name: str, key: bytes = KEY) -> str:
    return agent_hash(key, name)


class KeyContainmentTests(MigratedDatabase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.agents = AgentStore(self.db)
        self.store = EnforcementStore(self.db)
        self.plain = yield self.agents.get_or_create(K, None, "observe", 10)
        self.planner = yield self.agents.get_or_create(named("planner"), "planner", "observe",
                                                       11, key_hash=K)
        self.stranger = yield self.agents.get_or_create(OTHER, None, "observe", 12)

    @inlineCallbacks
    def status(self, hash_):
        """(effective state, scope) of the agent of ``hash_``, as the proxy reads it."""
        agent = yield self.agents.get_by_hash(hash_)
        return effective_containment(agent)

    @inlineCallbacks
    def log(self):
        rows = yield self.db.fetchall(
            "t", "SELECT agent_id, action, scope, key_hash, from_status, to_status "
                 "FROM containment_log ORDER BY created_at, id")
        return [tuple(r) for r in rows]

    @inlineCallbacks
    def test_every_agent_records_its_key(self):
        self.assertEqual((self.plain.key_hash, self.planner.key_hash), (K, K))
        self.assertEqual(self.stranger.key_hash, OTHER)
        # A plain agent's key is its own hash whatever the caller says.
        again = yield self.agents.get_or_create(agent_hash(b"sk-third"), None, "observe", 13,
                                                key_hash="ignored")
        self.assertEqual(again.key_hash, again.agent_hash)

    @inlineCallbacks
    def test_kill_takes_the_key_by_default_and_holds_every_agent_of_it(self):
        webhooks = WebhookStore(self.db)
        yield webhooks.create_endpoint("https://hooks.example/x", ["*"], "s" * 32, 1)
        change = yield self.store.contain(self.plain.agent_id, "kill", "ops", "leaked", 100)
        self.assertEqual((change.scope, change.key_hash, change.key_known),
                         ("key", K, True))
        self.assertEqual((change.from_status, change.to_status), ("active", "killed"))
        self.assertEqual(sorted(change.agents),
                         sorted([(K, self.plain.agent_id),
                                 (named("planner"), self.planner.agent_id)]))
        for hash_ in (K, named("planner")):
            self.assertEqual((yield self.status(hash_)), ("killed", "key"))
        # The agent's own row is untouched: the key holds it.
        planner = yield self.agents.get_by_hash(named("planner"))
        self.assertEqual(planner.containment_status, "active")
        self.assertEqual((yield self.status(OTHER)), ("active", None))
        # A name first used after the kill starts contained.
        late = yield self.agents.get_or_create(named("late"), "late", "observe", 200, key_hash=K)
        self.assertEqual(effective_containment(late), ("killed", "key"))
        self.assertEqual((yield self.log()),
                         [(self.plain.agent_id, "kill", "key", K, "active", "killed")])
        [payload] = yield self.db.fetchall(
            "t", "SELECT payload FROM webhook_deliveries WHERE event_type = 'agent.killed'")
        data = json.loads(payload[0])["data"]
        self.assertEqual((data["scope"], data["key_hash"], data["agents"]), ("key", K, 2))

    @inlineCallbacks
    def test_pause_takes_the_agent_by_default_and_resume_the_scope_in_force(self):
        change = yield self.store.contain(self.planner.agent_id, "pause", "ops", None, 100)
        self.assertEqual((change.scope, change.agents),
                         ("agent", ((named("planner"), self.planner.agent_id),)))
        self.assertEqual((yield self.status(named("planner"))), ("paused", "agent"))
        self.assertEqual((yield self.status(K)), ("active", None))
        yield self.store.contain(self.planner.agent_id, "resume", "ops", None, 110)
        self.assertEqual((yield self.status(named("planner"))), ("active", None))
        yield self.store.contain(self.planner.agent_id, "pause", "ops", None, 120, "key")
        self.assertEqual((yield self.status(K)), ("paused", "key"))
        self.assertEqual((yield self.status(named("planner"))), ("paused", "key"))
        resumed = yield self.store.contain(self.plain.agent_id, "resume", "ops", None, 130)
        self.assertEqual((resumed.scope, resumed.to_status), ("key", "active"))
        for hash_ in (K, named("planner")):
            self.assertEqual((yield self.status(hash_)), ("active", None))
        self.assertEqual([(a, s) for _, a, s, *_ in (yield self.log())],
                         [("pause", "agent"), ("resume", "agent"), ("pause", "key"),
                          ("resume", "key")])

    @inlineCallbacks
    def test_lifting_the_agent_alone_while_its_key_is_held_is_refused(self):
        yield self.store.contain(self.plain.agent_id, "kill", "ops", None, 100)
        with self.assertRaises(EnforcementError) as caught:
            yield self.store.contain(self.planner.agent_id, "reactivate", "ops", None, 110,
                                     "agent")
        self.assertIn("killed by its key", str(caught.exception))
        with self.assertRaises(EnforcementError):
            yield self.store.contain(self.planner.agent_id, "kill", "ops", None, 110, "key")
        # Reactivate without a scope lifts the key, through any of its agents.
        change = yield self.store.contain(self.planner.agent_id, "reactivate", "ops", None,
                                          120)
        self.assertEqual((change.scope, change.from_status), ("key", "killed"))
        self.assertEqual((yield self.status(named("planner"))), ("active", None))

    @inlineCallbacks
    def test_the_worse_state_holds_and_the_scope_says_which(self):
        yield self.store.contain(self.planner.agent_id, "kill", "ops", None, 100, "agent")
        yield self.store.contain(self.plain.agent_id, "pause", "ops", None, 110, "key")
        self.assertEqual((yield self.status(named("planner"))), ("killed", "agent"))
        self.assertEqual((yield self.status(K)), ("paused", "key"))
        yield self.store.contain(self.plain.agent_id, "resume", "ops", None, 120)
        self.assertEqual((yield self.status(named("planner"))), ("killed", "agent"))
        self.assertEqual((yield self.status(K)), ("active", None))

    @inlineCallbacks
    def test_changed_since_names_every_agent_of_a_changed_key(self):
        before = yield self.agents.changed_since(50)
        self.assertEqual(sorted(h for h, _, _ in before),
                         [])  # created at 10..12, nothing changed after 50
        yield self.store.contain(self.plain.agent_id, "kill", "ops", None, 100)
        changed = yield self.agents.changed_since(50)
        self.assertEqual(sorted((h, u) for h, u, _ in changed),
                         sorted([(K, 100), (named("planner"), 100)]))
        self.assertEqual((yield self.agents.changed_since(100)), [])

    @inlineCallbacks
    def test_a_named_agent_from_before_keys_were_recorded_learns_its_key(self):
        legacy = yield self.agents.get_or_create(named("legacy"), "legacy", "observe", 20)
        self.assertIsNone(legacy.key_hash)
        change = yield self.store.contain(legacy.agent_id, "kill", "ops", "gone rogue", 100)
        self.assertEqual((change.scope, change.key_known, change.key_hash),
                         ("key", False, None))
        self.assertEqual((yield self.status(named("legacy"))), ("killed", "key"))
        self.assertEqual((yield self.status(K)), ("active", None))  # not known to be its
        fresh, changed = yield self.agents.learn_key(named("legacy"), K, 150)
        self.assertEqual((fresh.key_hash, effective_containment(fresh)), (K, ("killed", "key")))
        self.assertEqual(sorted(i for _, i in changed),
                         sorted([self.plain.agent_id, self.planner.agent_id, legacy.agent_id]))
        for hash_ in (K, named("planner")):
            self.assertEqual((yield self.status(hash_)), ("killed", "key"))
        row = yield self.db.fetchone(
            "t", "SELECT containment_reason, containment_changed_at, origin_agent_id "
                 "FROM key_containments WHERE key_hash = ?", (K,))
        self.assertEqual(tuple(row), ("gone rogue", 100, legacy.agent_id))
        self.assertEqual((yield self.log()),
                         [(legacy.agent_id, "kill", "key", K, "active", "killed")])
        # Learnt once: a second call changes nothing.
        self.assertEqual((yield self.agents.learn_key(named("legacy"), K, 160))[1], [])
        reactivated = yield self.store.contain(self.plain.agent_id, "reactivate", "ops", None,
                                               170)
        self.assertEqual(reactivated.scope, "key")
        self.assertEqual((yield self.status(named("legacy"))), ("active", None))

    @inlineCallbacks
    def test_learning_a_key_never_weakens_its_containment(self):
        legacy = yield self.agents.get_or_create(named("legacy"), "legacy", "observe", 20)
        yield self.store.contain(legacy.agent_id, "pause", "ops", None, 100, "key")
        yield self.store.contain(self.plain.agent_id, "kill", "ops", None, 110)
        _, changed = yield self.agents.learn_key(named("legacy"), K, 150)
        self.assertEqual(changed, [])
        self.assertEqual((yield self.status(named("legacy"))), ("killed", "key"))

    @inlineCallbacks
    def test_a_key_lifted_before_it_was_known_leaves_nothing_behind(self):
        legacy = yield self.agents.get_or_create(named("legacy"), "legacy", "observe", 20)
        yield self.store.contain(legacy.agent_id, "pause", "ops", None, 100, "key")
        resumed = yield self.store.contain(legacy.agent_id, "resume", "ops", None, 110)
        self.assertEqual((resumed.scope, resumed.key_known), ("key", False))
        self.assertEqual((yield self.status(named("legacy"))), ("active", None))
        _, changed = yield self.agents.learn_key(named("legacy"), K, 150)
        self.assertEqual(changed, [])
        self.assertEqual((yield self.status(K)), ("active", None))
        self.assertEqual([r[3] for r in (yield self.log())], [K, K])

    @inlineCallbacks
    def test_agents_cached_before_a_key_kill_elsewhere_are_dropped_by_the_next_poll(self):
        clock = Clock()
        clock.advance(1)
        kv = MemoryKeyValueStore(clock)
        directory = PersistentAgentDirectory(clock, self.agents, KVCache(kv, "", 300))
        names = [f"n{i}" for i in range(6)]
        cached = yield gatherResults([directory.resolve(named(n), n, K) for n in names])
        self.assertEqual({effective_containment(a) for a in cached}, {("active", None)})
        # Another replica, on its own pool and cache, kills the key.
        yield EnforcementStore(self.open_database()).contain(self.plain.agent_id, "kill",
                                                             "ops", None, 5000)
        stale = yield directory.resolve(named("n0"), "n0", K)
        self.assertEqual(effective_containment(stale), ("active", None))  # the cache
        yield directory.drop_changed()
        held = yield gatherResults([directory.resolve(named(n), n, K) for n in names])
        self.assertEqual({effective_containment(a) for a in held}, {("killed", "key")})
        # A name first used now is held from its first call.
        late = yield directory.resolve(named("late"), "late", K)
        self.assertEqual(effective_containment(late), ("killed", "key"))


    @inlineCallbacks
    def test_a_cached_agent_without_its_key_learns_it_and_drops_its_siblings(self):
        clock = Clock()
        clock.advance(1)
        directory = PersistentAgentDirectory(clock, self.agents,
                                             KVCache(MemoryKeyValueStore(clock), "", 300))
        legacy = yield self.agents.get_or_create(named("legacy"), "legacy", "observe", 20)
        plain = yield directory.resolve(K, None, K)
        cached = yield directory.resolve(named("legacy"), "legacy")  # no key: not learnt
        self.assertEqual((plain.key_hash, cached.key_hash), (K, None))
        yield self.store.contain(legacy.agent_id, "kill", "ops", None, 5000)
        # Its next call carries the key: the cached entry without one is not trusted, the
        # key is learnt, the kill moves to the key, and the key's cached agents are dropped
        # at once (no poll).
        learnt = yield directory.resolve(named("legacy"), "legacy", K)
        self.assertEqual((learnt.key_hash, effective_containment(learnt)),
                         (K, ("killed", "key")))
        plain = yield directory.resolve(K, None, K)
        self.assertEqual(effective_containment(plain), ("killed", "key"))


class MigrationBackfillTests:
    """0005 applied to a database that already has agents."""

    engine = ""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.url = new_database_url(self.engine, self.tmp)
        self.db = Database(reactor, self.url)
        self.db.start()

    def tearDown(self) -> None:
        self.db.close()
        discard_database_url(self.url)
        shutil.rmtree(self.tmp, ignore_errors=True)

    @inlineCallbacks
    def test_plain_agents_get_their_key_named_ones_wait_for_their_next_call(self):
        directory = self.tmp / "migrations"
        directory.mkdir()
        shipped = sorted(migrations_dir().glob("*.sql"))
        for path in shipped:
            if int(path.name[:4]) < 5:
                shutil.copy(path, directory)
        yield migrate(self.db, 1, directory)
        yield self.db.execute(
            "t", "INSERT INTO agents (id, agent_hash, name, created_at, updated_at) VALUES "
                 "('smolt-plain', ?, NULL, 1, 1), ('smolt-named', ?, 'x', 1, 1)",
            (K, named("x")))
        for path in shipped:
            shutil.copy(path, directory)
        applied = yield migrate(self.db, 2, directory)
        self.assertIn("0005_key_containment", applied)
        rows = yield self.db.fetchall("t", "SELECT id, key_hash, pending_key_status "
                                           "FROM agents ORDER BY id")
        self.assertEqual([tuple(r) for r in rows],
                         [("smolt-named", None, None), ("smolt-plain", K, None)])
        plain = yield AgentStore(self.db).get_by_hash(K)
        self.assertEqual((plain.key_hash, effective_containment(plain)), (K, ("active", None)))
        # The named agent's next call tells its key.
        fresh, _ = yield AgentStore(self.db).learn_key(named("x"), K, 3)
        self.assertEqual(fresh.key_hash, K)
        self.assertEqual((yield migrate(self.db, 4, directory)), [])


class SQLiteKeyContainmentTests(KeyContainmentTests, unittest.TestCase):
    engine = "sqlite"


class PostgresKeyContainmentTests(KeyContainmentTests, unittest.TestCase):
    engine = "postgresql"


class SQLiteMigrationBackfillTests(MigrationBackfillTests, unittest.TestCase):
    engine = "sqlite"


class PostgresMigrationBackfillTests(MigrationBackfillTests, unittest.TestCase):
    engine = "postgresql"

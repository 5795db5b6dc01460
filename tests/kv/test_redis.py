"""The Redis store: the shared contract on the environment's Redis, and Redis going away
and coming back under a live store.

The outage tests give the store a ``task.Clock``: its own bound on a command fires only
when the test advances that clock, so "failed without waiting" is shown by cause (the
clock stood still and the failure names no timeout), not by timing a wall clock.
txredisapi's reply timeout stays on the real reactor; a failure it causes says "no reply
within". Without Redis (or redis-server) these tests skip, and fail under ``CI``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial import unittest

from mnemomd.kv import (
    PREFIX,
    KVCache,
    KVUnavailableError,
    RedisKeyValueStore,
    make_kv_store,
    readiness_check,
)
from mnemomd.ops.dependency import DependencyState
from mnemomd.ops.metrics import GatewayMetrics
from tests.fakes.redisserver import REDIS_HOST, REDIS_PORT, RedisServer, require_shared_redis
from tests.kv.contract import KeyValueContract, count
from tests.support import captured_logs, poll, succeeds


class RedisKeyValueTests(KeyValueContract, unittest.TestCase):
    """The contract against the Redis server of the test environment."""

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        self.url = require_shared_redis()
        self.namespace = f"test-kv-{uuid.uuid4().hex}:"
        self.metrics = GatewayMetrics(process_collectors=False)
        self.store = RedisKeyValueStore(reactor, f"{self.url}/0", None, self.metrics)
        self.raw = yield txredisapi.Connection(REDIS_HOST, REDIS_PORT, reconnect=False,
                                               charset=None, convertNumbers=False)

    @inlineCallbacks
    def tearDown(self):
        keys = yield self.stored_keys()
        if keys:
            yield self.raw.delete(list(keys))
        yield self.raw.disconnect()
        yield self.store.close()

    def expire(self, key, ttl):
        def gone():
            return self.raw.exists(PREFIX + key).addCallback(lambda n: n == 0)

        return poll(gone, ttl + 5, f"{key} to expire")

    @inlineCallbacks
    def remaining_ttl(self, key):
        ms = yield self.raw.execute_command("PTTL", PREFIX + key)
        return None if ms < 0 else ms / 1000

    @inlineCallbacks
    def stored_keys(self):
        found, cursor = set(), 0
        while True:
            cursor, batch = yield self.raw.scan(cursor, f"{PREFIX}{self.namespace}*", 1000)
            found.update(k.decode() for k in batch)
            if int(cursor) == 0:
                return found

    @inlineCallbacks
    def test_raw_key_is_prefixed(self):
        yield self.store.set(self.k("raw"), b"value")
        self.assertEqual((yield self.raw.get(PREFIX + self.k("raw"))), b"value")
        self.assertEqual((yield self.raw.exists(self.k("raw"))), 0)

    @inlineCallbacks
    def test_make_kv_store_with_url_is_redis(self):
        store = make_kv_store(reactor, self.url, None, self.metrics)
        self.addCleanup(store.close)
        self.assertEqual(store.kind, "redis")
        self.assertIsInstance((yield store.ping()), float)


# --- Redis going away and coming back ---------------------------------------------------------


def timed_out(error: BaseException) -> bool:
    """Whether a store failure was a timeout (the store's own or txredisapi's)."""
    return " within " in str(error)


class RedisOutageTests(unittest.TestCase):
    """A private redis-server, stopped, frozen and restarted under a live store."""

    COMMAND_TIMEOUT = 0.3
    #: The store's own bound on a command: a little longer than the reply timeout.
    BOUND = COMMAND_TIMEOUT + 0.25
    timeout = 30

    def setUp(self):
        self.server = RedisServer()
        self.addCleanup(self.server.cleanup)
        self.clock = Clock()
        self.metrics = GatewayMetrics(process_collectors=False)

    def start_server(self, *extra: str) -> Deferred:
        self.server.start(*extra)
        return poll(self.server.listening, 10, "redis-server to start")

    def make_store(self, url: str | None = None, password: str | None = None,
                   pool_size: int = 2) -> RedisKeyValueStore:
        store = RedisKeyValueStore(self.clock, url or self.server.url, password,
                                   self.metrics, command_timeout=self.COMMAND_TIMEOUT,
                                   pool_size=pool_size)
        self.addCleanup(store.close)
        return store

    @inlineCallbacks
    def error_of(self, make: Callable[[], Deferred]) -> Any:
        """The KVUnavailableError ``make()`` fails with (it must not succeed)."""
        with self.assertRaises(KVUnavailableError) as caught:
            yield make()
        return caught.exception

    @inlineCallbacks
    def assert_fails_without_waiting(self, make: Callable[[], Deferred]):
        """``make()`` fails as unavailable, and not because a timeout ran out: the store's
        clock never moves here and the failure names no timeout."""
        error = yield self.error_of(make)
        self.assertFalse(timed_out(error), str(error))

    @inlineCallbacks
    def test_store_fails_fast_while_down_and_recovers_on_its_own(self):
        logs = captured_logs(self, "mnemomd.kv")
        yield self.start_server()
        store = self.make_store()
        cache = KVCache(store, "agents", 300)
        yield store.set("k", b"v")
        yield cache.set_json("a1", {"mode": "enforce"})
        self.assertEqual((yield cache.get_json("a1")), {"mode": "enforce"})

        self.server.stop()
        for _ in range(3):
            yield self.assert_fails_without_waiting(lambda: store.get("k"))
        # Known down: later commands fail at once instead of waiting for the timeout.
        self.failureResultOf(store.get("k"), KVUnavailableError)
        yield self.assert_fails_without_waiting(lambda: store.set_if_absent("lease", b"me", 10))
        yield self.assert_fails_without_waiting(store.ping)
        self.assertIsNone((yield cache.get_json("a1")))
        self.assertIsNone((yield cache.set_json("a1", {"mode": "observe"})))
        self.assertFalse(store.available)
        ok = yield readiness_check(store)().addCallbacks(lambda r: r[0], lambda _: False)
        self.assertFalse(ok)
        self.assertGreaterEqual(count(self.metrics, "get", "error"), 4)
        self.assertEqual(count(self.metrics, "set", "error"), 1)
        self.assertEqual(len(logs.at(LogLevel.warn)), 1)  # the store, once; not the cache

        yield self.start_server()
        yield poll(lambda: succeeds(store.ping), 15, "the same store to reconnect")
        self.assertTrue(store.available)
        self.assertIsNone((yield store.get("k")))  # the server kept nothing
        yield store.set("k", b"again")
        self.assertEqual((yield store.get("k")), b"again")
        yield cache.set_json("a1", {"mode": "observe"})
        self.assertEqual((yield cache.get_json("a1")), {"mode": "observe"})
        logged = json.dumps([str(e) for e in logs.events])
        self.assertNotIn("enforce", logged)
        self.assertNotIn("observe", logged)

    @inlineCallbacks
    def test_outage_tracker_hears_every_command_and_logs_one_line_each_way(self):
        logs = captured_logs(self, "mnemomd")
        yield self.start_server()
        state = DependencyState("redis", self.clock, (KVUnavailableError,))
        store = RedisKeyValueStore(self.clock, self.server.url, None, self.metrics,
                                   command_timeout=self.COMMAND_TIMEOUT, state=state)
        self.addCleanup(store.close)
        self.addCleanup(state.stop)
        yield store.set("k", b"v")
        self.server.stop()
        for _ in range(3):
            yield self.error_of(lambda: store.get("k"))
        self.assertTrue(state.down)
        self.assertEqual(state.failures, 3)
        [down] = logs.at(LogLevel.warn)
        self.assertEqual(down["dependency"], "redis")
        yield self.start_server()
        yield poll(lambda: succeeds(store.ping), 15, "the store to reconnect")
        self.assertFalse(state.down)
        [back] = [e for e in logs.at(LogLevel.info) if e.get("dependency") == "redis"]
        self.assertGreaterEqual(back["failures"], 3)
        self.assertEqual(len(logs.at(LogLevel.warn)), 1, "no line per failed command")

    @inlineCallbacks
    def test_unresponsive_server_times_out_and_connection_is_replaced(self):
        yield self.start_server()
        store = self.make_store(pool_size=1)
        yield store.set("k", b"v")
        self.assertEqual(store.connections, 1)
        self.server.pause()
        # The reply timeout ends the command; the store's own bound never had to fire.
        error = yield self.error_of(lambda: store.get("k"))
        self.assertEqual(str(error),
                         f"Redis unavailable: no reply within {self.COMMAND_TIMEOUT:g} s")
        # The silent connection was dropped rather than kept, so the next command fails at
        # once instead of waiting for a timeout of its own.
        yield poll(lambda: store.connections == 0, 10, "the silent connection to be dropped")
        self.failureResultOf(store.get("k"), KVUnavailableError)
        self.server.resume()
        yield poll(lambda: succeeds(lambda: store.get("k")), 15, "the store to reconnect")
        self.assertEqual((yield store.get("k")), b"v")

    def test_store_that_never_connected_fails_at_its_bound_then_at_once(self):
        store = self.make_store()  # nothing listens on the server's port yet
        waiting = store.get("k")
        self.clock.advance(self.BOUND - 0.01)
        self.assertNoResult(waiting)
        self.clock.advance(0.01)
        failure = self.failureResultOf(waiting, KVUnavailableError)
        self.assertTrue(timed_out(failure.value), failure.getErrorMessage())
        # Known down now: the next command does not wait for the bound again.
        failure = self.failureResultOf(store.get("k"), KVUnavailableError)
        self.assertFalse(timed_out(failure.value), failure.getErrorMessage())
        cache = KVCache(store, "agents", 300)
        self.assertIsNone(self.successResultOf(cache.get_json("a1")))

    @inlineCallbacks
    def test_unix_socket(self):
        yield self.start_server()
        store = self.make_store(f"unix://{self.server.socket_path}?db=2")
        yield store.set("k", b"v", ttl=30)
        self.assertEqual((yield store.get("k")), b"v")
        tcp = self.make_store(f"{self.server.url}/2")
        self.assertEqual((yield tcp.get("k")), b"v")

    @inlineCallbacks
    def test_password_argument_overrides_the_url(self):
        logs = captured_logs(self, "mnemomd.kv")
        yield self.start_server("--requirepass", "s3cret-pw")
        store = self.make_store(f"redis://:wrong-pw@127.0.0.1:{self.server.port}", "s3cret-pw")
        yield store.set("k", b"v")
        self.assertEqual((yield store.get("k")), b"v")
        refused = self.make_store(self.server.url, "wrong-pw")
        first = refused.get("k")
        yield poll(lambda: logs.at(LogLevel.error), 5, "the refusal to be logged")
        self.clock.advance(self.BOUND)  # the command sent before the refusal was known
        error = yield self.error_of(lambda: first)
        self.assertNotIn("wrong-pw", str(error))
        failure = self.failureResultOf(refused.get("k"), KVUnavailableError)
        self.assertIn("refused", failure.getErrorMessage())
        self.assertNotIn("pw", json.dumps([str(e) for e in logs.events]))

"""Key-value stores: one contract for memory and Redis, Redis outages, and KVCache."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import (
    Deferred,
    gatherResults,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from mnemomd.kv import (
    PREFIX,
    KVCache,
    KVError,
    KVUnavailableError,
    MemoryKeyValueStore,
    RedisKeyValueStore,
    make_kv_store,
    parse_redis_target,
    parse_redis_url,
    readiness_check,
)
from mnemomd.ops.metrics import GatewayMetrics

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: Short enough to keep the Redis TTL tests fast, long enough to read a key back first.
SHORT_TTL = 0.3


def can_connect(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@inlineCallbacks
def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02):
    """Wait until ``check()`` (a bool or a Deferred of one) is true, or fail after timeout."""
    deadline = reactor.seconds() + timeout
    while True:
        if (yield maybeDeferred(check)):
            return
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        yield deferLater(reactor, interval, lambda: None)


def succeeds(make: Callable[[], Deferred]) -> Deferred:
    """True if the Deferred from ``make()`` succeeds, False if it fails."""
    return make().addCallbacks(lambda _: True, lambda _: False)


def count(metrics: GatewayMetrics, operation: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "gateway_cache_operations_total", {"operation": operation, "result": result})
    return value or 0.0


class CapturedLogs:
    """Events logged by mnemomd.kv while a test runs."""

    def __init__(self, test: unittest.TestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.observe)
        test.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event: dict) -> None:
        if event.get("log_namespace") == "mnemomd.kv":
            self.events.append(event)

    def at(self, level: LogLevel) -> list[dict]:
        return [e for e in self.events if e.get("log_level") == level]


# --- the contract -----------------------------------------------------------------------------


class KeyValueContract:
    """Behaviour both stores must share. Subclasses provide the store and time control."""

    store: Any
    metrics: GatewayMetrics

    def k(self, name: str) -> str:
        """A key in this test's own namespace (the store adds ``mnemom:``)."""
        return self.namespace + name

    def expire(self, key: str, ttl: float) -> Deferred:
        """Fires once ``key``, set with ``ttl`` just now, has expired."""
        raise NotImplementedError

    def remaining_ttl(self, key: str) -> Deferred:
        """Seconds left on ``key`` (None: no expiry or no key), read behind the store."""
        raise NotImplementedError

    def stored_keys(self) -> Deferred:
        """Full keys of this test's namespace as they are stored."""
        raise NotImplementedError

    @inlineCallbacks
    def test_get_set_delete(self):
        store = self.store
        self.assertIsNone((yield store.get(self.k("a"))))
        self.assertIsNone((yield store.set(self.k("a"), b"one")))
        self.assertEqual((yield store.get(self.k("a"))), b"one")
        yield store.set(self.k("a"), b"two")
        yield store.set(self.k("b"), b"bee")
        self.assertEqual((yield store.get(self.k("a"))), b"two")
        deleted = yield store.delete(self.k("a"), self.k("b"), self.k("missing"))
        self.assertEqual(deleted, 2)
        self.assertIsNone((yield store.get(self.k("a"))))
        self.assertEqual((yield store.delete()), 0)

    @inlineCallbacks
    def test_values_are_bytes_as_given(self):
        for name, value in (("bin", b"\x00\xff\r\nbinary"), ("num", b"123"), ("empty", b""),
                            ("float", b"1.5"), ("text", "héllo".encode())):
            yield self.store.set(self.k(name), value)
            got = yield self.store.get(self.k(name))
            self.assertEqual((type(got), got), (bytes, value), name)

    @inlineCallbacks
    def test_ttl_expiry(self):
        key = self.k("ttl")
        yield self.store.set(key, b"v", ttl=SHORT_TTL)
        self.assertEqual((yield self.store.get(key)), b"v")
        yield self.expire(key, SHORT_TTL)
        self.assertIsNone((yield self.store.get(key)))
        self.assertEqual((yield self.stored_keys()), set())

    @inlineCallbacks
    def test_plain_set_removes_an_earlier_ttl(self):
        key = self.k("ttl")
        yield self.store.set(key, b"v", ttl=100)
        remaining = yield self.remaining_ttl(key)
        self.assertTrue(99 < remaining <= 100, remaining)
        yield self.store.set(key, b"w")
        self.assertIsNone((yield self.remaining_ttl(key)))

    @inlineCallbacks
    def test_set_if_absent_one_winner(self):
        key = self.k("lease")
        attempts = [self.store.set_if_absent(key, f"owner-{i}".encode(), 30) for i in range(20)]
        results = yield gatherResults(attempts)
        self.assertEqual(results.count(True), 1)
        winner = f"owner-{results.index(True)}".encode()
        self.assertEqual((yield self.store.get(key)), winner)
        self.assertFalse((yield self.store.set_if_absent(key, b"late", 30)))
        self.assertEqual((yield self.store.get(key)), winner)

    @inlineCallbacks
    def test_set_if_absent_again_after_expiry(self):
        key = self.k("lease")
        self.assertTrue((yield self.store.set_if_absent(key, b"first", SHORT_TTL)))
        yield self.expire(key, SHORT_TTL)
        self.assertTrue((yield self.store.set_if_absent(key, b"second", 30)))
        self.assertEqual((yield self.store.get(key)), b"second")

    @inlineCallbacks
    def test_incr(self):
        key = self.k("counter")
        self.assertEqual((yield self.store.incr(key)), 1)
        self.assertEqual((yield self.store.incr(key)), 2)
        self.assertEqual((yield self.store.get(key)), b"2")
        self.assertIsNone((yield self.remaining_ttl(key)))

    @inlineCallbacks
    def test_incr_ttl_applies_when_created_only(self):
        key = self.k("window")
        self.assertEqual((yield self.store.incr(key, ttl=100)), 1)
        first = yield self.remaining_ttl(key)
        self.assertTrue(99 < first <= 100, first)
        self.assertEqual((yield self.store.incr(key, ttl=1000)), 2)
        later = yield self.remaining_ttl(key)
        self.assertTrue(later <= 100, later)

    @inlineCallbacks
    def test_incr_starts_over_after_expiry(self):
        key = self.k("window")
        yield self.store.incr(key, ttl=SHORT_TTL)
        self.assertEqual((yield self.store.incr(key, ttl=SHORT_TTL)), 2)
        yield self.expire(key, SHORT_TTL)
        self.assertEqual((yield self.store.incr(key, ttl=SHORT_TTL)), 1)

    @inlineCallbacks
    def test_incr_refuses_non_integer(self):
        yield self.store.set(self.k("text"), b"abc")
        with self.assertRaises(KVError):
            yield self.store.incr(self.k("text"))
        self.assertEqual((yield self.store.get(self.k("text"))), b"abc")

    @inlineCallbacks
    def test_compare_and_delete(self):
        key = self.k("lease")
        yield self.store.set(key, b"mine", ttl=30)
        self.assertFalse((yield self.store.compare_and_delete(key, b"theirs")))
        self.assertEqual((yield self.store.get(key)), b"mine")
        self.assertTrue((yield self.store.compare_and_delete(key, b"mine")))
        self.assertIsNone((yield self.store.get(key)))
        self.assertFalse((yield self.store.compare_and_delete(key, b"mine")))

    @inlineCallbacks
    def test_extend_if_equal(self):
        key = self.k("lease")
        yield self.store.set(key, b"mine", ttl=1)
        self.assertFalse((yield self.store.extend_if_equal(key, b"theirs", 100)))
        self.assertTrue((yield self.remaining_ttl(key)) <= 1)
        self.assertTrue((yield self.store.extend_if_equal(key, b"mine", 100)))
        remaining = yield self.remaining_ttl(key)
        self.assertTrue(99 < remaining <= 100, remaining)
        self.assertEqual((yield self.store.get(key)), b"mine")
        self.assertFalse((yield self.store.extend_if_equal(self.k("none"), b"mine", 100)))
        self.assertIsNone((yield self.store.get(self.k("none"))))

    @inlineCallbacks
    def test_lease_taken_over_after_expiry_is_not_released_by_old_owner(self):
        key = self.k("lease")
        self.assertTrue((yield self.store.set_if_absent(key, b"a", SHORT_TTL)))
        self.assertFalse((yield self.store.set_if_absent(key, b"b", SHORT_TTL)))
        yield self.expire(key, SHORT_TTL)
        self.assertFalse((yield self.store.extend_if_equal(key, b"a", 30)))
        self.assertTrue((yield self.store.set_if_absent(key, b"b", 30)))
        self.assertFalse((yield self.store.compare_and_delete(key, b"a")))
        self.assertEqual((yield self.store.get(key)), b"b")

    @inlineCallbacks
    def test_keys_stored_under_prefix(self):
        yield self.store.set(self.k("p"), b"v")
        yield self.store.incr(self.k("n"), ttl=30)
        self.assertEqual((yield self.stored_keys()),
                         {PREFIX + self.k("p"), PREFIX + self.k("n")})

    @inlineCallbacks
    def test_operations_counted(self):
        m = self.metrics
        yield self.store.get(self.k("x"))
        yield self.store.set(self.k("x"), b"1")
        yield self.store.get(self.k("x"))
        yield self.store.get(self.k("x"))
        yield self.store.incr(self.k("x"))
        yield self.store.set(self.k("t"), b"text")
        with self.assertRaises(KVError):
            yield self.store.incr(self.k("t"))
        yield self.store.delete(self.k("x"))
        self.assertEqual((count(m, "get", "miss"), count(m, "get", "hit")), (1, 2))
        self.assertEqual((count(m, "set", "ok"), count(m, "incr", "ok")), (2, 1))
        self.assertEqual((count(m, "incr", "error"), count(m, "delete", "ok")), (1, 1))

    @inlineCallbacks
    def test_bad_arguments_fail_the_deferred_and_count_as_errors(self):
        for ttl in (0, -1, float("nan"), float("inf")):
            with self.assertRaises(ValueError):
                yield self.store.set(self.k("x"), b"v", ttl=ttl)
        with self.assertRaises(TypeError):
            yield self.store.set(self.k("x"), "not bytes")
        with self.assertRaises(TypeError):
            yield self.store.get(b"not str")
        self.assertEqual(count(self.metrics, "set", "error"), 5)
        self.assertIsNone((yield self.store.get(self.k("x"))))

    @inlineCallbacks
    def test_ping_and_readiness(self):
        latency = yield self.store.ping()
        self.assertIsInstance(latency, float)
        self.assertGreaterEqual(latency, 0.0)
        ok, _ = yield readiness_check(self.store)()
        self.assertTrue(ok)

    @inlineCallbacks
    def test_closed_store_refuses(self):
        yield self.store.close()
        with self.assertRaises(KVError):
            yield self.store.get(self.k("x"))
        yield self.store.close()

    @inlineCallbacks
    def test_cache_round_trip(self):
        cache = KVCache(self.store, self.k("agents"), 300)
        self.assertIsNone((yield cache.get_json("a1")))
        value = {"name": "smolt", "mode": "enforce", "values": ["honesty", "safety"], "n": 3}
        yield cache.set_json("a1", value)
        self.assertEqual((yield cache.get_json("a1")), value)
        self.assertEqual((yield self.stored_keys()), {f"{PREFIX}{self.k('agents')}:a1"})
        remaining = yield self.remaining_ttl(f"{self.k('agents')}:a1")
        self.assertTrue(299 < remaining <= 300, remaining)
        yield cache.invalidate("a1")
        self.assertIsNone((yield cache.get_json("a1")))

    @inlineCallbacks
    def test_cache_treats_foreign_value_as_miss(self):
        cache = KVCache(self.store, self.k("agents"), 300)
        yield self.store.set(self.k("agents:a1"), b"\xff not json")
        self.assertIsNone((yield cache.get_json("a1")))


class MemoryKeyValueTests(KeyValueContract, unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.metrics = GatewayMetrics(process_collectors=False)
        self.store = MemoryKeyValueStore(self.clock, self.metrics)
        self.namespace = "t:"

    def expire(self, key, ttl):
        self.clock.advance(ttl)
        return succeed(None)

    def remaining_ttl(self, key):
        return maybeDeferred(self.store.remaining_ttl, key)

    def stored_keys(self):
        return maybeDeferred(lambda: set(self.store.keys()))

    @inlineCallbacks
    def test_expiry_boundary_follows_the_clock_only(self):
        yield self.store.set("k", b"v", ttl=10)
        yield self.store.incr("n", ttl=10)
        self.clock.advance(9.999)
        self.assertEqual((yield self.store.get("k")), b"v")
        self.assertEqual((yield self.store.incr("n", ttl=10)), 2)
        self.clock.advance(0.001)
        self.assertIsNone((yield self.store.get("k")))
        self.assertEqual((yield self.store.incr("n", ttl=10)), 1)

    @inlineCallbacks
    def test_writes_purge_expired_keys(self):
        for i in range(500):
            yield self.store.set(f"s{i}", b"v", ttl=1)
        self.assertEqual(self.store.held, 500)
        self.clock.advance(2)
        yield self.store.set("live", b"v")
        self.assertEqual(self.store.held, 1)

    @inlineCallbacks
    def test_rewriting_a_key_with_ttl_keeps_memory_bounded(self):
        for _ in range(5000):
            yield self.store.set("hot", b"v", ttl=60)
        self.assertEqual(self.store.held, 1)
        self.assertLess(len(self.store._expiries), 200)

    def test_make_kv_store_without_url_is_memory(self):
        store = make_kv_store(self.clock, None, None, self.metrics)
        self.assertEqual(store.kind, "memory")
        ok, detail = readiness_check(store)().result
        self.assertEqual((ok, detail), (True, "in-memory (single node)"))


class RedisKeyValueTests(KeyValueContract, unittest.TestCase):
    """The contract against the Redis server of the test environment."""

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        if not can_connect(REDIS_HOST, REDIS_PORT):
            raise unittest.SkipTest(f"no Redis at {REDIS_HOST}:{REDIS_PORT}")
        self.namespace = f"test-kv-{uuid.uuid4().hex}:"
        self.metrics = GatewayMetrics(process_collectors=False)
        self.store = RedisKeyValueStore(reactor, f"redis://{REDIS_HOST}:{REDIS_PORT}/0", None,
                                        self.metrics)
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
        store = make_kv_store(reactor, f"redis://{REDIS_HOST}:{REDIS_PORT}", None, self.metrics)
        self.addCleanup(store.close)
        self.assertEqual(store.kind, "redis")
        self.assertIsInstance((yield store.ping()), float)


# --- Redis going away and coming back ---------------------------------------------------------


class RedisOutageTests(unittest.TestCase):
    """A private redis-server, stopped and restarted under a live store."""

    COMMAND_TIMEOUT = 0.3
    timeout = 30

    def setUp(self):
        if shutil.which("redis-server") is None:
            raise unittest.SkipTest("redis-server not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="kv-redis-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.port = free_port()
        self.socket_path = self.dir / "redis.sock"
        self.server: subprocess.Popen | None = None
        self.addCleanup(self.stop_server)
        self.metrics = GatewayMetrics(process_collectors=False)

    def start_server(self, *extra: str) -> Deferred:
        self.server = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--unixsocket",
             str(self.socket_path), "--unixsocketperm", "700", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return poll(lambda: can_connect("127.0.0.1", self.port), 10, "redis-server to start")

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGCONT)
            self.server.terminate()
            self.server.wait(10)

    def make_store(self, url: str | None = None, password: str | None = None,
                   pool_size: int = 2):
        store = RedisKeyValueStore(reactor, url or f"redis://127.0.0.1:{self.port}", password,
                                   self.metrics, command_timeout=self.COMMAND_TIMEOUT,
                                   pool_size=pool_size)
        self.addCleanup(store.close)
        return store

    @inlineCallbacks
    def assert_fails_fast(self, make: Callable[[], Deferred], within: float | None = None):
        start = reactor.seconds()
        with self.assertRaises(KVUnavailableError):
            yield make()
        self.assertLess(reactor.seconds() - start, within or self.COMMAND_TIMEOUT + 0.5)

    @inlineCallbacks
    def test_store_fails_fast_while_down_and_recovers_on_its_own(self):
        logs = CapturedLogs(self)
        yield self.start_server()
        store = self.make_store()
        cache = KVCache(store, "agents", 300)
        yield store.set("k", b"v")
        yield cache.set_json("a1", {"mode": "enforce"})
        self.assertEqual((yield cache.get_json("a1")), {"mode": "enforce"})

        self.stop_server()
        for _ in range(3):
            yield self.assert_fails_fast(lambda: store.get("k"))
        # Known down: later commands fail at once instead of waiting for the timeout.
        self.failureResultOf(store.get("k"), KVUnavailableError)
        yield self.assert_fails_fast(lambda: store.set_if_absent("lease", b"me", 10))
        yield self.assert_fails_fast(store.ping)
        self.assertIsNone((yield cache.get_json("a1")))
        self.assertIsNone((yield cache.set_json("a1", {"mode": "observe"})))
        self.assertFalse(store.available)
        ok = yield readiness_check(store)().addCallbacks(lambda r: r[0], lambda _: False)
        self.assertFalse(ok)
        self.assertGreaterEqual(count(self.metrics, "get", "error"), 4)
        self.assertEqual(count(self.metrics, "set", "error"), 1)
        self.assertEqual(len(logs.at(LogLevel.warn)), 2)  # store and cache, once each

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
    def test_unresponsive_server_times_out_and_connection_is_replaced(self):
        yield self.start_server()
        store = self.make_store(pool_size=1)
        yield store.set("k", b"v")
        self.server.send_signal(signal.SIGSTOP)
        yield self.assert_fails_fast(lambda: store.get("k"))
        # The silent connection was dropped rather than kept: the next command does not
        # wait for a timeout of its own.
        yield self.assert_fails_fast(lambda: store.get("k"), within=self.COMMAND_TIMEOUT)
        self.server.send_signal(signal.SIGCONT)
        yield poll(lambda: succeeds(lambda: store.get("k")), 15, "the store to reconnect")
        self.assertEqual((yield store.get("k")), b"v")

    @inlineCallbacks
    def test_store_that_never_connected_fails_fast(self):
        store = self.make_store()
        yield self.assert_fails_fast(lambda: store.get("k"))
        yield self.assert_fails_fast(lambda: store.get("k"))
        cache = KVCache(store, "agents", 300)
        self.assertIsNone((yield cache.get_json("a1")))

    @inlineCallbacks
    def test_unix_socket(self):
        yield self.start_server()
        store = self.make_store(f"unix://{self.socket_path}?db=2")
        yield store.set("k", b"v", ttl=30)
        self.assertEqual((yield store.get("k")), b"v")
        tcp = self.make_store(f"redis://127.0.0.1:{self.port}/2")
        self.assertEqual((yield tcp.get("k")), b"v")

    @inlineCallbacks
    def test_password_argument_overrides_the_url(self):
        logs = CapturedLogs(self)
        yield self.start_server("--requirepass", "s3cret-pw")
        store = self.make_store(f"redis://:wrong-pw@127.0.0.1:{self.port}", "s3cret-pw")
        yield store.set("k", b"v")
        self.assertEqual((yield store.get("k")), b"v")
        refused = self.make_store(f"redis://127.0.0.1:{self.port}", "wrong-pw")
        with self.assertRaises(KVUnavailableError) as caught:
            yield refused.get("k")
        self.assertNotIn("wrong-pw", str(caught.exception))
        yield poll(lambda: logs.at(LogLevel.error), 5, "the refusal to be logged")
        failure = self.failureResultOf(refused.get("k"), KVUnavailableError)
        self.assertIn("refused", failure.getErrorMessage())
        self.assertNotIn("pw", json.dumps([str(e) for e in logs.events]))


# --- KVCache over a failing store -------------------------------------------------------------


class FlakyStore(MemoryKeyValueStore):
    """A memory store that can be switched to failing like an unreachable Redis."""

    broken = False

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_do_") and object.__getattribute__(self, "broken"):
            def fail(*args: Any) -> None:
                raise KVUnavailableError("Redis unavailable: Lost connection")
            return fail
        return object.__getattribute__(self, name)


class KVCacheFailureTests(unittest.TestCase):
    def setUp(self):
        self.metrics = GatewayMetrics(process_collectors=False)
        self.store = FlakyStore(Clock(), self.metrics)
        self.cache = KVCache(self.store, "agents", 300)
        self.logs = CapturedLogs(self)

    def warnings(self) -> list[dict]:
        return self.logs.at(LogLevel.warn)

    @inlineCallbacks
    def test_errors_become_misses_logged_once_per_streak(self):
        yield self.cache.set_json("a1", {"secret": "prompt text"})
        self.store.broken = True
        self.assertIsNone((yield self.cache.get_json("a1")))
        self.assertIsNone((yield self.cache.get_json("a1")))
        self.assertIsNone((yield self.cache.set_json("a1", {"secret": "prompt text"})))
        self.assertEqual(count(self.metrics, "get", "error"), 2)
        self.assertEqual(count(self.metrics, "set", "error"), 1)
        self.assertEqual(len(self.warnings()), 1)

        self.store.broken = False
        self.assertEqual((yield self.cache.get_json("a1")), {"secret": "prompt text"})
        self.assertEqual(len(self.logs.at(LogLevel.info)), 1)
        self.store.broken = True
        self.assertIsNone((yield self.cache.get_json("a1")))
        self.assertEqual(len(self.warnings()), 2)
        self.assertNotIn("prompt text", json.dumps([str(e) for e in self.logs.events]))

    @inlineCallbacks
    def test_failed_invalidation_is_retried_and_hides_the_stale_entry(self):
        yield self.cache.set_json("a1", {"mode": "enforce"})
        self.store.broken = True
        self.assertIsNone((yield self.cache.invalidate("a1")))
        self.assertEqual(count(self.metrics, "delete", "error"), 1)
        self.store.broken = False
        self.assertIsNone((yield self.cache.get_json("a1")))
        self.assertIsNone((yield self.store.get("agents:a1")))
        yield self.cache.set_json("a1", {"mode": "observe"})
        self.assertEqual((yield self.cache.get_json("a1")), {"mode": "observe"})

    def test_unencodable_value_is_the_callers_error(self):
        self.failureResultOf(self.cache.set_json("a1", {"bad": object()}), TypeError)


# --- URL parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://localhost", ("localhost", 6379, 0, None)),
    ("redis://cache.internal:6380/3", ("cache.internal", 6380, 3, None)),
    ("redis://:p%40ss@10.0.0.5:6379/1", ("10.0.0.5", 6379, 1, "p@ss")),
    ("redis://default:pw@h", ("h", 6379, 0, "pw")),
    ("redis://[::1]:7000", ("::1", 7000, 0, None)),
    ("redis://h?db=4", ("h", 6379, 4, None)),
    ("REDIS://h/", ("h", 6379, 0, None)),
    ("unix:///run/redis/redis.sock", ("/run/redis/redis.sock", None, 0, None)),
    ("unix://:pw@/run/redis.sock?db=2", ("/run/redis.sock", None, 2, "pw")),
])
def test_parse_redis_url(url, expected):
    assert parse_redis_url(url) == expected


def test_parse_keeps_acl_username():
    target = parse_redis_target("redis://gateway:pw@h:6379/0")
    assert (target.username, target.password, target.unix) == ("gateway", "pw", False)


@pytest.mark.parametrize(("url", "message"), [
    ("rediss://:pw@h:6380", "TLS .* not supported.*tunnel"),
    ("http://h", "unsupported scheme 'http://'"),
    ("localhost:6379", "unsupported scheme"),
    ("", "empty"),
    ("redis://", "no host"),
    ("redis://h:notaport", "not a valid URL"),
    ("redis://h:0", "port"),
    ("redis://h/abc", "database number"),
    ("redis://h/1?db=2", "given twice"),
    ("redis://h?ssl=true", "unsupported query parameter.*ssl"),
    ("unix://host/path.sock", "socket path, not a host"),
    ("unix://", "absolute socket path"),
])
def test_parse_redis_url_refuses(url, message):
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url)


def test_parse_errors_never_show_the_password():
    for url in ("rediss://:hunter2@h", "redis://:hunter2@h/x", "ftp://:hunter2@h"):
        with pytest.raises(ValueError) as caught:
            parse_redis_url(url)
        assert "hunter2" not in str(caught.value)


def test_store_rejects_bad_url_at_construction():
    with pytest.raises(ValueError, match="TLS"):
        RedisKeyValueStore(reactor, "rediss://h", None, None)

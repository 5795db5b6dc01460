"""The behaviour both key-value stores share, written once and run against each.

A subclass provides the store, ``metrics``, a per-test key ``namespace`` and three ways to
look behind the store: how a key is made to expire, its remaining TTL, and the keys as
stored.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.logger import LogLevel

from mnemomd.kv import PREFIX, KVCache, KVError, KVUnavailableError, readiness_check
from mnemomd.kv.cache import MAX_UPDATE_ATTEMPTS
from mnemomd.ops.metrics import GatewayMetrics
from tests.support import captured_logs, poll

#: Short enough to keep the Redis TTL tests fast, long enough to read a key back first.
SHORT_TTL = 0.3


class HeldStore:
    """A store whose ``compare_and_set`` calls wait while ``holding``, so a test decides
    when each one reaches the real store: "both read before either writes" is set up,
    not hoped for. Everything else goes straight through."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.kind = store.kind
        self.holding = False
        self.held: list[tuple[tuple[Any, ...], Deferred]] = []
        self.fail_with: BaseException | None = None
        #: Another writer changes the key just before each compare_and_set.
        self.interfere = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def compare_and_set(self, *args: Any) -> Deferred:
        if self.fail_with is not None:
            return defer.fail(self.fail_with)
        if self.interfere:
            self.interfered = getattr(self, "interfered", 0) + 1
            return self.store.set(args[0], f"other-{self.interfered}".encode()) \
                .addCallback(lambda _: self.store.compare_and_set(*args))
        if not self.holding:
            return self.store.compare_and_set(*args)
        waiting: Deferred = Deferred()
        self.held.append((args, waiting))
        return waiting

    def release(self) -> Deferred:
        """Let the oldest held ``compare_and_set`` through; fires with its result once
        the real store answered and the caller's own callbacks ran."""
        args, waiting = self.held.pop(0)

        def done(result: Any) -> Any:
            waiting.callback(result)
            return result

        return self.store.compare_and_set(*args).addCallback(done)


def count(metrics: GatewayMetrics, operation: str, result: str) -> float:
    """``gateway_cache_operations_total`` for one operation and result."""
    value = metrics.registry.get_sample_value(
        "gateway_cache_operations_total", {"operation": operation, "result": result})
    return value or 0.0


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
    def test_get_many_in_order_with_misses_counted_per_key(self):
        store = self.store
        yield store.set(self.k("a"), b"one")
        yield store.set(self.k("c"), b"\x00three")
        before = count(self.metrics, "get", "hit"), count(self.metrics, "get", "miss")
        values = yield store.get_many(self.k("a"), self.k("b"), self.k("c"), self.k("a"))
        self.assertEqual(values, [b"one", None, b"\x00three", b"one"])
        self.assertEqual((count(self.metrics, "get", "hit") - before[0],
                          count(self.metrics, "get", "miss") - before[1]), (3, 1))
        self.assertEqual((yield store.get_many()), [])
        with self.assertRaises(TypeError):
            yield store.get_many(self.k("a"), 1)

    @inlineCallbacks
    def test_cache_reads_several_keys_at_once(self):
        cache = KVCache(self.store, self.k("c"), 300)
        yield cache.set_json("card", {"id": "ac-1"})
        yield self.store.set(self.k("c:foreign"), b"\xff not json")
        self.assertEqual((yield cache.get_json_many("card", "absent", "foreign")),
                         [{"id": "ac-1"}, None, None])

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
        with self.assertRaises(KVError):
            yield self.store.get_many(self.k("x"), self.k("y"))
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

    # -- compare_and_set and the optimistic update built on it ------------------------------

    @inlineCallbacks
    def test_compare_and_set_expecting_absent(self):
        key = self.k("cas")
        self.assertTrue((yield self.store.compare_and_set(key, None, b"first")))
        self.assertEqual((yield self.store.get(key)), b"first")
        self.assertFalse((yield self.store.compare_and_set(key, None, b"second")))
        self.assertEqual((yield self.store.get(key)), b"first")
        yield self.store.set(self.k("empty"), b"")
        self.assertFalse((yield self.store.compare_and_set(self.k("empty"), None, b"x")))
        self.assertEqual((yield self.store.get(self.k("empty"))), b"")

    @inlineCallbacks
    def test_compare_and_set_expecting_a_value(self):
        key = self.k("cas")
        self.assertFalse((yield self.store.compare_and_set(key, b"", b"x")))
        self.assertFalse((yield self.store.compare_and_set(key, b"v1", b"x")))
        self.assertIsNone((yield self.store.get(key)))
        yield self.store.set(key, b"\x00v1\xff")
        self.assertFalse((yield self.store.compare_and_set(key, b"\x00v1", b"x")))
        self.assertFalse((yield self.store.compare_and_set(key, b"\x00v1\xff ", b"x")))
        self.assertEqual((yield self.store.get(key)), b"\x00v1\xff")
        self.assertTrue((yield self.store.compare_and_set(key, b"\x00v1\xff", b"v2")))
        self.assertEqual((yield self.store.get(key)), b"v2")
        self.assertFalse((yield self.store.compare_and_set(key, b"\x00v1\xff", b"v3")))
        self.assertEqual((yield self.store.get(key)), b"v2")

    @inlineCallbacks
    def test_compare_and_set_ttl(self):
        key = self.k("cas")
        self.assertTrue((yield self.store.compare_and_set(key, None, b"a", ttl=100)))
        remaining = yield self.remaining_ttl(key)
        self.assertTrue(99 < remaining <= 100, remaining)
        self.assertTrue((yield self.store.compare_and_set(key, b"a", b"b", ttl=1000)))
        remaining = yield self.remaining_ttl(key)
        self.assertTrue(999 < remaining <= 1000, remaining)
        self.assertFalse((yield self.store.compare_and_set(key, b"a", b"c", ttl=5)))
        self.assertTrue(999 < (yield self.remaining_ttl(key)) <= 1000)
        self.assertTrue((yield self.store.compare_and_set(key, b"b", b"c")))  # like SET
        self.assertIsNone((yield self.remaining_ttl(key)))

    @inlineCallbacks
    def test_compare_and_set_after_expiry_sees_the_key_absent(self):
        key = self.k("cas")
        yield self.store.set(key, b"old", ttl=SHORT_TTL)
        yield self.expire(key, SHORT_TTL)
        self.assertFalse((yield self.store.compare_and_set(key, b"old", b"new")))
        self.assertTrue((yield self.store.compare_and_set(key, None, b"new", ttl=30)))
        self.assertEqual((yield self.store.get(key)), b"new")

    @inlineCallbacks
    def test_compare_and_set_one_winner_from_one_read(self):
        key = self.k("cas")
        yield self.store.set(key, b"v0")
        attempts = [self.store.compare_and_set(key, b"v0", f"v1-{i}".encode(), 30)
                    for i in range(20)]
        results = yield gatherResults(attempts)
        self.assertEqual(results.count(True), 1)
        self.assertEqual((yield self.store.get(key)), f"v1-{results.index(True)}".encode())
        self.assertEqual(count(self.metrics, "compare_and_set", "ok"), 1)
        self.assertEqual(count(self.metrics, "compare_and_set", "conflict"), 19)

    @inlineCallbacks
    def test_compare_and_set_bad_arguments(self):
        with self.assertRaises(TypeError):
            yield self.store.compare_and_set(self.k("x"), "text", b"v")
        with self.assertRaises(TypeError):
            yield self.store.compare_and_set(self.k("x"), None, "text")
        with self.assertRaises(ValueError):
            yield self.store.compare_and_set(self.k("x"), None, b"v", ttl=0)
        self.assertEqual(count(self.metrics, "compare_and_set", "error"), 3)
        self.assertIsNone((yield self.store.get(self.k("x"))))

    @staticmethod
    def counting_update(calls: list):
        """An update counting ``n`` up by one; it records every value it was run on."""
        def update(current):
            calls.append(current)
            n = current["n"] if isinstance(current, dict) else 0
            return {"n": n + 1}, n + 1
        return update

    @inlineCallbacks
    def test_update_json_applies_the_update_with_the_ttl(self):
        cache = KVCache(self.store, self.k("state"), 300)
        calls: list = []
        self.assertEqual((yield cache.update_json("s1", self.counting_update(calls))), 1)
        self.assertEqual((yield cache.update_json("s1", self.counting_update(calls))), 2)
        self.assertEqual(calls, [None, {"n": 1}])
        self.assertEqual((yield cache.get_json("s1")), {"n": 2})
        remaining = yield self.remaining_ttl(self.k("state") + ":s1")
        self.assertTrue(299 < remaining <= 300, remaining)

    @inlineCallbacks
    def test_update_json_loses_no_update_when_both_read_before_either_writes(self):
        held = HeldStore(self.store)
        caches = [KVCache(held, self.k("state"), 300) for _ in range(2)]  # two replicas
        calls: list = []
        held.holding = True
        racing = [c.update_json("s1", self.counting_update(calls)) for c in caches]
        yield self.wait_until(lambda: len(held.held) == 2)
        self.assertEqual(calls, [None, None])  # both read the same (empty) state
        held.holding = False
        self.assertTrue((yield held.release()))
        self.assertFalse((yield held.release()))  # the loser re-reads and runs again
        results = yield gatherResults(racing)
        self.assertEqual(sorted(results), [1, 2])
        self.assertEqual(calls, [None, None, {"n": 1}])
        self.assertEqual((yield caches[0].get_json("s1")), {"n": 2})
        self.assertEqual(count(self.metrics, "compare_and_set", "conflict"), 1)

    @inlineCallbacks
    def test_update_json_concurrent_updates_all_count(self):
        # Each conflict means another update was stored, so with no more concurrent
        # updates than attempts none can run out of attempts.
        caches = [KVCache(self.store, self.k("state"), 300) for _ in range(3)]
        calls: list = []
        yield gatherResults([caches[i % 3].update_json("s1", self.counting_update(calls))
                             for i in range(MAX_UPDATE_ATTEMPTS)])
        self.assertEqual((yield caches[0].get_json("s1")), {"n": MAX_UPDATE_ATTEMPTS})

    @inlineCallbacks
    def test_update_json_gives_up_after_bounded_conflicts(self):
        logs = captured_logs(self, "mnemomd.kv")
        held = HeldStore(self.store)
        held.interfere = True  # no write can win
        cache = KVCache(held, self.k("state"), 300)
        calls: list = []
        result = yield cache.update_json("s1", self.counting_update(calls), attempts=4)
        self.assertEqual((len(calls), result), (4, 1))
        self.assertEqual(count(self.metrics, "compare_and_set", "conflict"), 4)
        self.assertEqual((yield self.store.get(self.k("state:s1"))), b"other-4")
        warnings = logs.at(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertNotIn("s1", str(warnings))

    @inlineCallbacks
    def test_update_json_store_failure_returns_the_update_unstored(self):
        held = HeldStore(self.store)
        cache = KVCache(held, self.k("state"), 300)
        yield cache.set_json("s1", {"n": 5})
        held.fail_with = KVUnavailableError("Redis unavailable: test")
        calls: list = []
        self.assertEqual((yield cache.update_json("s1", self.counting_update(calls))), 6)
        self.assertEqual((yield cache.get_json("s1")), {"n": 5})
        yield self.store.close()
        # This cache knows the value it last read: the result is on it, unstored.
        self.assertEqual((yield cache.update_json("s1", self.counting_update(calls))), 6)
        # One that never read the key has nothing to go on.
        fresh = KVCache(held, self.k("state"), 300)
        self.assertEqual((yield fresh.update_json("s1", self.counting_update(calls))), 1)
        self.assertEqual(calls, [{"n": 5}, {"n": 5}, None])

    @inlineCallbacks
    def test_update_json_overwrites_a_foreign_value(self):
        cache = KVCache(self.store, self.k("state"), 300)
        yield self.store.set(self.k("state:s1"), b"\xff not json")
        calls: list = []
        self.assertEqual((yield cache.update_json("s1", self.counting_update(calls))), 1)
        self.assertEqual((yield cache.get_json("s1")), {"n": 1})

    def wait_until(self, predicate) -> Deferred:
        return poll(predicate, 10, "the condition")

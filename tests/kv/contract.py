"""The behaviour both key-value stores share, written once and run against each.

A subclass provides the store, ``metrics``, a per-test key ``namespace`` and three ways to
look behind the store: how a key is made to expire, its remaining TTL, and the keys as
stored.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks

from mnemomd.kv import PREFIX, KVCache, KVError, readiness_check
from mnemomd.ops.metrics import GatewayMetrics

#: Short enough to keep the Redis TTL tests fast, long enough to read a key back first.
SHORT_TTL = 0.3


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

"""The in-memory store: the shared contract on a Clock, and what only memory has to show."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from mnemomd.kv import MemoryKeyValueStore, make_kv_store, readiness_check
from mnemomd.ops.metrics import GatewayMetrics
from tests.kv.contract import KeyValueContract


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

"""KVCache over a failing store: failures are misses, invalidations are not lost."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial import unittest

from mnemomd.kv import KVCache, KVError, KVUnavailableError, MemoryKeyValueStore
from mnemomd.ops.metrics import GatewayMetrics
from tests.kv.contract import count
from tests.support import captured_logs


class FlakyStore(MemoryKeyValueStore):
    """A memory store that can be switched to failing like an unreachable Redis."""

    broken = False
    error: Exception = KVUnavailableError("Redis unavailable: Lost connection")

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_do_") and object.__getattribute__(self, "broken"):
            error = object.__getattribute__(self, "error")

            def fail(*args: Any) -> None:
                raise error
            return fail
        return object.__getattribute__(self, name)


class KVCacheFailureTests(unittest.TestCase):
    def setUp(self):
        self.metrics = GatewayMetrics(process_collectors=False)
        self.store = FlakyStore(Clock(), self.metrics)
        self.cache = KVCache(self.store, "agents", 300)
        self.logs = captured_logs(self, "mnemomd.kv")

    def warnings(self) -> list[dict]:
        return self.logs.at(LogLevel.warn)

    @inlineCallbacks
    def test_errors_become_misses_logged_once_per_streak(self):
        yield self.cache.set_json("a1", {"secret": "prompt text"})
        self.store.error = KVError("Redis error reply: READONLY")
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
    def test_an_outage_is_a_miss_the_cache_does_not_log(self):
        """An unreachable store is logged by the store's outage tracker, once; the four
        caches over it add nothing."""
        yield self.cache.set_json("a1", {"mode": "enforce"})
        self.store.broken = True
        self.assertIsNone((yield self.cache.get_json("a1")))
        self.assertIsNone((yield self.cache.set_json("a1", {"mode": "observe"})))
        self.store.broken = False
        self.assertEqual((yield self.cache.get_json("a1")), {"mode": "enforce"})
        self.assertEqual(self.logs.events, [])

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


class DecodedValueTests(unittest.TestCase):
    """The last decoded value of a key is kept with its bytes: unchanged bytes are not
    decoded again; changed, deleted or invalidated ones are."""

    def setUp(self):
        self.store = MemoryKeyValueStore(Clock())
        self.cache = KVCache(self.store, "s", 300)
        self.decodes = 0
        real = json.loads

        def counting(raw: Any, *args: Any, **kwargs: Any) -> Any:
            self.decodes += 1
            return real(raw, *args, **kwargs)
        self.patch(json, "loads", counting)

    def read(self, key: str = "k") -> Any:
        return self.successResultOf(self.cache.get_json(key))

    def test_unchanged_bytes_are_decoded_once(self):
        self.successResultOf(self.store.set("s:k", b'{"a":[1,2]}'))
        first = self.read()
        second = self.read()
        self.assertEqual(first, {"a": [1, 2]})
        self.assertIs(second, first)
        self.assertEqual(self.decodes, 1)

    def test_bytes_written_by_another_replica_are_decoded_anew(self):
        self.successResultOf(self.store.set("s:k", b'{"n":1}'))
        self.assertEqual(self.read(), {"n": 1})
        self.successResultOf(self.store.set("s:k", b'{"n":2}'))
        self.assertEqual(self.read(), {"n": 2})
        self.assertEqual(self.decodes, 2)

    def test_equal_bytes_from_the_store_reuse_the_value(self):
        # Redis hands back new bytes objects: equal bytes still skip the decode.
        self.successResultOf(self.store.set("s:k", b'{"n":1}'))
        first = self.read()
        self.successResultOf(self.store.set("s:k", bytes(bytearray(b'{"n":1}'))))
        self.assertIs(self.read(), first)
        self.assertEqual(self.decodes, 1)

    def test_an_update_keeps_the_value_it_stored(self):
        def bump(current: Any) -> tuple[Any, Any]:
            new = {"n": (current or {}).get("n", 0) + 1}
            return new, new
        stored = self.successResultOf(self.cache.update_json("k", bump))
        self.assertIs(self.read(), stored)
        self.successResultOf(self.cache.update_json("k", bump))
        self.assertEqual(self.read(), {"n": 2})
        self.assertEqual(self.decodes, 0)
        self.assertEqual(json.loads(self.successResultOf(self.store.get("s:k"))), {"n": 2})

    def test_deleted_and_invalidated_keys_are_forgotten(self):
        self.successResultOf(self.store.set("s:k", b'{"n":1}'))
        self.read()
        self.successResultOf(self.cache.invalidate("k"))
        self.assertIsNone(self.read())
        self.successResultOf(self.store.set("s:k", b'{"n":1}'))
        self.assertEqual(self.read(), {"n": 1})
        self.assertEqual(self.decodes, 2)

    def test_kept_values_are_bounded(self):
        from mnemomd.kv import cache as cache_module
        self.patch(cache_module, "MAX_DECODED", 3)
        for i in range(5):
            self.successResultOf(self.store.set(f"s:k{i}", b"{}"))
            self.read(f"k{i}")
        self.assertEqual(len(self.cache._decoded), 3)
        self.read("k0")
        self.assertEqual(self.decodes, 6)


class KeptValueUpdateTests(unittest.TestCase):
    """An update of a key this cache last read or wrote compares against the kept bytes
    without reading them again; a write by another replica makes it read and retry."""

    def setUp(self):
        self.store = MemoryKeyValueStore(Clock())
        self.cache = KVCache(self.store, "s", 300)
        self.operations: list[str] = []
        for name in ("get", "compare_and_set"):
            real = getattr(self.store, name)

            def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
                self.operations.append(_name)
                return _real(*args)
            self.patch(self.store, name, counted)

    @staticmethod
    def bump(current: Any) -> tuple[Any, Any]:
        new = {"n": (current or {}).get("n", 0) + 1}
        return new, new["n"]

    def test_a_second_update_is_one_compare_and_set(self):
        self.assertEqual(self.successResultOf(self.cache.update_json("k", self.bump)), 1)
        self.assertEqual(self.operations, ["get", "compare_and_set"])
        del self.operations[:]
        self.assertEqual(self.successResultOf(self.cache.update_json("k", self.bump)), 2)
        self.assertEqual(self.operations, ["compare_and_set"])

    def test_another_writer_in_between_is_read_and_counted(self):
        self.successResultOf(self.cache.update_json("k", self.bump))
        self.successResultOf(self.store.set("s:k", b'{"n":41}'))  # another replica
        del self.operations[:]
        self.assertEqual(self.successResultOf(self.cache.update_json("k", self.bump)), 42)
        self.assertEqual(self.operations, ["compare_and_set", "get", "compare_and_set"])
        self.assertEqual(json.loads(self.successResultOf(self.store.get("s:k"))), {"n": 42})

    def test_an_expired_key_starts_again_from_nothing(self):
        self.successResultOf(self.cache.update_json("k", self.bump))
        self.successResultOf(self.store.delete("s:k"))
        self.assertEqual(self.successResultOf(self.cache.update_json("k", self.bump)), 1)

    def test_concurrent_updates_of_one_key_take_turns_without_conflicts(self):
        # Two calls of one session in flight: the second waits for the first's write
        # instead of racing it (one compare-and-set each, none lost).
        gate: list[Any] = []
        real = self.store.compare_and_set

        def held(*args: Any) -> Any:
            from twisted.internet.defer import Deferred
            d: Deferred[Any] = Deferred()
            gate.append((d, args))
            return d
        self.successResultOf(self.cache.update_json("k", self.bump))
        del self.operations[:]
        self.patch(self.store, "compare_and_set", held)
        first = self.cache.update_json("k", self.bump)
        second = self.cache.update_json("k", self.bump)
        self.assertEqual(len(gate), 1)  # the second has not started
        d, args = gate.pop()
        real(*args).chainDeferred(d)
        self.assertEqual(self.successResultOf(first), 2)
        d, args = gate.pop()
        real(*args).chainDeferred(d)
        self.assertEqual(self.successResultOf(second), 3)
        self.assertEqual(self.cache._updating, {})


class BoundsTests(unittest.TestCase):
    def test_kept_values_are_bounded_in_bytes_and_a_huge_one_is_not_kept(self):
        from mnemomd.kv import cache as cache_module
        self.patch(cache_module, "MAX_DECODED_BYTES", 100)
        store = MemoryKeyValueStore(Clock())
        cache = KVCache(store, "s", 300)
        for i in range(5):
            self.successResultOf(store.set(f"s:k{i}", b'"' + b"x" * 18 + b'"'))  # 20 bytes
            self.successResultOf(cache.get_json(f"k{i}"))
        self.assertEqual(len(cache._decoded), 5)
        self.successResultOf(store.set("s:k5", b'"' + b"x" * 18 + b'"'))
        self.successResultOf(cache.get_json("k5"))
        self.assertEqual((len(cache._decoded), cache._decoded_bytes), (5, 100))
        self.successResultOf(store.set("s:big", b'"' + b"x" * 30 + b'"'))  # > a quarter
        self.assertEqual(self.successResultOf(cache.get_json("big")), "x" * 30)
        self.assertNotIn("s:big", cache._decoded)

    def test_updates_queue_behind_one_key_only_up_to_the_cap(self):
        from twisted.internet.defer import Deferred

        from mnemomd.kv import cache as cache_module
        store = MemoryKeyValueStore(Clock())
        cache = KVCache(store, "s", 300)
        held: list[Deferred] = []
        self.patch(store, "get", lambda key: held.append(Deferred()) or held[-1])
        for _ in range(1 + cache_module.MAX_QUEUED_UPDATES + 2):
            cache.update_json("k", lambda current: ({}, None))
        # One running, MAX_QUEUED_UPDATES waiting, the 2 beyond the cap run at once.
        self.assertEqual(len(held), 3)
        self.assertEqual(len(cache._updating["s:k"].waiting),
                         cache_module.MAX_QUEUED_UPDATES)

"""The outbox keyring: sealing, opening, key lifetimes and keys shared between replicas."""

from __future__ import annotations

import json
import random

import pytest
import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import fail, gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial import unittest

from mnemomd.kv import KVUnavailableError, MemoryKeyValueStore, RedisKeyValueStore
from mnemomd.kv.keyring import (
    KEY_NAME,
    OutboxKeyring,
    SealError,
    key_expiry,
    open_with,
    seal_with,
    sealed_key_id,
)
from tests.fakes.redisserver import REDIS_HOST, REDIS_PORT, require_shared_redis
from tests.support import captured_logs

TTL = 600.0
EPOCH = 30.0
START = 1_700_000_000.0
PAYLOAD = json.dumps({"thinking_excerpt": "the secret plan", "tools": []}).encode()
KEY = bytes(range(32))


def keyring(kv=None, clock=None, shared=False, ttl=TTL, epoch=EPOCH):
    clock = clock or at(START)
    return OutboxKeyring(kv or MemoryKeyValueStore(clock), clock, ttl, epoch, shared=shared)


def at(seconds: float) -> Clock:
    clock = Clock()
    clock.advance(seconds)
    return clock


def sealed(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred did not fire"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


# -- the pure functions --------------------------------------------------------------------


def test_a_sealed_payload_opens_for_its_row():
    text = seal_with("e7", KEY, "ob-1", PAYLOAD)
    assert text.startswith("s1.e7.")
    assert b"secret" not in text.encode() and sealed_key_id(text) == "e7"
    assert open_with(KEY, "ob-1", text) == PAYLOAD


def test_a_payload_moved_to_another_row_does_not_open():
    text = seal_with("e7", KEY, "ob-1", PAYLOAD)
    with pytest.raises(SealError):
        open_with(KEY, "ob-2", text)


def test_a_payload_under_another_key_id_does_not_open():
    prefix, _, rest = seal_with("e7", KEY, "ob-1", PAYLOAD).partition(".e7.")
    with pytest.raises(SealError):
        open_with(KEY, "ob-1", f"{prefix}.e8.{rest}")


def test_an_altered_payload_does_not_open():
    text = seal_with("e7", KEY, "ob-1", PAYLOAD)
    for at_ in (len(text) - 1, len(text) - 20):
        other = "A" if text[at_] != "A" else "B"
        with pytest.raises(SealError):
            open_with(KEY, "ob-1", text[:at_] + other + text[at_ + 1:])
    with pytest.raises(SealError):
        open_with(bytes(32), "ob-1", text)


@pytest.mark.parametrize("text", ["", "{}", "s1.e7.x", "s2.e7.AAAA.AAAA", "s1.zz.AAAA.AAAA",
                                  "s1.e7.A+/=.AAAA", "s1.e7.AAAA.AAAA"])
def test_malformed_payloads_are_refused(text):
    with pytest.raises(SealError):
        open_with(KEY, "ob-1", text)


def test_each_key_expires_ttl_after_its_epoch_began():
    assert key_expiry(10, EPOCH, TTL) == 10 * EPOCH + TTL


# -- the keyring ---------------------------------------------------------------------------


def test_round_trip_through_the_keyring():
    ring = keyring()
    text = sealed(ring.seal("ob-1", PAYLOAD))
    key_id = sealed_key_id(text)
    keys = sealed(ring.keys([key_id]))
    assert open_with(keys[key_id], "ob-1", text) == PAYLOAD


def test_a_process_own_keys_are_never_put_in_the_kv_store():
    clock = at(START)
    kv = MemoryKeyValueStore(clock)
    ring = keyring(kv, clock)
    text = sealed(ring.seal("ob-1", PAYLOAD))
    assert text.startswith(ring.own_prefix)
    assert kv.keys() == []


def test_once_the_key_expired_the_row_cannot_be_opened():
    clock = at(START)
    ring = keyring(clock=clock)
    text = sealed(ring.seal("ob-1", PAYLOAD))
    key_id = sealed_key_id(text)
    clock.advance(TTL)
    assert sealed(ring.keys([key_id])) == {key_id: None}
    assert ring.held() == []


def test_no_key_outlives_the_ttl_of_any_row_it_sealed():
    """Sealed at any moment of an epoch, the key is there until the row's own expiry
    (one sweep before its TTL) and gone by its TTL."""
    for offset in (0.0, 0.001, EPOCH / 2, EPOCH - 0.001):
        clock = at(START - START % EPOCH + offset)
        kv = MemoryKeyValueStore(clock)
        ring = keyring(kv, clock, shared=True)
        created = clock.seconds()
        key_id = sealed_key_id(sealed(ring.seal("ob-1", PAYLOAD)))
        remaining = kv.remaining_ttl(ring.kv_key(key_id))
        assert created + TTL - EPOCH <= created + remaining <= created + TTL
        clock.advance(TTL - EPOCH - 0.001)
        assert sealed(ring.keys([key_id]))[key_id] is not None
        clock.advance(EPOCH + 0.001)
        assert kv.keys() == []
        assert sealed(ring.keys([key_id])) == {key_id: None}
        assert ring.held() == []


def test_keys_rotate_every_epoch():
    clock = at(START)
    ring = keyring(clock=clock)
    first = sealed_key_id(sealed(ring.seal("ob-1", PAYLOAD)))
    assert sealed_key_id(sealed(ring.seal("ob-2", PAYLOAD))) == first
    clock.advance(EPOCH)
    assert sealed_key_id(sealed(ring.seal("ob-3", PAYLOAD))) != first


def test_another_process_keys_are_foreign():
    clock = at(START)
    mine, theirs = keyring(clock=clock), keyring(clock=clock)
    key_id = sealed_key_id(sealed(theirs.seal("ob-1", PAYLOAD)))
    assert mine.is_foreign(key_id) and not theirs.is_foreign(key_id)
    assert sealed(mine.keys([key_id])) == {key_id: None}
    assert mine.is_foreign("e1") and not keyring(shared=True).is_foreign("e1")


def test_replicas_sharing_a_store_converge_on_one_key_per_epoch():
    clock = at(START)
    kv = MemoryKeyValueStore(clock)
    a, b = keyring(kv, clock, shared=True), keyring(kv, clock, shared=True)
    text_a, text_b = sealed(gatherResults([a.seal("ob-1", PAYLOAD), b.seal("ob-2", PAYLOAD)]))
    assert sealed_key_id(text_a) == sealed_key_id(text_b)
    key_id = sealed_key_id(text_a)
    assert open_with(sealed(a.keys([key_id]))[key_id], "ob-2", text_b) == PAYLOAD
    assert open_with(sealed(b.keys([key_id]))[key_id], "ob-1", text_a) == PAYLOAD
    assert len(kv.keys()) == 1


def test_a_replica_with_another_ttl_does_not_adopt_the_key():
    clock = at(START)
    kv = MemoryKeyValueStore(clock)
    long, short = keyring(kv, clock, shared=True), keyring(kv, clock, shared=True, ttl=60)
    text = sealed(long.seal("ob-1", PAYLOAD))
    key_id = sealed_key_id(text)
    sealed(short.seal("ob-2", PAYLOAD))
    assert len(kv.keys()) == 2
    assert sorted(kv.remaining_ttl(r.kv_key(key_id)) for r in (long, short)) == \
        [60 - START % EPOCH, TTL - START % EPOCH]
    with pytest.raises(SealError):
        open_with(sealed(short.keys([key_id]))[key_id], "ob-1", text)


class BrokenStore(MemoryKeyValueStore):
    def get(self, key):
        return fail(KVUnavailableError("Redis is not connected"))

    def set_if_absent(self, key, value, ttl):
        return fail(KVUnavailableError("Redis is not connected"))


class KVFailureTests(unittest.TestCase):
    def test_without_the_store_rows_are_sealed_under_an_own_key_and_said_once(self):
        logs = captured_logs(self, "mnemomd.kv")
        clock = at(START)
        ring = keyring(BrokenStore(clock), clock, shared=True)
        texts = [sealed(ring.seal(f"ob-{n}", PAYLOAD)) for n in range(3)]
        assert all(t.startswith(ring.own_prefix) for t in texts)
        key_id = sealed_key_id(texts[0])
        assert open_with(sealed(ring.keys([key_id]))[key_id], "ob-0", texts[0]) == PAYLOAD
        assert len(logs.at(LogLevel.warn)) == 1

    def test_an_unreadable_store_is_not_taken_for_an_expired_key(self):
        ring = keyring(BrokenStore(at(START)), shared=True)
        with pytest.raises(KVUnavailableError):
            sealed(ring.keys(["e1"]))


class RedisKeyringTests(unittest.TestCase):
    """Two keyrings, each with its own Redis pool (two replicas), on the shared Redis."""

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        url = require_shared_redis()
        # An epoch no other test or daemon uses: a clock at a random moment of the past.
        self.clock = at(random.randrange(10**6, 10**9) * EPOCH)
        self.stores = [RedisKeyValueStore(reactor, f"{url}/0", None, None) for _ in range(2)]
        self.raw = yield txredisapi.Connection(REDIS_HOST, REDIS_PORT, reconnect=False,
                                               charset=None, convertNumbers=False)

    @inlineCallbacks
    def tearDown(self):
        index = int(self.clock.seconds() // EPOCH)
        yield self.raw.delete([f"mnemom:{KEY_NAME}{int(TTL * 1000)}:e{index}"])
        yield self.raw.disconnect()
        for store in self.stores:
            yield store.close()

    @inlineCallbacks
    def test_two_replicas_converge_on_one_key_with_a_ttl(self):
        a, b = (OutboxKeyring(kv, self.clock, TTL, EPOCH, shared=True) for kv in self.stores)
        text_a, text_b = yield gatherResults([a.seal("ob-1", PAYLOAD),
                                              b.seal("ob-2", PAYLOAD)])
        key_id = sealed_key_id(text_a)
        self.assertEqual(sealed_key_id(text_b), key_id)
        keys = yield b.keys([key_id])
        self.assertEqual(open_with(keys[key_id], "ob-1", text_a), PAYLOAD)
        remaining_ms = yield self.raw.execute_command("PTTL", f"mnemom:{a.kv_key(key_id)}")
        expected = key_expiry(int(key_id[1:]), EPOCH, TTL) - self.clock.seconds()
        self.assertTrue(0 < remaining_ms <= expected * 1000, remaining_ms)
        # A third replica, started later, reads the same key from Redis.
        c = OutboxKeyring(self.stores[0], self.clock, TTL, EPOCH, shared=True)
        keys = yield c.keys([key_id])
        self.assertEqual(open_with(keys[key_id], "ob-2", text_b), PAYLOAD)

"""JSON cache-aside over a key-value store, for lookups the database can always answer.

Values may be derived from user data and are never logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd.kv.base import LOG_NAMESPACE, KeyValueStore, KVUnavailableError, T, ttl_ms

log = Logger(namespace=LOG_NAMESPACE)

R = TypeVar("R")
#: An update of a stored JSON value: the current value (None when absent or unreadable)
#: to the value to store and what the caller gets back.
JSONUpdate = Callable[[Any | None], tuple[Any, R]]
#: Tries of one ``update_json`` before it gives up on storing (each lost race is one).
MAX_UPDATE_ATTEMPTS = 8
#: Keys whose last decoded value is kept with the bytes it came from (see ``KVCache``),
#: and the most bytes they may hold together (a full session state is ~15 KB of JSON
#: and about twice that decoded).
MAX_DECODED = 2048
MAX_DECODED_BYTES = 4 * 1024 * 1024
#: Updates of one key waiting behind the one in progress; beyond this they run at once,
#: as they did before taking turns (with the store stalled, each in turn would wait for
#: the timeouts of all before it).
MAX_QUEUED_UPDATES = 4


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _decode(raw: bytes | None) -> Any | None:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None  # written by something else; the next write replaces it


class KVCache:
    """JSON cache-aside on a store, for lookups that can always fall back to the database.

    Store failures never reach the caller: a failed read is a miss, a failed write or
    invalidation is dropped. They are counted by the store (``result="error"``); an outage
    (``KVUnavailableError``) is logged by the store once per change, any other failure
    here once per failure streak. An invalidation that fails is remembered and retried, and the
    key is read as a miss meanwhile, so a change made during an outage is not hidden by a
    stale entry once Redis is back.

    The last value read or stored under a key is kept with its bytes (at most
    ``MAX_DECODED`` keys), so reading unchanged bytes again costs no JSON decode: the
    session state, card and agent of a busy agent are read on every call. Values are
    therefore **shared between callers and must not be modified**; every update makes a
    new value (``JSONUpdate`` is pure).
    """

    #: Failed invalidations kept for retry; beyond this the oldest are dropped (they
    #: still expire with their TTL).
    MAX_PENDING_INVALIDATIONS = 10_000

    def __init__(self, store: KeyValueStore, prefix: str, ttl: float) -> None:
        ttl_ms(ttl)
        self._store = store
        self._name = prefix or "(unprefixed)"
        self._prefix = f"{prefix}:" if prefix else ""
        self._ttl = ttl
        self._failing = False
        self._pending: dict[str, None] = {}
        self._decoded: dict[str, tuple[bytes, Any]] = {}
        self._decoded_bytes = 0
        self._updating: dict[str, DeferredLock] = {}

    def _key(self, key: str) -> str:
        return self._prefix + key

    def _ok(self, result: T) -> T:
        if self._failing:
            self._failing = False
            log.info("Cache {cache} is working again", cache=self._name)
        if self._pending:
            self._retry_invalidations()
        return result

    def _swallow(self, failure: Failure, default: T) -> T:
        if failure.check(KVUnavailableError):
            # An outage: the store logs it once, with its duration when it ends.
            return default
        if not self._failing:
            self._failing = True
            log.warn("Cache {cache} unavailable, falling through to the database: {reason}",
                     cache=self._name,
                     reason=failure.getErrorMessage() or failure.type.__name__)
        return default

    def _decoded_value(self, full: str, raw: bytes | None) -> Any | None:
        """``raw`` decoded: the kept value when these are the bytes it came from."""
        if raw is None:
            self._forget(full)
            return None
        kept = self._decoded.get(full)
        if kept is not None and (kept[0] is raw or kept[0] == raw):
            return kept[1]
        value = _decode(raw)
        self._keep(full, raw, value)
        return value

    def _keep(self, full: str, raw: bytes, value: Any) -> None:
        self._forget(full)
        if len(raw) > MAX_DECODED_BYTES // 4:
            return  # one huge value would push out everything else
        self._decoded[full] = (raw, value)
        self._decoded_bytes += len(raw)
        while len(self._decoded) > MAX_DECODED or self._decoded_bytes > MAX_DECODED_BYTES:
            self._forget(next(iter(self._decoded)))

    def _forget(self, full: str) -> None:
        kept = self._decoded.pop(full, None)
        if kept is not None:
            self._decoded_bytes -= len(kept[0])

    def get_json(self, key: str) -> Deferred[Any | None]:
        """The value under ``key`` or None (absent, unreadable, or the store failed);
        shared with other readers: do not modify it."""
        full = self._key(key)

        def decode(raw: bytes | None) -> Any | None:
            stale = full in self._pending  # checked before _ok() may retry the delete
            self._ok(None)
            return None if stale else self._decoded_value(full, raw)

        return self._store.get(full).addCallbacks(decode, self._swallow, errbackArgs=(None,))

    def get_json_many(self, *keys: str) -> Deferred[list[Any | None]]:
        """``get_json`` of each key, in order, in one round trip; a failed read is a miss
        for every key."""
        full = [self._key(k) for k in keys]

        def decode(raws: list[bytes | None]) -> list[Any | None]:
            stale = [f in self._pending for f in full]
            self._ok(None)
            return [None if s else self._decoded_value(f, raw)
                    for f, raw, s in zip(full, raws, stale, strict=True)]

        return self._store.get_many(*full).addCallbacks(
            decode, self._swallow, errbackArgs=([None] * len(full),))

    def set_json(self, key: str, value: Any) -> Deferred[None]:
        """Store ``value``; a value JSON cannot encode is the caller's bug and fails."""
        try:
            raw = _encode(value)
        except (TypeError, ValueError):
            return defer.fail()
        return self._store.set(self._key(key), raw, self._ttl).addCallback(self._ok) \
            .addErrback(self._swallow, None)

    def update_json(self, key: str, update: JSONUpdate[R],
                    attempts: int = MAX_UPDATE_ATTEMPTS) -> Deferred[Any]:
        """Read, ``update`` and write back atomically; fires with ``update``'s result
        (``update_json_stored`` says whether it was stored)."""
        return self.update_json_stored(key, update, attempts).addCallback(lambda r: r[0])

    def update_json_stored(self, key: str, update: JSONUpdate[R],
                           attempts: int = MAX_UPDATE_ATTEMPTS) -> Deferred[Any]:
        """Read, ``update`` and write back atomically; fires with ``update``'s result and
        whether it was stored (False: the store failed, or the races were all lost).

        Optimistic: the write is a compare-and-set against the bytes read, and a lost
        race (another replica wrote in between) re-reads and re-runs ``update`` on the
        winner's value, so no update is lost and ``update`` may run more than once: it
        must be pure. ``update`` raising fails the Deferred (a bug in the caller).

        Like the other methods, the store failing never reaches the caller: the result
        of ``update`` on what could be read (nothing, if the read failed) comes back
        and the write is dropped. After ``attempts`` lost races the last result comes
        back unstored too, logged; the caller must tolerate a result computed on a
        state that did not win (e.g. make what it triggers idempotent).

        The first try skips the read when this cache last read or stored the key: it
        compares against those bytes, which are still current unless another replica
        wrote (then the compare fails and the update goes on as a lost race). One round
        trip instead of two for the session state each call updates. With the store
        down, such an update's result is on the last value this cache knew.

        Updates of one key through this cache run one after the other: two calls of one
        session in flight do not race each other, only other replicas. At most
        ``MAX_QUEUED_UPDATES`` wait; more run at once (and may race).
        """
        full = self._key(key)
        lock = self._updating.get(full)
        if lock is None:
            lock = self._updating[full] = DeferredLock()
        elif len(lock.waiting) >= MAX_QUEUED_UPDATES:
            return self._update(full, update, attempts)

        def done(result: Any) -> Any:
            if self._updating.get(full) is lock and not lock.locked:
                del self._updating[full]
            return result

        return lock.run(self._update, full, update, attempts).addBoth(done)

    @inlineCallbacks
    def _update(self, full: str, update: JSONUpdate[R], attempts: int) -> Any:
        current: Any | None = None
        result: Any = None
        guess = None if full in self._pending else self._decoded.get(full)
        for _ in range(attempts + (guess is not None)):
            if guess is not None:
                raw, current = guess
                guess = None
            else:
                try:
                    raw = yield self._store.get(full)
                except Exception:
                    self._swallow(Failure(), None)
                    return update(None)[1], False
                stale = full in self._pending
                self._ok(None)
                current = None if stale else self._decoded_value(full, raw)
            new, result = update(current)
            encoded = _encode(new)
            try:
                stored = yield self._store.compare_and_set(full, raw, encoded, self._ttl)
            except Exception:
                self._swallow(Failure(), None)
                return result, False
            if stored:
                self._pending.pop(full, None)
                self._keep(full, encoded, new)
                return result, True
        log.warn("Cache {cache}: gave up an update after {attempts} concurrent writes; "
                 "it is not stored", cache=self._name, attempts=attempts)
        return result, False

    def invalidate(self, key: str) -> Deferred[None]:
        full = self._key(key)
        self._forget(full)

        def failed(failure: Failure) -> None:
            self._pending[full] = None
            while len(self._pending) > self.MAX_PENDING_INVALIDATIONS:
                del self._pending[next(iter(self._pending))]
            return self._swallow(failure, None)

        def done(_: int) -> None:
            self._pending.pop(full, None)
            self._ok(None)

        return self._store.delete(full).addCallbacks(done, failed)

    def _retry_invalidations(self) -> None:
        keys = list(self._pending)

        def done(_: int) -> None:
            for key in keys:
                self._pending.pop(key, None)

        # Fire and forget: a failure leaves them pending for the next success.
        self._store.delete(*keys).addCallbacks(done, lambda _: None)

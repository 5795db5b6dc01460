"""What every key-value store shares: the interface, its errors, and the argument checks
and metrics both implementations run through, so a mistake fails the same way in tests
(memory) and in production (Redis)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from mnemomd.ops.labels import LabelCache
from mnemomd.ops.metrics import GatewayMetrics

#: Every key is stored under this prefix, so a shared Redis can hold other data too.
PREFIX = "mnemom:"
#: The log namespace of the whole package: operators filter on one name.
LOG_NAMESPACE = "mnemomd.kv"

T = TypeVar("T")


class KVError(Exception):
    """A key-value operation failed (bad value type, server error reply, closed store)."""


class KVUnavailableError(KVError):
    """The store cannot be reached right now; the caller should degrade, not crash."""


@runtime_checkable
class KeyValueStore(Protocol):
    """What the gateway needs from a key-value store. All keys are given without prefix."""

    kind: str

    def get(self, key: str) -> Deferred[bytes | None]: ...

    def get_many(self, *keys: str) -> Deferred[list[bytes | None]]: ...

    def set(self, key: str, value: bytes, ttl: float | None = None) -> Deferred[None]: ...

    def set_if_absent(self, key: str, value: bytes, ttl: float) -> Deferred[bool]: ...

    def delete(self, *keys: str) -> Deferred[int]: ...

    def incr(self, key: str, ttl: float | None = None) -> Deferred[int]: ...

    def compare_and_delete(self, key: str, value: bytes) -> Deferred[bool]: ...

    def extend_if_equal(self, key: str, value: bytes, ttl: float) -> Deferred[bool]: ...

    def compare_and_set(self, key: str, expected: bytes | None, value: bytes,
                        ttl: float | None = None) -> Deferred[bool]: ...

    def ping(self) -> Deferred[float]: ...

    def close(self) -> Deferred[None]: ...


def ttl_ms(ttl: float) -> int:
    """Redis PX milliseconds of a TTL in seconds; rejects what Redis would reject."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) \
            or ttl <= 0:
        raise ValueError("ttl must be a positive number of seconds")
    return max(1, round(ttl * 1000))


def check_key(key: str) -> str:
    """The stored form of a caller's key (with :data:`PREFIX`); a non-str key is a bug."""
    if not isinstance(key, str):
        raise TypeError("key must be a str")
    return PREFIX + key


def check_value(value: bytes) -> bytes:
    """Values are bytes, never text the store would have to encode."""
    if not isinstance(value, bytes | bytearray):
        raise TypeError("value must be bytes")
    return bytes(value)


class MeteredStore:
    """Argument checks and ``gateway_cache_operations_total`` for every store.

    Subclasses implement the ``_do_*`` methods with full (prefixed) keys; the public
    methods validate arguments the same way for both stores, so a mistake fails the same
    in tests (memory) and in production (Redis).
    """

    kind = "abstract"

    def __init__(self, metrics: GatewayMetrics | None) -> None:
        self._counter = (LabelCache(metrics.cache_operations) if metrics is not None
                         else None)
        self._closed = False

    def _run(self, operation: str, call: Callable[[], Deferred[T] | T],
             classify: Callable[[T], str] | None = None) -> Deferred[T]:
        if self._closed:
            d: Deferred[T] = defer.fail(KVError("key-value store is closed"))
        else:
            d = maybeDeferred(call)

        def ok(result: T) -> T:
            self._count(operation, classify(result) if classify else "ok")
            return result

        def failed(failure: Failure) -> Failure:
            self._count(operation, "error")
            return failure

        return d.addCallbacks(ok, failed)

    def _count(self, operation: str, result: str) -> None:
        if self._counter is not None:
            self._counter(operation, result).inc()

    def get(self, key: str) -> Deferred[bytes | None]:
        return self._run("get", lambda: self._do_get(check_key(key)),
                         lambda value: "miss" if value is None else "hit")

    def get_many(self, *keys: str) -> Deferred[list[bytes | None]]:
        """The values of ``keys``, in order, in one round trip (Redis ``MGET``); each key
        is counted as a ``get``, a hit or a miss."""
        if self._closed:
            return defer.fail(KVError("key-value store is closed"))

        def ok(values: list[bytes | None]) -> list[bytes | None]:
            for value in values:
                self._count("get", "miss" if value is None else "hit")
            return values

        def failed(failure: Failure) -> Failure:
            for _ in keys:
                self._count("get", "error")
            return failure

        return maybeDeferred(lambda: self._do_get_many([check_key(k) for k in keys])) \
            .addCallbacks(ok, failed)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> Deferred[None]:
        return self._run("set", lambda: self._do_set(
            check_key(key), check_value(value), None if ttl is None else ttl_ms(ttl)))

    def set_if_absent(self, key: str, value: bytes, ttl: float) -> Deferred[bool]:
        return self._run("set_if_absent", lambda: self._do_set_if_absent(
            check_key(key), check_value(value), ttl_ms(ttl)))

    def delete(self, *keys: str) -> Deferred[int]:
        return self._run("delete", lambda: self._do_delete([check_key(k) for k in keys]))

    def incr(self, key: str, ttl: float | None = None) -> Deferred[int]:
        return self._run("incr", lambda: self._do_incr(
            check_key(key), None if ttl is None else ttl_ms(ttl)))

    def compare_and_delete(self, key: str, value: bytes) -> Deferred[bool]:
        return self._run("compare_and_delete", lambda: self._do_compare_and_delete(
            check_key(key), check_value(value)))

    def extend_if_equal(self, key: str, value: bytes, ttl: float) -> Deferred[bool]:
        return self._run("extend_if_equal", lambda: self._do_extend_if_equal(
            check_key(key), check_value(value), ttl_ms(ttl)))

    def compare_and_set(self, key: str, expected: bytes | None, value: bytes,
                        ttl: float | None = None) -> Deferred[bool]:
        """Store ``value`` (with ``ttl``, or none) only if the key still holds ``expected``
        (``None``: only if it does not exist); True when it was stored.

        The one atomic step of an optimistic read-modify-write (``get``, a pure update,
        ``compare_and_set``, retry on False): the update logic stays in Python and the same
        loop is atomic on both stores. Counted as ``ok`` when stored, ``conflict`` when not.
        """
        return self._run("compare_and_set", lambda: self._do_compare_and_set(
            check_key(key), None if expected is None else check_value(expected),
            check_value(value), None if ttl is None else ttl_ms(ttl)),
            lambda stored: "ok" if stored else "conflict")

    def ping(self) -> Deferred[float]:
        """Round-trip latency in seconds; fails when the store is unreachable."""
        return self._run("ping", self._do_ping)

    def close(self) -> Deferred[None]:
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        return maybeDeferred(self._do_close).addCallback(lambda _: None)

    # Implemented by subclasses; keys are already prefixed, TTLs in milliseconds.

    def _do_get(self, key: str) -> Deferred[bytes | None] | bytes | None:
        raise NotImplementedError

    def _do_get_many(self, keys: list[str]) -> Deferred[list[bytes | None]] | list[bytes | None]:
        raise NotImplementedError

    def _do_set(self, key: str, value: bytes, ttl_ms: int | None) -> Deferred[None] | None:
        raise NotImplementedError

    def _do_set_if_absent(self, key: str, value: bytes, ttl_ms: int) -> Deferred[bool] | bool:
        raise NotImplementedError

    def _do_delete(self, keys: list[str]) -> Deferred[int] | int:
        raise NotImplementedError

    def _do_incr(self, key: str, ttl_ms: int | None) -> Deferred[int] | int:
        raise NotImplementedError

    def _do_compare_and_delete(self, key: str, value: bytes) -> Deferred[bool] | bool:
        raise NotImplementedError

    def _do_extend_if_equal(self, key: str, value: bytes, ttl_ms: int) -> Deferred[bool] | bool:
        raise NotImplementedError

    def _do_compare_and_set(self, key: str, expected: bytes | None, value: bytes,
                            ttl_ms: int | None) -> Deferred[bool] | bool:
        raise NotImplementedError

    def _do_ping(self) -> Deferred[float] | float:
        raise NotImplementedError

    def _do_close(self) -> Deferred[None] | None:
        return None


def readiness_check(store: KeyValueStore) -> Callable[[], Deferred[tuple[bool, str | None]]]:
    """A ``/health/ready`` check: the store answers a ping (the in-memory one always does)."""

    def check() -> Deferred[tuple[bool, str | None]]:
        detail = "in-memory (single node)" if store.kind == "memory" else None
        return store.ping().addCallback(lambda _: (True, detail))

    return check

"""Key-value store behind the agent cache, session windows, drift state, nudge flags,
license state and leases (SPEC §9.4).

``REDIS_URL`` set: Redis through txredisapi, so replicas share state. Unset: an in-memory
store with the same interface and the same TTL semantics, for a single node. Callers give
keys without prefix; both stores keep them under ``mnemom:`` so a shared Redis can hold
other applications' data too.

Redis may go away at any time. Every Redis command is bounded by a short timeout and fails
at once while the connection is known to be down, so a request never waits on a dead
server; the connection pool reconnects on its own. :class:`KVCache` turns those failures
into cache misses, so lookups fall through to the database and the gateway keeps serving.

Values may be derived from user data and are never logged; neither is the Redis password.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd.ops.metrics import GatewayMetrics

log = Logger()

PREFIX = "mnemom:"
DEFAULT_REDIS_PORT = 6379
#: Bound on one Redis command: long enough for a loaded server, short enough that a
#: request path doing a few lookups stays responsive while Redis is unreachable.
DEFAULT_COMMAND_TIMEOUT = 1.0
#: Bound on one TCP connect, so a blackholed Redis host fails fast too.
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_POOL_SIZE = 2

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

    def set(self, key: str, value: bytes, ttl: float | None = None) -> Deferred[None]: ...

    def set_if_absent(self, key: str, value: bytes, ttl: float) -> Deferred[bool]: ...

    def delete(self, *keys: str) -> Deferred[int]: ...

    def incr(self, key: str, ttl: float | None = None) -> Deferred[int]: ...

    def compare_and_delete(self, key: str, value: bytes) -> Deferred[bool]: ...

    def extend_if_equal(self, key: str, value: bytes, ttl: float) -> Deferred[bool]: ...

    def ping(self) -> Deferred[float]: ...

    def close(self) -> Deferred[None]: ...


# --- Redis URLs -----------------------------------------------------------------------------


class RedisTarget(NamedTuple):
    """A parsed ``REDIS_URL``. For unix sockets ``host`` is the socket path, ``port`` None."""

    host: str
    port: int | None
    db: int
    password: str | None
    username: str | None
    unix: bool


def _parse_db(text: str, source: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"REDIS_URL: database number in the {source} must be a "
                         f"non-negative integer")
    return int(text)


def parse_redis_target(url: str) -> RedisTarget:
    """Everything needed to connect, including an ACL username; see :func:`parse_redis_url`.

    Error messages never repeat the URL, which may contain a password.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("REDIS_URL is empty")
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"REDIS_URL is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme == "rediss":
        raise ValueError(
            "REDIS_URL: TLS (rediss://) is not supported; run a local TLS tunnel "
            "(for example stunnel or spiped) and point REDIS_URL at it with redis://")
    if scheme not in ("redis", "unix"):
        shown = f"'{scheme}://'" if scheme else "no scheme"
        raise ValueError(f"REDIS_URL: unsupported scheme {shown}; use "
                         f"redis://[user:password@]host[:port][/db] or unix:///path/to/socket")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"db"})
    if unknown:
        raise ValueError(f"REDIS_URL: unsupported query parameter(s): {', '.join(unknown)}; "
                         f"only db is accepted")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if username == "default":
        username = None  # AUTH with the password alone authenticates as "default"
    if password == "":
        password = None
    db = _parse_db(query["db"][-1], "query") if "db" in query else 0

    if scheme == "unix":
        path = unquote(parts.path)
        if parts.hostname or port is not None:
            raise ValueError("REDIS_URL: a unix:// URL takes a socket path, not a host: "
                             "use unix:///path/to/redis.sock")
        if not path.startswith("/") or path == "/":
            raise ValueError("REDIS_URL: unix:// needs an absolute socket path "
                             "(unix:///path/to/redis.sock)")
        return RedisTarget(path, None, db, password, username, True)

    host = parts.hostname
    if not host:
        raise ValueError("REDIS_URL: no host given (redis://host[:port][/db])")
    path = parts.path.strip("/")
    if path:
        if "db" in query:
            raise ValueError("REDIS_URL: database number given twice (path and ?db=)")
        db = _parse_db(path, "path")
    if port is None:
        port = DEFAULT_REDIS_PORT
    if port == 0:
        raise ValueError("REDIS_URL: port must be between 1 and 65535")
    return RedisTarget(host, port, db, password, username, False)


def parse_redis_url(url: str) -> tuple[str, int | None, int, str | None]:
    """``(host, port, db, password)`` of a ``REDIS_URL``; ValueError says what is wrong.

    Pure, so the configuration layer can reject a bad URL at startup with one clear message
    instead of a connection that never works. Accepts ``redis://[user:password@]host[:port]
    [/db]`` and ``unix:///path[?db=N]`` (host is then the socket path and port None).
    """
    target = parse_redis_target(url)
    return target.host, target.port, target.db, target.password


# --- shared behaviour -------------------------------------------------------------------------


def _ttl_ms(ttl: float) -> int:
    """Redis PX milliseconds of a TTL in seconds; rejects what Redis would reject."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) \
            or ttl <= 0:
        raise ValueError("ttl must be a positive number of seconds")
    return max(1, round(ttl * 1000))


def _check_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError("key must be a str")
    return PREFIX + key


def _check_value(value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise TypeError("value must be bytes")
    return bytes(value)


class _MeteredStore:
    """Argument checks and ``gateway_cache_operations_total`` for every store.

    Subclasses implement the ``_do_*`` methods with full (prefixed) keys; the public
    methods validate arguments the same way for both stores, so a mistake fails the same
    in tests (memory) and in production (Redis).
    """

    kind = "abstract"

    def __init__(self, metrics: GatewayMetrics | None) -> None:
        self._counter = metrics.cache_operations if metrics is not None else None
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
            self._counter.labels(operation, result).inc()

    def get(self, key: str) -> Deferred[bytes | None]:
        return self._run("get", lambda: self._do_get(_check_key(key)),
                         lambda value: "miss" if value is None else "hit")

    def set(self, key: str, value: bytes, ttl: float | None = None) -> Deferred[None]:
        return self._run("set", lambda: self._do_set(
            _check_key(key), _check_value(value), None if ttl is None else _ttl_ms(ttl)))

    def set_if_absent(self, key: str, value: bytes, ttl: float) -> Deferred[bool]:
        return self._run("set_if_absent", lambda: self._do_set_if_absent(
            _check_key(key), _check_value(value), _ttl_ms(ttl)))

    def delete(self, *keys: str) -> Deferred[int]:
        return self._run("delete", lambda: self._do_delete([_check_key(k) for k in keys]))

    def incr(self, key: str, ttl: float | None = None) -> Deferred[int]:
        return self._run("incr", lambda: self._do_incr(
            _check_key(key), None if ttl is None else _ttl_ms(ttl)))

    def compare_and_delete(self, key: str, value: bytes) -> Deferred[bool]:
        return self._run("compare_and_delete", lambda: self._do_compare_and_delete(
            _check_key(key), _check_value(value)))

    def extend_if_equal(self, key: str, value: bytes, ttl: float) -> Deferred[bool]:
        return self._run("extend_if_equal", lambda: self._do_extend_if_equal(
            _check_key(key), _check_value(value), _ttl_ms(ttl)))

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

    def _do_ping(self) -> Deferred[float] | float:
        raise NotImplementedError

    def _do_close(self) -> Deferred[None] | None:
        return None


# --- in memory --------------------------------------------------------------------------------

_INTEGER = re.compile(rb"-?(0|[1-9][0-9]*)")
_INT64 = (-(2**63), 2**63 - 1)


class MemoryKeyValueStore(_MeteredStore):
    """Single-node store with Redis semantics, timed only by the injected clock.

    Expired keys are invisible at once and purged lazily; every write also purges what
    has expired (a heap ordered by expiry makes that cheap), so memory stays bounded
    by the live keys.
    """

    kind = "memory"

    def __init__(self, clock: IReactorTime, metrics: GatewayMetrics | None = None) -> None:
        super().__init__(metrics)
        self._clock = clock
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._expiries: list[tuple[float, str]] = []

    @property
    def held(self) -> int:
        """Keys held in memory, expired ones not yet purged included."""
        return len(self._data)

    def keys(self) -> list[str]:
        """Live keys as stored (with prefix)."""
        return [k for k in list(self._data) if self._live(k) is not None]

    def remaining_ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires, None when it has no expiry or does not exist."""
        entry = self._live(_check_key(key))
        if entry is None or entry[1] is None:
            return None
        return entry[1] - self._clock.seconds()

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        entry = self._data.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= self._clock.seconds():
            del self._data[key]
            return None
        return entry

    def _purge(self) -> None:
        now = self._clock.seconds()
        heap = self._expiries
        while heap and heap[0][0] <= now:
            expiry, key = heapq.heappop(heap)
            entry = self._data.get(key)
            if entry is not None and entry[1] == expiry:
                del self._data[key]
        # Overwritten keys leave stale heap entries; rebuild before they pile up.
        if len(heap) > 2 * len(self._data) + 64:
            self._expiries = [(e, k) for k, (_, e) in self._data.items() if e is not None]
            heapq.heapify(self._expiries)

    def _put(self, key: str, value: bytes, expiry: float | None) -> None:
        self._data[key] = (value, expiry)
        if expiry is not None:
            heapq.heappush(self._expiries, (expiry, key))

    def _expiry(self, ttl_ms: int | None) -> float | None:
        return None if ttl_ms is None else self._clock.seconds() + ttl_ms / 1000

    def _do_get(self, key: str) -> bytes | None:
        entry = self._live(key)
        return None if entry is None else entry[0]

    def _do_set(self, key: str, value: bytes, ttl_ms: int | None) -> None:
        self._purge()
        self._put(key, value, self._expiry(ttl_ms))  # like SET: drops an earlier TTL

    def _do_set_if_absent(self, key: str, value: bytes, ttl_ms: int) -> bool:
        self._purge()
        if self._live(key) is not None:
            return False
        self._put(key, value, self._expiry(ttl_ms))
        return True

    def _do_delete(self, keys: list[str]) -> int:
        self._purge()
        deleted = 0
        for key in dict.fromkeys(keys):
            if self._live(key) is not None:
                del self._data[key]
                deleted += 1
        return deleted

    def _do_incr(self, key: str, ttl_ms: int | None) -> int:
        self._purge()
        entry = self._live(key)
        if entry is None:
            self._put(key, b"1", self._expiry(ttl_ms))
            return 1
        value, expiry = entry
        if not _INTEGER.fullmatch(value) or not _INT64[0] <= int(value) < _INT64[1]:
            raise KVError("value is not an integer or out of range")
        result = int(value) + 1
        self._data[key] = (str(result).encode(), expiry)  # like INCR: keeps the TTL
        return result

    def _do_compare_and_delete(self, key: str, value: bytes) -> bool:
        self._purge()
        entry = self._live(key)
        if entry is None or entry[0] != value:
            return False
        del self._data[key]
        return True

    def _do_extend_if_equal(self, key: str, value: bytes, ttl_ms: int) -> bool:
        self._purge()
        entry = self._live(key)
        if entry is None or entry[0] != value:
            return False
        self._put(key, value, self._expiry(ttl_ms))
        return True

    def _do_ping(self) -> float:
        return 0.0


# --- Redis ------------------------------------------------------------------------------------

_INCR_WITH_TTL = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local value = redis.call('INCR', KEYS[1])
if created then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return value
"""
_COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: Failures that mean "Redis is not reachable", as opposed to an error reply.
_UNAVAILABLE = (txredisapi.ConnectionError, defer.TimeoutError, ConnectError)


class RedisKeyValueStore(_MeteredStore):
    """Redis through a txredisapi lazy connection pool that reconnects by itself.

    Commands fail fast instead of hanging when Redis is gone: txredisapi would otherwise
    queue them until a connection comes back. While the pool is known to be empty a
    command fails at once; otherwise it is bounded by ``command_timeout``. txredisapi's
    own reply timeout (the same length, started when the command is written) aborts a
    connection to a server that stopped answering, so it is replaced rather than reused.

    The pool's size and "ready" Deferred are txredisapi internals (``_factory.size``,
    ``_connected``); without them only the fast failure while down is lost.
    """

    kind = "redis"

    def __init__(self, reactor: IReactorTime, url: str, password: str | None,
                 metrics: GatewayMetrics | None, *, pool_size: int = DEFAULT_POOL_SIZE,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 command_timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        super().__init__(metrics)
        target = parse_redis_target(url)
        self._reactor = reactor
        self._timeout = command_timeout
        self._address = {"host": target.host, "port": target.port}
        self._down = False
        self._was_connected = False
        self._refused_reason: str | None = None
        options: dict[str, Any] = {
            "dbid": target.db or None, "poolsize": pool_size, "reconnect": True,
            "charset": None, "convertNumbers": False,  # values are bytes, never decoded
            "password": password or target.password,
            "connectTimeout": connect_timeout, "replyTimeout": command_timeout,
        }
        if target.username:
            options["username"] = target.username
        if target.unix:
            self._conn = txredisapi.lazyUnixConnectionPool(target.host, **options)
        else:
            self._conn = txredisapi.lazyConnectionPool(target.host, target.port, **options)
        # A refused AUTH or SELECT fails the pool's "ready" Deferred, which nobody else
        # waits on; txredisapi then stops reconnecting for good, so say so once.
        ready = getattr(self._conn, "_connected", None)
        if isinstance(ready, Deferred):
            ready.addErrback(self._refused)

    def _refused(self, failure: Failure) -> None:
        self._refused_reason = failure.getErrorMessage()
        log.error("Redis refused the connection and will not be retried ({reason}); "
                  "check REDIS_PASSWORD and the database number in REDIS_URL",
                  reason=failure.getErrorMessage(), **self._address)

    def __repr__(self) -> str:
        return f"<RedisKeyValueStore {self._address['host']}:{self._address['port']}>"

    @property
    def available(self) -> bool:
        """False from a connection failure until a command succeeds again."""
        return not self._down

    def _pool_size(self) -> int | None:
        """Connections currently usable, None if this txredisapi does not expose it."""
        size = getattr(getattr(self._conn, "_factory", None), "size", None)
        return size if isinstance(size, int) else None

    def _command(self, name: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        if self._refused_reason is not None:
            return defer.fail(KVUnavailableError(
                f"Redis refused the connection: {self._refused_reason}"))
        size = self._pool_size()
        if size:
            self._was_connected = True
        elif size == 0 and (self._down or self._was_connected):
            # Waiting would only queue the command until the pool reconnects.
            return defer.fail(KVUnavailableError("Redis is not connected"))
        d: Deferred[Any] = maybeDeferred(getattr(self._conn, name), *args, **kwargs)
        # A little longer than the reply timeout, which fires first on a live connection
        # and also drops it; this one covers waiting for a connection that never comes.
        d.addTimeout(self._timeout + 0.25, self._reactor)
        return d.addCallbacks(self._succeeded, self._failed)

    def _succeeded(self, result: T) -> T:
        if self._down:
            self._down = False
            log.info("Redis is available again", **self._address)
        return result

    def _failed(self, failure: Failure) -> Failure:
        if failure.check(txredisapi.ResponseError):
            raise KVError(f"Redis error reply: {failure.getErrorMessage()}")
        if failure.check(*_UNAVAILABLE):
            if failure.check(txredisapi.TimeoutError):
                reason = f"no reply within {self._timeout:g} s"
            elif failure.check(defer.TimeoutError):
                reason = f"no connection or no reply within {self._timeout:g} s"
            else:
                reason = failure.getErrorMessage() or failure.type.__name__
            if not self._down:
                self._down = True
                log.warn("Redis is unavailable ({reason}); key-value operations fail "
                         "until it is back", reason=reason, **self._address)
            raise KVUnavailableError(f"Redis unavailable: {reason}")
        return failure

    def _do_get(self, key: str) -> Deferred[bytes | None]:
        return self._command("get", key)

    def _do_set(self, key: str, value: bytes, ttl_ms: int | None) -> Deferred[None]:
        return self._command("set", key, value, pexpire=ttl_ms).addCallback(lambda _: None)

    def _do_set_if_absent(self, key: str, value: bytes, ttl_ms: int) -> Deferred[bool]:
        return self._command("set", key, value, pexpire=ttl_ms, only_if_not_exists=True) \
            .addCallback(lambda reply: reply is not None)

    def _do_delete(self, keys: list[str]) -> Deferred[int] | int:
        if not keys:
            return 0
        return self._command("delete", keys)

    def _do_incr(self, key: str, ttl_ms: int | None) -> Deferred[int]:
        if ttl_ms is None:
            return self._command("incr", key)
        return self._command("eval", _INCR_WITH_TTL, [key], [ttl_ms])

    def _do_compare_and_delete(self, key: str, value: bytes) -> Deferred[bool]:
        return self._command("eval", _COMPARE_AND_DELETE, [key], [value]) \
            .addCallback(lambda n: n == 1)

    def _do_extend_if_equal(self, key: str, value: bytes, ttl_ms: int) -> Deferred[bool]:
        return self._command("eval", _EXTEND_IF_EQUAL, [key], [value, ttl_ms]) \
            .addCallback(lambda n: n == 1)

    def _do_ping(self) -> Deferred[float]:
        start = self._reactor.seconds()
        return self._command("ping").addCallback(lambda _: self._reactor.seconds() - start)

    def _do_close(self) -> Deferred[None]:
        return self._conn.disconnect()


def make_kv_store(reactor: IReactorTime, url: str | None, password: str | None,
                  metrics: GatewayMetrics | None) -> KeyValueStore:
    """Redis when ``REDIS_URL`` is set, else the in-memory store (single node only)."""
    if not url:
        return MemoryKeyValueStore(reactor, metrics)
    return RedisKeyValueStore(reactor, url, password, metrics)


def readiness_check(store: KeyValueStore) -> Callable[[], Deferred[tuple[bool, str | None]]]:
    """A ``/health/ready`` check: the store answers a ping (the in-memory one always does)."""

    def check() -> Deferred[tuple[bool, str | None]]:
        detail = "in-memory (single node)" if store.kind == "memory" else None
        return store.ping().addCallback(lambda _: (True, detail))

    return check


# --- cache ------------------------------------------------------------------------------------


class KVCache:
    """JSON cache-aside on a store, for lookups that can always fall back to the database.

    Store failures never reach the caller: a failed read is a miss, a failed write or
    invalidation is dropped. They are counted by the store (``result="error"``) and logged
    once per failure streak. An invalidation that fails is remembered and retried, and the
    key is read as a miss meanwhile, so a change made during an outage is not hidden by a
    stale entry once Redis is back.
    """

    #: Failed invalidations kept for retry; beyond this the oldest are dropped (they
    #: still expire with their TTL).
    MAX_PENDING_INVALIDATIONS = 10_000

    def __init__(self, store: KeyValueStore, prefix: str, ttl: float) -> None:
        _ttl_ms(ttl)
        self._store = store
        self._name = prefix or "(unprefixed)"
        self._prefix = f"{prefix}:" if prefix else ""
        self._ttl = ttl
        self._failing = False
        self._pending: dict[str, None] = {}

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
        if not self._failing:
            self._failing = True
            log.warn("Cache {cache} unavailable, falling through to the database: {reason}",
                     cache=self._name,
                     reason=failure.getErrorMessage() or failure.type.__name__)
        return default

    def get_json(self, key: str) -> Deferred[Any | None]:
        full = self._key(key)

        def decode(raw: bytes | None) -> Any | None:
            stale = full in self._pending  # checked before _ok() may retry the delete
            self._ok(None)
            if raw is None or stale:
                return None
            try:
                return json.loads(raw)
            except ValueError:
                return None  # written by something else; the next set_json replaces it

        return self._store.get(full).addCallbacks(decode, self._swallow, errbackArgs=(None,))

    def set_json(self, key: str, value: Any) -> Deferred[None]:
        """Store ``value``; a value JSON cannot encode is the caller's bug and fails."""
        try:
            raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError):
            return defer.fail()
        return self._store.set(self._key(key), raw, self._ttl).addCallback(self._ok) \
            .addErrback(self._swallow, None)

    def invalidate(self, key: str) -> Deferred[None]:
        full = self._key(key)

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

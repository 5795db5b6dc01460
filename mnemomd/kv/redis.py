"""The Redis store: txredisapi's lazy pool, every command bounded in time.

Redis may go away at any time. Every command is bounded by a short timeout and fails at
once while the connection is known to be down, so a request never waits on a dead server;
the pool reconnects on its own. The Redis password is never logged.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd.kv.base import LOG_NAMESPACE, KVError, KVUnavailableError, MeteredStore, T
from mnemomd.kv.target import parse_redis_target
from mnemomd.ops.dependency import DependencyState
from mnemomd.ops.metrics import GatewayMetrics

log = Logger(namespace=LOG_NAMESPACE)

#: Bound on one Redis command: long enough for a loaded server, short enough that a
#: request path doing a few lookups stays responsive while Redis is unreachable.
DEFAULT_COMMAND_TIMEOUT = 1.0
#: Bound on one TCP connect, so a blackholed Redis host fails fast too.
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_POOL_SIZE = 2

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
# ARGV: expect-absent flag, expected value, new value, TTL in ms ('' for none). A missing
# key reads as false, which equals no string, so "expected X" fails on a missing key.
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
"""

#: Failures that mean "Redis is not reachable", as opposed to an error reply.
_UNAVAILABLE = (txredisapi.ConnectionError, defer.TimeoutError, ConnectError)


class RedisKeyValueStore(MeteredStore):
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
                 command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
                 state: DependencyState | None = None) -> None:
        """``state``, when given, hears of every command's success or failure and logs
        the outages (one line per change, a periodic summary); without it this store
        logs each change itself."""
        super().__init__(metrics)
        self._state = state
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

    @property
    def connections(self) -> int | None:
        """Connections currently usable, None if this txredisapi does not expose it."""
        size = getattr(getattr(self._conn, "_factory", None), "size", None)
        return size if isinstance(size, int) else None

    def _command(self, name: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        if self._refused_reason is not None:
            return self._unavailable(KVUnavailableError(
                f"Redis refused the connection: {self._refused_reason}"))
        size = self.connections
        if size:
            self._was_connected = True
        elif size == 0 and (self._down or self._was_connected):
            # Waiting would only queue the command until the pool reconnects.
            return self._unavailable(KVUnavailableError("Redis is not connected"))
        d: Deferred[Any] = maybeDeferred(getattr(self._conn, name), *args, **kwargs)
        # A little longer than the reply timeout, which fires first on a live connection
        # and also drops it; this one covers waiting for a connection that never comes.
        d.addTimeout(self._timeout + 0.25, self._reactor)
        return d.addCallbacks(self._succeeded, self._failed)

    def _unavailable(self, error: KVUnavailableError) -> Deferred[Any]:
        if self._state is not None:
            self._state.failed(error)
        return defer.fail(error)

    def _succeeded(self, result: T) -> T:
        if self._state is not None:
            self._state.succeeded()
        if self._down:
            self._down = False
            if self._state is None:
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
                if self._state is None:
                    log.warn("Redis is unavailable ({reason}); key-value operations fail "
                             "until it is back", reason=reason, **self._address)
            error = KVUnavailableError(f"Redis unavailable: {reason}")
            if self._state is not None:
                self._state.failed(error)
            raise error
        return failure

    def _do_get(self, key: str) -> Deferred[bytes | None]:
        return self._command("get", key)

    def _do_get_many(self, keys: list[str]) -> Deferred[list[bytes | None]]:
        if not keys:
            return defer.succeed([])
        return self._command("mget", keys).addCallback(list)

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

    def _do_compare_and_set(self, key: str, expected: bytes | None, value: bytes,
                            ttl_ms: int | None) -> Deferred[bool]:
        # A script rather than WATCH/MULTI: it needs no connection pinned to one caller
        # (the pool is shared by every request) and no retry inside the store.
        args: list[bytes | int] = [b"1" if expected is None else b"0", expected or b"",
                                   value, b"" if ttl_ms is None else ttl_ms]
        return self._command("eval", _COMPARE_AND_SET, [key], args) \
            .addCallback(lambda n: n == 1)

    def _do_ping(self) -> Deferred[float]:
        start = self._reactor.seconds()
        return self._command("ping").addCallback(lambda _: self._reactor.seconds() - start)

    def _do_close(self) -> Deferred[None]:
        return self._conn.disconnect()

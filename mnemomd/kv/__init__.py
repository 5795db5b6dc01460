"""Key-value store behind the agent cache, session windows, drift state, nudge flags,
license state and leases (SPEC §9.4).

``REDIS_URL`` set: Redis through txredisapi (``redis.py``), so replicas share state. Unset:
an in-memory store with the same interface and the same TTL semantics (``memory.py``), for
a single node. Callers give keys without prefix; both stores keep them under ``mnemom:``
so a shared Redis can hold other applications' data too. ``base.py`` holds what both share
(the interface, argument checks, metrics), ``target.py`` the ``REDIS_URL`` parsing, and
``cache.py`` :class:`KVCache`, which turns store failures into cache misses so lookups fall
through to the database and the gateway keeps serving while Redis is away.

Values may be derived from user data and are never logged; neither is the Redis password.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from mnemomd.kv.base import (
    PREFIX,
    KeyValueStore,
    KVError,
    KVUnavailableError,
    readiness_check,
)
from mnemomd.kv.cache import KVCache
from mnemomd.kv.memory import MemoryKeyValueStore
from mnemomd.kv.redis import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_POOL_SIZE,
    RedisKeyValueStore,
)
from mnemomd.kv.target import DEFAULT_REDIS_PORT, RedisTarget, parse_redis_target, parse_redis_url
from mnemomd.ops.dependency import DependencyState
from mnemomd.ops.metrics import GatewayMetrics

__all__ = [
    "DEFAULT_COMMAND_TIMEOUT", "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_POOL_SIZE",
    "DEFAULT_REDIS_PORT", "PREFIX", "KVCache", "KVError", "KVUnavailableError",
    "KeyValueStore", "MemoryKeyValueStore", "RedisKeyValueStore", "RedisTarget",
    "make_kv_store", "parse_redis_target", "parse_redis_url", "readiness_check",
]


def make_kv_store(reactor: IReactorTime, url: str | None, password: str | None,
                  metrics: GatewayMetrics | None,
                  state: DependencyState | None = None) -> KeyValueStore:
    """Redis when ``REDIS_URL`` is set, else the in-memory store (single node only).
    ``state`` tracks Redis outages (the in-memory store has none)."""
    if not url:
        return MemoryKeyValueStore(reactor, metrics)
    return RedisKeyValueStore(reactor, url, password, metrics, state=state)

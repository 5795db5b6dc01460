"""The in-memory store: one node, Redis semantics, time from the injected clock only."""

from __future__ import annotations

import heapq
import re

from twisted.internet.interfaces import IReactorTime

from mnemomd.kv.base import KVError, MeteredStore, check_key
from mnemomd.ops.metrics import GatewayMetrics

_INTEGER = re.compile(rb"-?(0|[1-9][0-9]*)")
_INT64 = (-(2**63), 2**63 - 1)


class MemoryKeyValueStore(MeteredStore):
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
        entry = self._live(check_key(key))
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

    def _do_get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self._do_get(key) for key in keys]

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

    def _do_compare_and_set(self, key: str, expected: bytes | None, value: bytes,
                            ttl_ms: int | None) -> bool:
        # Atomic because it runs to completion on the reactor thread: no other operation
        # can come between the comparison and the write.
        self._purge()
        entry = self._live(key)
        current = None if entry is None else entry[0]
        if current != expected:
            return False
        self._put(key, value, self._expiry(ttl_ms))  # like SET: drops an earlier TTL
        return True

    def _do_ping(self) -> float:
        return 0.0

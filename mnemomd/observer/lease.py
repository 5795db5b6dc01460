"""Leases, so that with several scheduler processes each job runs in one at a time (§8.3).

Two stores hold leases. With Redis, a lease is a key set only if absent (``SET NX PX``)
holding the owner's id. Without Redis but with PostgreSQL (several schedulers sharing a
database), a lease is a row in ``job_leases`` taken by a conditional upsert. Either way a
lease expires on its own if its owner dies, is renewed while a long run goes on, and is
released after each run. With SQLite and the in-memory KV there is one process by
definition and the in-memory lease always grants.

Leases keep jobs from duplicating work; correctness does not rest on them alone: outbox
rows and webhook deliveries are also claimed row by row.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mnemomd.kv import KeyValueStore
from mnemomd.storage.database import Cursor, Database

log = Logger()


def lease_owner() -> str:
    """This process's identity among schedulers (unique per start)."""
    return f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"


class LeaseStore(Protocol):
    def acquire(self, name: str, owner: str, ttl: float) -> Deferred[bool]: ...

    def renew(self, name: str, owner: str, ttl: float) -> Deferred[bool]: ...

    def release(self, name: str, owner: str) -> Deferred[Any]: ...


class KVLeases:
    def __init__(self, kv: KeyValueStore) -> None:
        self._kv = kv

    def acquire(self, name: str, owner: str, ttl: float) -> Deferred[bool]:
        return self._kv.set_if_absent(f"lease:{name}", owner.encode(), ttl)

    def renew(self, name: str, owner: str, ttl: float) -> Deferred[bool]:
        return self._kv.extend_if_equal(f"lease:{name}", owner.encode(), ttl)

    def release(self, name: str, owner: str) -> Deferred[Any]:
        return self._kv.compare_and_delete(f"lease:{name}", owner.encode())


def _take(cursor: Cursor, name: str, owner: str, now_ms: int, ttl_ms: int,
          renew_only: bool) -> bool:
    if not renew_only:
        cursor.execute("INSERT INTO job_leases (name, owner, expires_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (name) DO NOTHING", (name, owner, now_ms + ttl_ms))
    # Taken when free or expired; renewed only by its owner.
    condition = "owner = ?" if renew_only else "(owner = ? OR expires_at < ?)"
    params: tuple[Any, ...] = (owner,) if renew_only else (owner, now_ms)
    cursor.execute(f"UPDATE job_leases SET owner = ?, expires_at = ? WHERE name = ? AND "
                   f"{condition}", (owner, now_ms + ttl_ms, name, *params))
    row = cursor.execute("SELECT owner FROM job_leases WHERE name = ?", (name,)).fetchone()
    return row is not None and row[0] == owner


class DatabaseLeases:
    def __init__(self, db: Database, clock: IReactorTime) -> None:
        self._db = db
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def acquire(self, name: str, owner: str, ttl: float) -> Deferred[bool]:
        return self._db.run_interaction("acquire_lease", _take, name, owner, self._now_ms(),
                                        int(ttl * 1000), False)

    def renew(self, name: str, owner: str, ttl: float) -> Deferred[bool]:
        return self._db.run_interaction("renew_lease", _take, name, owner, self._now_ms(),
                                        int(ttl * 1000), True)

    def release(self, name: str, owner: str) -> Deferred[Any]:
        return self._db.execute("release_lease",
                                "DELETE FROM job_leases WHERE name = ? AND owner = ?",
                                (name, owner))


def lease_store(kv: KeyValueStore, redis_url: str | None, db: Database,
                clock: IReactorTime) -> LeaseStore:
    """Redis when configured; else the database when it is shared (PostgreSQL); else the
    in-memory KV (one process)."""
    if not redis_url and db.engine == "postgresql":
        return DatabaseLeases(db, clock)
    return KVLeases(kv)


def leased(leases: LeaseStore | KeyValueStore, name: str, owner: str, ttl: float,
           func: Callable[[], Any],
           clock: IReactorTime | None = None) -> Callable[[], Deferred[Any]]:
    """``func`` wrapped to run only while this process holds the job's lease.

    A run that cannot take the lease does nothing (another scheduler is running the job);
    a run that fails to reach the lease store does nothing either, rather than risk two
    processes doing the same work. With a ``clock``, the lease is renewed every third of
    its ``ttl`` while ``func`` runs.
    """
    store: LeaseStore = leases if hasattr(leases, "acquire") else KVLeases(leases)  # type: ignore[arg-type, assignment]

    def renew() -> None:
        def lost(held: bool) -> None:
            if not held:
                log.warn("Lost the lease of job {name} while it ran", name=name)

        store.renew(name, owner, ttl).addCallbacks(lost, lambda _: None)

    def run() -> Deferred[Any]:
        def acquired(held: bool) -> Any:
            if not held:
                return None
            renewal = None
            if clock is not None:
                renewal = LoopingCall(renew)
                renewal.clock = clock
                renewal.start(ttl / 3, now=False)

            def release(result: Any) -> Any:
                if renewal is not None and renewal.running:
                    renewal.stop()
                d = store.release(name, owner)
                d.addErrback(lambda _: None)  # it expires on its own
                return d.addCallback(lambda _: result)

            return maybeDeferred(func).addBoth(release)

        d = store.acquire(name, owner, ttl)
        return d.addCallbacks(acquired, lambda _: None)

    return run

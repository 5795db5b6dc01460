"""Leases, so that with several scheduler processes each job runs in one at a time.

A lease is a KV key set only if absent (Redis ``SET NX PX``), holding the owner's id and
expiring on its own if the owner dies. With the in-memory store there is one process by
definition, and the lease is always granted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from mnemomd.kv import KeyValueStore


def lease_owner() -> str:
    """This process's identity among schedulers (unique per start)."""
    return f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"


def leased(kv: KeyValueStore, name: str, owner: str, ttl: float,
           func: Callable[[], Any]) -> Callable[[], Deferred[Any]]:
    """``func`` wrapped to run only while this process holds the job's lease.

    A run that cannot take the lease does nothing (another scheduler is running the job);
    a run that fails to reach the KV store does nothing either, rather than risk two
    processes doing the same work.
    """
    key = f"lease:{name}"
    token = owner.encode()

    def release(result: Any) -> Any:
        d = kv.compare_and_delete(key, token)
        d.addErrback(lambda _: None)  # it expires on its own
        return d.addCallback(lambda _: result)

    def run() -> Deferred[Any]:
        def acquired(held: bool) -> Any:
            if not held:
                return None
            return maybeDeferred(func).addBoth(release)

        d = kv.set_if_absent(key, token, ttl)
        return d.addCallbacks(acquired, lambda _: None)

    return run

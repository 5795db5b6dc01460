"""The ``nudges`` job: pending nudges older than 4 hours expire (SPEC §6.3, §8.2)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mnemomd.enforcement.store import EnforcementStore

log = Logger()


def expire_nudges(clock: IReactorTime, store: EnforcementStore) -> Deferred[Any]:
    def report(count: int) -> int:
        if count:
            log.info("Expired {count} pending nudge(s)", count=count)
        return count

    return store.expire_nudges(int(clock.seconds() * 1000)).addCallback(report)

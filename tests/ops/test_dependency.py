"""DependencyState: an outage is one line when it begins, a summary while it lasts, one
line when it ends; anything that is not an outage error is left to the caller."""

from __future__ import annotations

import sqlite3

from twisted.internet.defer import FirstError
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from mnemomd.ops.dependency import DependencyState, log_failure
from tests.support import capturing_logs


def tracker(clock: Clock) -> DependencyState:
    return DependencyState("database", clock, (sqlite3.OperationalError,),
                           summary_interval=60)


def test_one_line_down_a_summary_per_interval_one_line_back():
    clock = Clock()
    state = tracker(clock)
    with capturing_logs("mnemomd.ops.dependency") as logs:
        for _ in range(4):
            assert state.failed(sqlite3.OperationalError("unable to open database file"))
        clock.advance(60)
        state.failed(Failure(sqlite3.OperationalError("unable to open database file")))
        clock.advance(30)
        state.succeeded()
        state.succeeded()
        clock.advance(600)
    assert [(e["log_level"], e.get("down_seconds"), e.get("failures")) for e in logs.events] \
        == [(LogLevel.warn, None, None), (LogLevel.warn, 60, 4), (LogLevel.info, 90, 5)]
    assert logs.events[0]["reason"] == "unable to open database file"
    assert logs.events[1]["recent"] == 4
    assert not state.down and state.describe() == {}


def test_other_errors_are_not_an_outage():
    state = tracker(Clock())
    assert not state.failed(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not state.down
    wrapped = Failure(FirstError(Failure(sqlite3.OperationalError("locked")), 0))
    assert state.is_outage(wrapped)


def test_log_failure_keeps_tracebacks_for_unknown_errors_only():
    state = tracker(Clock())
    log = Logger(namespace="test.dependency")
    with capturing_logs("test.dependency") as logs:
        log_failure(log, "Read failed", Failure(sqlite3.OperationalError("gone")), [state])
        log_failure(log, "Read failed", Failure(ValueError("a bug")), [state])
    assert [(e["log_level"], "log_failure" in e) for e in logs.events] == \
        [(LogLevel.debug, False), (LogLevel.critical, True)]


def test_describe_while_down():
    clock = Clock()
    state = tracker(clock)
    state.failed(sqlite3.OperationalError("gone"))
    clock.advance(12.5)
    assert state.describe() == {"down_seconds": 12.5, "failed_operations": 1}
    state.stop()
    assert clock.getDelayedCalls() == []

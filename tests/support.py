"""Helpers every test area shares that are not fakes: what a missing outside dependency
means (a skip, or under CI a failure), waiting on the reactor with a deadline, and
capturing log events.
"""

from __future__ import annotations

import os
import unittest
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, LogLevel, globalLogPublisher


def in_ci() -> bool:
    """``CI`` set (to anything but an explicit no): every test must really run."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    """A dependency the test needs is missing: skip, or fail under CI, where a skip would
    hide that the test never ran. Works in pytest functions and trial test cases alike."""
    if in_ci():
        raise AssertionError(f"{reason} (CI is set, so this is a failure, not a skip)")
    raise unittest.SkipTest(reason)


@inlineCallbacks
def poll(check: Callable[[], Any], timeout: float, what: str,
         interval: float = 0.02) -> Any:
    """Wait on the running reactor until ``check()`` (a value or a Deferred of one) is
    truthy, and return it; fail naming ``what`` once ``timeout`` seconds have passed."""
    deadline = reactor.seconds() + timeout
    while True:
        result = yield maybeDeferred(check)
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        yield deferLater(reactor, interval, lambda: None)


def synchronously(func: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Stands in for ``deferToThread`` so a job's CPU work runs inline under trial."""
    return maybeDeferred(func, *args)


def succeeds(make: Callable[[], Deferred[Any]]) -> Deferred[bool]:
    """True if the Deferred from ``make()`` succeeds, False if it fails."""
    return make().addCallbacks(lambda _: True, lambda _: False)


class CapturedLogs:
    """Log events under a namespace prefix, collected while a test runs."""

    def __init__(self, namespace: str = "") -> None:
        self.namespace = namespace
        self.events: list[LogEvent] = []

    def observe(self, event: LogEvent) -> None:
        if str(event.get("log_namespace", "")).startswith(self.namespace):
            self.events.append(event)

    def at(self, level: LogLevel) -> list[LogEvent]:
        return [e for e in self.events if e.get("log_level") == level]


@contextmanager
def capturing_logs(namespace: str = "") -> Iterator[CapturedLogs]:
    """Collect the log events of ``namespace`` (all of them by default) inside the block."""
    logs = CapturedLogs(namespace)
    globalLogPublisher.addObserver(logs.observe)
    try:
        yield logs
    finally:
        globalLogPublisher.removeObserver(logs.observe)


def captured_logs(test: unittest.TestCase, namespace: str = "") -> CapturedLogs:
    """:func:`capturing_logs` for the rest of a (trial or unittest) test."""
    logs = CapturedLogs(namespace)
    globalLogPublisher.addObserver(logs.observe)
    test.addCleanup(globalLogPublisher.removeObserver, logs.observe)
    return logs

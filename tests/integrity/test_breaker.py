"""The circuit breaker's states, driven by a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from mnemomd.integrity.breaker import CircuitBreaker


def fail_times(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        assert breaker.allow()
        breaker.record_failure()


def test_opens_after_consecutive_failures_only():
    breaker = CircuitBreaker(Clock(), failures=5, cooldown=60.0)
    fail_times(breaker, 4)
    assert breaker.allow()
    breaker.record_success()  # a success resets the count
    fail_times(breaker, 4)
    assert breaker.state == "closed"
    fail_times(breaker, 1)
    assert breaker.state == "open"
    assert not breaker.allow()


def test_half_open_admits_one_trial_after_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(clock, failures=5, cooldown=60.0)
    fail_times(breaker, 5)
    clock.advance(59.999)
    assert not breaker.allow()
    clock.advance(0.001)
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow()  # the trial is in flight
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow() and breaker.allow()


def test_failed_trial_reopens_for_a_full_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(clock, failures=2, cooldown=10.0)
    fail_times(breaker, 2)
    clock.advance(10)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.advance(9)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()


def test_abandoned_trial_frees_the_slot():
    clock = Clock()
    breaker = CircuitBreaker(clock, failures=1, cooldown=5.0)
    fail_times(breaker, 1)
    clock.advance(5)
    assert breaker.allow()
    breaker.record_abandoned()
    assert breaker.state == "half_open"
    assert breaker.allow()


def test_late_failures_while_open_do_not_extend_the_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(clock, failures=1, cooldown=5.0)
    fail_times(breaker, 1)
    clock.advance(4)
    breaker.record_failure()  # a call admitted before the breaker opened
    clock.advance(1)
    assert breaker.allow()


def test_rejects_nonsense():
    with pytest.raises(ValueError):
        CircuitBreaker(Clock(), failures=0)

"""PeriodicJob: schedule, no overlap, skipped ticks, errors, and a stop that waits.

Everything runs on ``task.Clock``: a slow run is a Deferred the test fires when it
chooses, so "slower than its interval" is exact and takes no wall-clock time.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mnemomd.ops.jobs import PeriodicJob
from mnemomd.ops.metrics import GatewayMetrics


class Recorder:
    """A job function: counts calls and answers with whatever the test queued."""

    def __init__(self) -> None:
        self.calls = 0
        self.answers: list[Any] = []

    def __call__(self) -> Deferred[None] | None:
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer


def make(interval: float = 10.0) -> tuple[PeriodicJob, Recorder, Clock, GatewayMetrics]:
    clock = Clock()
    metrics = GatewayMetrics(process_collectors=False)
    func = Recorder()
    return PeriodicJob("traces", interval, func, clock, metrics), func, clock, metrics


def runs(metrics: GatewayMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "gateway_cron_runs_total", {"job": "traces", "result": result})
    return value or 0.0


def duration(metrics: GatewayMetrics, suffix: str) -> float:
    value = metrics.registry.get_sample_value(
        f"gateway_cron_duration_seconds_{suffix}", {"job": "traces"})
    return value or 0.0


def test_runs_every_interval_starting_one_interval_in():
    job, func, clock, metrics = make()
    job.start()
    assert func.calls == 0
    for _ in range(3):
        clock.advance(10)
    assert func.calls == 3
    assert runs(metrics, "ok") == 3
    assert duration(metrics, "count") == 3
    assert job.running and not job.busy


def test_start_now_runs_at_once():
    job, func, clock, _ = make()
    job.start(now=True)
    assert func.calls == 1
    clock.advance(10)
    assert func.calls == 2


def test_series_exist_at_zero_before_the_first_run():
    """Dashboards and alerts on rate(...{result="error"}) need the series from the start."""
    _, _, _, metrics = make()
    assert metrics.registry.get_sample_value(
        "gateway_cron_runs_total", {"job": "traces", "result": "error"}) == 0.0


def test_slow_run_is_never_overlapped_and_skipped_ticks_are_counted():
    job, func, clock, metrics = make()
    slow: Deferred[None] = Deferred()
    func.answers.append(slow)
    job.start()
    clock.advance(10)  # run 1 starts and does not finish
    assert job.busy
    clock.advance(10)
    clock.advance(10)  # two ticks while run 1 is still going
    assert func.calls == 1
    assert runs(metrics, "skipped") == 2
    assert runs(metrics, "ok") == 0
    clock.advance(5)
    slow.callback(None)  # run 1 took 25 s
    assert not job.busy
    assert runs(metrics, "ok") == 1
    assert duration(metrics, "sum") == 25.0
    clock.advance(5)  # the schedule was kept: the next tick is at 40 s
    assert func.calls == 2
    assert runs(metrics, "ok") == 2
    assert runs(metrics, "skipped") == 2


def test_error_is_counted_logged_without_data_and_the_loop_continues(log_events):
    job, func, clock, metrics = make()
    func.answers.append(ValueError("row 17: thinking='top secret plan'"))
    failing: Deferred[None] = Deferred()
    func.answers.append(failing)
    job.start()
    clock.advance(10)  # raises synchronously
    clock.advance(3)
    clock.advance(7)  # returns a Deferred ...
    clock.advance(2)
    failing.errback(RuntimeError("upstream said: sk-ant-secret"))  # ... that fails later
    assert runs(metrics, "error") == 2
    assert duration(metrics, "sum") == 2.0  # the failed runs are timed too (0 s + 2 s)
    clock.advance(8)
    assert func.calls == 3
    assert runs(metrics, "ok") == 1
    warnings = [e for e in log_events if e.get("job") == "traces" and e.get("error")]
    assert [e["error"] for e in warnings] == ["ValueError", "RuntimeError"]
    assert "test_jobs.py" in warnings[0]["where"]
    text = repr(warnings)
    assert "top secret" not in text and "sk-ant-secret" not in text


def test_stop_waits_for_the_run_in_progress():
    job, func, clock, metrics = make()
    slow: Deferred[None] = Deferred()
    func.answers.append(slow)
    job.start()
    clock.advance(10)
    stopped = job.stop()
    second_waiter = job.stop()  # stopping twice is fine and waits as well
    assert not job.running
    assert not stopped.called and not second_waiter.called
    clock.advance(30)  # no more ticks once stopped
    assert func.calls == 1
    assert runs(metrics, "skipped") == 0
    slow.callback(None)
    assert stopped.called and second_waiter.called
    assert runs(metrics, "ok") == 1


def test_stop_while_idle_fires_at_once_and_the_job_can_start_again():
    job, func, clock, _ = make()
    job.start()
    clock.advance(10)
    stopped = job.stop()
    assert stopped.called
    job.start()
    clock.advance(10)
    assert func.calls == 2
    assert job.stop().called


def test_stop_after_a_failing_run_still_fires():
    job, func, clock, metrics = make()
    failing: Deferred[None] = Deferred()
    func.answers.append(failing)
    job.start()
    clock.advance(10)
    stopped = job.stop()
    failing.errback(OSError("disk"))
    assert stopped.called and stopped.result is None
    assert runs(metrics, "error") == 1


def test_double_start_and_bad_interval_are_refused():
    job, _, _, metrics = make()
    job.start()
    with pytest.raises(RuntimeError):
        job.start()
    job.stop()
    with pytest.raises(ValueError):
        PeriodicJob("x", 0, lambda: None, Clock(), metrics)

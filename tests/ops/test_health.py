"""Readiness: checks, latency, startup and shutdown states."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mnemomd.ops.dependency import DependencyState
from mnemomd.ops.health import HealthState


def test_ready_only_after_startup_and_not_while_shutting_down():
    health = HealthState(Clock(), "1.0", True)
    assert health.readiness().result == (503, {"status": "starting", "checks": {}})
    assert health.startup()[0] == 503
    health.started = True
    assert health.readiness().result[0] == 200
    assert health.startup()[0] == 200
    health.shutting_down = True
    assert health.readiness().result == (503, {"status": "shutting_down", "checks": {}})


def test_failing_required_check_named_with_latency_is_unavailable():
    clock = Clock()
    health = HealthState(clock, "1.0", True)
    health.started = True
    pending: Deferred = Deferred()
    health.add_check("database", lambda: pending)
    health.add_check("redis", lambda: (True, None))
    result = health.readiness()
    clock.advance(0.25)
    pending.callback((False, "connection refused"))
    status, body = result.result
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["failing"] == ["database"]
    assert body["checks"]["database"] == {"status": "fail", "latency_ms": 250.0,
                                          "detail": "connection refused", "required": True}
    assert body["checks"]["redis"]["status"] == "ok"


def test_failing_check_with_a_fallback_is_degraded_and_still_ready():
    clock = Clock()
    health = HealthState(clock, "1.0", True)
    health.started = True
    state = DependencyState("redis", clock, (ConnectionRefusedError,))
    clock.advance(10)
    state.failed(ConnectionRefusedError("refused"))
    state.failed(ConnectionRefusedError("refused"))
    clock.advance(5)
    health.add_check("redis", lambda: (False, "Redis is not connected"), required=False,
                     fallback=lambda: "reads fall through to the database", state=state)
    health.add_check("license", lambda: (True, None))
    status, body = health.readiness().result
    assert status == 200
    assert body["status"] == "degraded"
    assert body["failing"] == ["redis"]
    assert body["checks"]["redis"] == {
        "status": "fail", "latency_ms": 0.0, "detail": "Redis is not connected",
        "required": False, "fallback": "reads fall through to the database",
        "down_seconds": 5.0, "failed_operations": 2}
    state.stop()


def test_whether_a_check_is_required_is_asked_after_it_ran():
    health = HealthState(Clock(), "1.0", True)
    health.started = True
    known: list[str] = []
    health.add_check("database", lambda: (False, "down"), required=lambda: not known)
    assert health.readiness().result[0] == 503
    known.append("an agent")
    status, body = health.readiness().result
    assert (status, body["status"]) == (200, "degraded")


def test_raising_check_counts_as_failure():
    health = HealthState(Clock(), "1.0", True)
    health.started = True

    def broken():
        raise RuntimeError("down")

    health.add_check("database", broken)
    status, body = health.readiness().result
    assert status == 503
    assert body["checks"]["database"]["detail"] == "down"


def test_legacy_health():
    assert HealthState(Clock(), "9.9", False).legacy() == (
        200, {"status": "ok", "version": "9.9", "aip_enabled": False})


def test_started_callbacks_run_once_when_every_component_is_in():
    health = HealthState(Clock(), "1.0", True)
    health.expect("schema")
    calls = []
    health.when_started(lambda: calls.append("early"))
    health.component_ready("listener")
    assert calls == []
    health.component_ready("schema")
    health.component_ready("schema")
    assert calls == ["early"]
    health.when_started(lambda: calls.append("late"))
    assert calls == ["early", "late"]

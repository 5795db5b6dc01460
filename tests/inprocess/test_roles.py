"""``make_service`` per role: which services and jobs it builds, and what it serves."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from twisted.internet.error import ConnectionRefusedError

from tests.harness import InProcessDaemon

INTERNAL_KEY = "ik-roles"
AUTH = {"authorization": f"Bearer {INTERNAL_KEY}"}
CALL = ("POST", "/anthropic/v1/messages", {"x-api-key": "sk-role"},
        json.dumps({"model": "m", "max_tokens": 16, "messages": []}).encode())
SCHEDULER_JOBS = ["outbox_expiry", "heartbeat", "license", "nudges", "retention", "traces",
                  "drift", "webhooks"]
ROLES = {
    # role: (jobs, serves the proxy and the management API)
    "all": (SCHEDULER_JOBS, True),
    "gateway": (["outbox_expiry"], True),
    "scheduler": (SCHEDULER_JOBS, False),
}


@pytest.fixture(params=sorted(ROLES))
def role(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def daemon_in_role(make_daemon: Callable[..., InProcessDaemon], role: str) -> InProcessDaemon:
    return make_daemon(MNEMOM_ROLE=role, INTERNAL_API_KEY=INTERNAL_KEY)


def test_every_role_has_storage_jobs_and_a_listener(daemon_in_role: InProcessDaemon, role: str):
    service = daemon_in_role.service
    assert [child.name for child in service] == ["storage", "scheduler", "writer", "gateway"]
    jobs = service.getServiceNamed("scheduler").jobs  # type: ignore[attr-defined]
    assert [job.name for job in jobs] == ROLES[role][0]
    assert all(job.running for job in jobs)


def test_what_each_role_serves(daemon_in_role: InProcessDaemon, role: str):
    serves_calls = ROLES[role][1]
    proxied = daemon_in_role.request(*CALL)
    api = daemon_in_role.request("GET", "/v1/agents", AUTH)
    assert (proxied.status, api.status) == ((200, 200) if serves_calls else (404, 404))
    assert len(daemon_in_role.upstream.requests) == (1 if serves_calls else 0)
    for path in ("/health/live", "/health/startup", "/health/ready", "/metrics"):
        assert daemon_in_role.request("GET", path).status == 200, path


def test_scheduler_jobs_tick_on_the_clock(make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(MNEMOM_ROLE="scheduler", OBSERVER_NUDGES_INTERVAL_SECONDS="60")

    def nudge_runs() -> str:
        metrics = daemon.request("GET", "/metrics").body.decode()
        line = 'gateway_cron_runs_total{job="nudges",result="ok"}'
        return next((row.split()[-1] for row in metrics.splitlines()
                     if row.startswith(line)), "0")

    daemon.advance(59)
    assert nudge_runs() in ("0", "0.0")
    daemon.advance(1)
    assert nudge_runs() == "1.0"


def test_a_gateway_stops_with_a_stream_in_flight_after_its_grace(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(MNEMOM_ROLE="gateway", SHUTDOWN_GRACE_SECONDS="10")
    method, path, headers, _ = CALL
    body = json.dumps({"model": "m", "max_tokens": 16, "stream": True,
                       "messages": []}).encode()
    exchange = daemon.request(method, path, headers | {"x-fake-scenario": "gated:g"}, body)
    assert exchange.status == 200 and not exchange.complete
    stopped = daemon.shut_down()
    daemon.advance(9.9)
    assert not stopped.called, "an in-flight stream has its grace period"
    late = daemon.request("GET", "/health/live")
    daemon.advance(0.3)  # the client's connection attempt gives up after its attempt delay
    assert late.failure is not None and late.failure.check(ConnectionRefusedError)
    assert stopped.called
    assert not exchange.complete and exchange.failure is not None

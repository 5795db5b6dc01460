"""Decisions while the database and the KV store are down, in process: the last known
state of each agent decides (a paused agent stays paused, a killed key stays held, an
``enforce`` agent stays blocked), an agent never seen is decided by ``AIP_FAILURE_MODE``,
readiness says ``degraded`` where the gateway can serve, and the outage is logged once
per change, not once per call."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from twisted.logger import LogLevel

from tests.fakes import canned
from tests.harness import InProcessDaemon
from tests.integrity.fakes import VERDICT_VIOLATION
from tests.support import capturing_logs

INTERNAL_KEY = "ik-storage-outage"
AUTH = {"authorization": f"Bearer {INTERNAL_KEY}"}
JSON = {"content-type": "application/json"}
KEY = {"x-api-key": "sk-ant-outage-key"}
BODY = json.dumps({"model": "claude-x", "max_tokens": 2048,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()
MODES = ["fail_open", "fail_closed"]


def route(name: str | None = None) -> str:
    return "/anthropic/v1/messages" if name is None else f"/agent/{name}/anthropic/v1/messages"


def call(daemon: InProcessDaemon, name: str | None = None,
         key: dict[str, str] = KEY) -> tuple[int | None, dict | None]:
    """(status, the JSON error body or None) of one call."""
    exchange = daemon.request("POST", route(name), key | JSON, BODY)
    assert exchange.complete, exchange.failure
    return exchange.status, exchange.json() if exchange.status != 200 else None


def agent_id(daemon: InProcessDaemon, name: str | None = None) -> str:
    exchange = daemon.request("POST", route(name), KEY | JSON, BODY)
    assert exchange.status == 200
    return exchange.header("x-mnemom-agent")


def contain(daemon: InProcessDaemon, agent: str, action: str, **body: str) -> None:
    exchange = daemon.request("POST", f"/v1/agents/{agent}/containment/{action}",
                              AUTH | JSON, json.dumps(body).encode())
    assert exchange.status == 200, exchange.body


def readiness(daemon: InProcessDaemon) -> tuple[int | None, dict]:
    exchange = daemon.request("GET", "/health/ready")
    return exchange.status, exchange.json()


def contained(scope: str, status: str) -> tuple[int, dict]:
    return 403, {"error": "Agent contained", "type": "containment_error",
                 "reason": f"agent_{status}", "scope": scope}


@pytest.mark.parametrize("mode", MODES)
def test_a_paused_agent_stays_refused_with_database_and_kv_down(
        make_daemon: Callable[..., InProcessDaemon], mode: str):
    daemon = make_daemon(INTERNAL_API_KEY=INTERNAL_KEY, AIP_FAILURE_MODE=mode)
    contain(daemon, agent_id(daemon), "pause", reason="investigating")
    forwarded = len(daemon.upstream.requests)
    daemon.fail_storage()
    for _ in range(3):
        assert call(daemon) == contained("agent", "paused")
    daemon.advance(300)  # past the KV cache's TTL: memory holds for as long as it lasts
    assert call(daemon) == contained("agent", "paused")
    assert len(daemon.upstream.requests) == forwarded, "nothing reached the upstream"
    daemon.restore_storage()
    assert call(daemon) == contained("agent", "paused")


def test_a_pause_made_by_another_process_reaches_memory_through_the_change_poll(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(INTERNAL_API_KEY=INTERNAL_KEY)
    agent = agent_id(daemon)
    daemon.rows("UPDATE agents SET containment_status = 'paused', updated_at = ? "
                "WHERE id = ?", (int(daemon.reactor.seconds() * 1000) + 1, agent))
    daemon.advance(2)  # the directory's change poll
    daemon.fail_storage()
    assert call(daemon) == contained("agent", "paused")


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_key_stays_held_under_every_name(
        make_daemon: Callable[..., InProcessDaemon], mode: str):
    daemon = make_daemon(INTERNAL_API_KEY=INTERNAL_KEY, AIP_FAILURE_MODE=mode,
                         AIP_ENABLED="false")
    plain = agent_id(daemon)
    agent_id(daemon, "x")
    contain(daemon, plain, "kill", reason="exfiltration")
    forwarded = len(daemon.upstream.requests)
    daemon.fail_storage()
    assert call(daemon) == contained("key", "killed")
    assert call(daemon, "x") == contained("key", "killed")
    assert call(daemon, "first-used-in-the-outage") == contained("key", "killed")
    assert len(daemon.upstream.requests) == forwarded, "nothing reached the upstream"


def test_an_unknown_agent_is_forwarded_as_observe_under_fail_open(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(AIP_DEFAULT_ENFORCEMENT="enforce")
    daemon.fail_storage()
    exchange = daemon.request("POST", route(), KEY | JSON, BODY)
    assert exchange.status == 200
    assert exchange.header("x-mnemom-agent").startswith("smolt-")
    assert exchange.header("x-aip-enforcement") == "observe"
    assert len(daemon.upstream.requests) == 1


def test_an_unknown_agent_is_refused_under_fail_closed_and_nothing_is_forwarded(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(AIP_FAILURE_MODE="fail_closed")
    agent_id(daemon, "known")
    daemon.fail_storage()
    exchange = daemon.request("POST", route("never-seen"), KEY | JSON, BODY)
    assert exchange.status == 503
    body = exchange.json()
    assert body["type"] == "gateway_unavailable" and "fail_closed" in body["error"]
    assert exchange.header("retry-after") == "5"
    assert len(daemon.upstream.requests) == 1, "only the call made before the outage"
    # The agent it knows is still served.
    assert call(daemon, "known")[0] == 200
    assert len(daemon.upstream.requests) == 2


@pytest.mark.parametrize("database, kv", [(True, False), (True, True)])
def test_enforce_blocks_a_violation_when_its_bookkeeping_fails(
        make_daemon: Callable[..., InProcessDaemon], database: bool, kv: bool):
    daemon = make_daemon(AIP_DEFAULT_ENFORCEMENT="enforce")
    daemon.analysis.default = VERDICT_VIOLATION
    assert call(daemon)[0] == 403  # known, and its card read, while storage is up
    daemon.fail_storage(database=database, kv=kv)
    for _ in range(3):
        exchange = daemon.request("POST", route(), KEY | JSON, BODY)
        assert exchange.status == 403
        assert exchange.json()["type"] == "integrity_violation"
        assert exchange.header("x-aip-verdict") == "boundary_violation"
        assert canned.THINKING_TEXT.encode() not in exchange.body
    assert len(daemon.upstream.requests) == 4
    daemon.restore_storage()


def test_readiness_is_degraded_and_names_what_failed_while_the_gateway_can_serve(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon()
    agent_id(daemon)
    daemon.fail_storage()
    status, body = readiness(daemon)
    assert (status, body["status"]) == (200, "degraded")
    assert body["failing"] == ["database", "redis"]
    database = body["checks"]["database"]
    assert database["status"] == "fail" and database["required"] is False
    assert database["fallback"] == ("last known state of 1 agent(s) in memory; agents not "
                                    "in memory are forwarded as observe (fail_open)")
    assert database["failed_operations"] >= 1 and "down_seconds" in database
    assert body["checks"]["redis"]["fallback"] == "reads fall through to the database"
    daemon.restore_storage()
    status, body = readiness(daemon)
    assert (status, body["status"]) == (200, "ok") and "failing" not in body


def test_readiness_under_fail_closed_is_503_until_some_agent_state_is_known(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(AIP_FAILURE_MODE="fail_closed")
    daemon.fail_storage()
    status, body = readiness(daemon)
    assert (status, body["status"]) == (503, "unavailable")
    assert body["checks"]["database"]["required"] is True
    daemon.restore_storage()
    agent_id(daemon)
    daemon.fail_storage()
    status, body = readiness(daemon)
    assert (status, body["status"]) == (200, "degraded")
    assert "refused (503 gateway_unavailable, fail_closed)" in \
        body["checks"]["database"]["fallback"]
    daemon.restore_storage()


def test_an_outage_logs_one_line_per_change_and_a_summary_not_a_traceback_per_call(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(AIP_DEFAULT_ENFORCEMENT="enforce")
    daemon.analysis.default = VERDICT_VIOLATION
    assert call(daemon)[0] == 403
    with capturing_logs() as logs:
        daemon.fail_storage()
        for name in (None, "new-1", "new-2"):
            call(daemon, name)
        daemon.advance(61)
        for name in (None, "new-3"):
            call(daemon, name)
        daemon.restore_storage()
        daemon.advance(2)  # the next change poll finds the database back
    tracked = [e for e in logs.events if e.get("dependency") == "database"]
    assert [e["log_level"] for e in tracked] == [LogLevel.warn, LogLevel.warn, LogLevel.info]
    down, summary, back = tracked
    assert "unable to open database file" in down["reason"]
    assert summary["down_seconds"] == 61 and summary["failures"] >= 5
    assert back["down_seconds"] == 63 and back["failures"] >= summary["failures"]
    assert [e for e in logs.events if "log_failure" in e] == [], "no traceback"
    assert not [e for e in logs.events if "Agent lookup failed" in e.get("log_format", "")
                and e["log_level"] > LogLevel.debug]


def test_an_unknown_error_still_logs_its_traceback(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon()
    daemon.threads.fail(lambda: RuntimeError("a bug, not an outage"))
    with capturing_logs() as logs:
        assert call(daemon)[0] == 200  # fail_open: forwarded as observe
    daemon.threads.mend()
    assert [e for e in logs.events if "log_failure" in e
            and e["log_failure"].check(RuntimeError)]
    assert not [e for e in logs.events if e.get("dependency") == "database"]
    daemon.take_errors()


def test_readiness_names_the_spool_while_bookkeeping_waits_on_local_disk(
        make_daemon: Callable[..., InProcessDaemon]):
    """A database that refuses writes while reads still work (a full disk) is still
    visible: the spool check is degraded while bookkeeping waits on local disk, and every
    checkpoint of the outage reaches the database once it returns."""
    daemon = make_daemon()
    agent_id(daemon)
    daemon.fail_storage(kv=False)
    for _ in range(3):
        assert call(daemon)[0] == 200
    daemon.advance(0.1)  # the batch writer's next turn meets the database gone
    status, body = readiness(daemon)
    assert (status, body["status"]) == (200, "degraded")
    spool = body["checks"]["spool"]
    assert (spool["status"], spool["state"], spool["required"]) == ("fail", "spooling", False)
    assert spool["depth"] >= 3
    assert spool["fallback"] == ("bookkeeping is spooled to local disk until the database "
                                 "takes it")
    daemon.restore_storage()
    daemon.advance(1)  # the next replay attempt finds the database back
    assert len(daemon.rows("SELECT id FROM integrity_checkpoints")) == 4
    status, body = readiness(daemon)
    assert body["checks"]["spool"]["state"] == "ok" and body["checks"]["spool"]["depth"] == 0

"""The management API in process, over the same storage as the proxy it manages."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.harness import InProcessDaemon

INTERNAL_KEY = "ik-management"
AUTH = {"authorization": f"Bearer {INTERNAL_KEY}"}
JSON = {"content-type": "application/json"}
AGENT_KEY = {"x-api-key": "sk-managed-agent"}
CALL_BODY = json.dumps({"model": "claude-x", "max_tokens": 16,
                        "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture
def managed(make_daemon: Callable[..., InProcessDaemon]) -> InProcessDaemon:
    return make_daemon(INTERNAL_API_KEY=INTERNAL_KEY)


def proxied_call(daemon: InProcessDaemon) -> tuple[int | None, str | None]:
    """(status, X-AIP-Enforcement) of one Anthropic call as the managed agent."""
    exchange = daemon.request("POST", "/anthropic/v1/messages", AGENT_KEY | JSON, CALL_BODY)
    return exchange.status, exchange.header("x-aip-enforcement")


def api(daemon: InProcessDaemon, method: str, path: str,
        body: object = None) -> tuple[int | None, object]:
    payload = None if body is None else json.dumps(body).encode()
    exchange = daemon.request(method, path, AUTH | JSON, payload)
    return exchange.status, exchange.json()


def the_agent(daemon: InProcessDaemon) -> str:
    """The id of the agent a first proxied call created."""
    assert proxied_call(daemon) == (200, "observe")
    status, listed = api(daemon, "GET", "/v1/agents")
    assert status == 200 and isinstance(listed, dict)
    [agent] = listed["items"]
    return str(agent["agent_id"])


def test_an_agent_is_listed_read_and_changed(managed: InProcessDaemon):
    agent_id = the_agent(managed)
    status, agent = api(managed, "GET", f"/v1/agents/{agent_id}")
    assert status == 200 and isinstance(agent, dict)
    assert (agent["agent_id"], agent["enforcement_mode"]) == (agent_id, "observe")
    assert api(managed, "PUT", f"/v1/agents/{agent_id}/enforcement", {"mode": "nudge"}) == \
        (200, {"agent_id": agent_id, "mode": "nudge"})
    status, settings = api(managed, "PUT", f"/v1/agents/{agent_id}/settings",
                           {"nudge_threshold": 3})
    assert status == 200 and isinstance(settings, dict) and settings["nudge_threshold"] == 3
    status, agent = api(managed, "GET", f"/v1/agents/{agent_id}")
    assert isinstance(agent, dict) and agent["enforcement_mode"] == "nudge"
    # The change reaches the proxy's next call.
    assert proxied_call(managed) == (200, "nudge")


def test_an_unknown_agent_is_404(managed: InProcessDaemon):
    status, error = api(managed, "GET", "/v1/agents/smolt-00000000")
    assert status == 404 and isinstance(error, dict) and error["type"] == "not_found"


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer not-the-key"}],
                         ids=["no token", "wrong token"])
def test_without_a_valid_token_the_api_is_401(managed: InProcessDaemon,
                                              headers: dict[str, str]):
    exchange = managed.request("GET", "/v1/agents", headers)
    assert exchange.status == 401
    assert exchange.header("www-authenticate").startswith("Bearer")
    assert exchange.json()["type"] == "authentication_error"


def test_a_pause_through_the_api_refuses_the_next_call_and_resume_restores(
        managed: InProcessDaemon):
    agent_id = the_agent(managed)
    status, change = api(managed, "POST", f"/v1/agents/{agent_id}/containment/pause",
                         {"reason": "investigating"})
    assert status == 200 and isinstance(change, dict)
    assert (change["to_status"], change["actor"]) == ("paused", "internal-api-key")
    forwarded = len(managed.upstream.requests)
    assert proxied_call(managed)[0] == 403
    assert len(managed.upstream.requests) == forwarded
    managed.advance(1)  # the log is newest first, by time
    assert api(managed, "POST", f"/v1/agents/{agent_id}/containment/resume")[0] == 200
    assert proxied_call(managed)[0] == 200
    status, containment = api(managed, "GET", f"/v1/agents/{agent_id}/containment")
    assert isinstance(containment, dict)
    assert [(e["action"], e["reason"]) for e in containment["log"]] == [
        ("resume", None), ("pause", "investigating")]

"""Containment by key through the daemon: a kill cannot be walked around with a new agent
name, a pause of one agent leaves the key's others working, and ``--scope key`` stops
them all (SPEC §6.4)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.harness import InProcessDaemon

INTERNAL_KEY = "ik-key-scope"
AUTH = {"authorization": f"Bearer {INTERNAL_KEY}"}
JSON = {"content-type": "application/json"}
KEY = {"x-api-key": "sk-ant-one-key-many-names"}
OTHER_KEY = {"x-api-key": "sk-ant-another-key"}
BODY = json.dumps({"model": "claude-x", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM_BODY = json.dumps({"model": "claude-x", "max_tokens": 16, "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()


def route(name: str | None) -> str:
    return "/anthropic/v1/messages" if name is None else f"/agent/{name}/anthropic/v1/messages"


@pytest.fixture
def daemon(make_daemon: Callable[..., InProcessDaemon]) -> InProcessDaemon:
    return make_daemon(INTERNAL_API_KEY=INTERNAL_KEY, AIP_ENABLED="false")


def call(daemon: InProcessDaemon, name: str | None, key: dict[str, str] = KEY,
         body: bytes = BODY) -> tuple[int | None, dict | None]:
    """(status, the refusal body or None) of one call as agent ``name`` of ``key``."""
    exchange = daemon.request("POST", route(name), key | JSON, body)
    assert exchange.complete, exchange.failure
    return exchange.status, exchange.json() if exchange.status == 403 else None


def api(daemon: InProcessDaemon, method: str, path: str,
        body: object = None) -> tuple[int | None, dict]:
    payload = None if body is None else json.dumps(body).encode()
    exchange = daemon.request(method, path, AUTH | JSON, payload)
    return exchange.status, exchange.json()


def agent_id(daemon: InProcessDaemon, name: str | None) -> str:
    """The id of agent ``name`` of ``KEY`` (the gateway names it in every response)."""
    exchange = daemon.request("POST", route(name), KEY | JSON, BODY)
    assert exchange.status == 200
    return exchange.header("x-mnemom-agent")


def contain(daemon: InProcessDaemon, agent: str, action: str, **body: str) -> dict:
    status, change = api(daemon, "POST", f"/v1/agents/{agent}/containment/{action}", body)
    assert status == 200, change
    return change


def refused(scope: str, status: str = "killed") -> tuple[int, dict]:
    return 403, {"error": "Agent contained", "type": "containment_error",
                 "reason": f"agent_{status}", "scope": scope}


def test_kill_holds_the_key_under_every_name_and_names_first_used_later(
        daemon: InProcessDaemon):
    plain = agent_id(daemon, None)
    named = agent_id(daemon, "x")
    change = contain(daemon, plain, "kill", reason="exfiltration")
    assert (change["scope"], change["to_status"], change["agents"]) == ("key", "killed", 2)
    forwarded = len(daemon.upstream.requests)
    assert call(daemon, None) == refused("key")
    assert call(daemon, "x") == refused("key")
    assert call(daemon, "brand-new") == refused("key")  # first used after the kill
    assert call(daemon, "brand-new", body=STREAM_BODY) == refused("key")
    assert len(daemon.upstream.requests) == forwarded, "nothing forwarded"
    # Another key is another agent: not held.
    assert call(daemon, "x", OTHER_KEY)[0] == 200
    # The views say what holds each agent, and the new agent's timeline shows the kill.
    status, listed = api(daemon, "GET", "/v1/agents?containment_status=killed")
    assert status == 200 and listed["total"] == 3
    new = next(a for a in listed["items"] if a["name"] == "brand-new")
    assert (new["containment_status"], new["containment_scope"],
            new["agent_containment_status"], new["containment_reason"]) == \
        ("killed", "key", "active", "exfiltration")
    _, timeline = api(daemon, "GET", f"/v1/agents/{new['agent_id']}/timeline")
    assert [(e["kind"], e["data"]) for e in timeline["items"]] == [
        ("containment", {"action": "kill", "actor": "internal-api-key", "scope": "key"})]
    _, containment = api(daemon, "GET", f"/v1/agents/{named}/containment")
    assert (containment["status"], containment["scope"], containment["key_status"]) == \
        ("killed", "key", "killed")
    assert [(e["agent_id"], e["scope"]) for e in containment["log"]] == [(plain, "key")]


def test_kill_with_scope_agent_leaves_the_other_names_working(daemon: InProcessDaemon):
    named = agent_id(daemon, "x")
    change = contain(daemon, named, "kill", scope="agent")
    assert (change["scope"], change["agents"]) == ("agent", 1)
    assert call(daemon, "x") == refused("agent")
    assert call(daemon, None)[0] == 200
    assert call(daemon, "y")[0] == 200


def test_pause_holds_the_agent_alone_unless_told_the_key_and_resume_lifts_it(
        daemon: InProcessDaemon):
    a = agent_id(daemon, "a")
    agent_id(daemon, "b")
    assert contain(daemon, a, "pause")["scope"] == "agent"
    assert call(daemon, "a") == refused("agent", "paused")
    assert call(daemon, "b")[0] == 200 and call(daemon, None)[0] == 200
    daemon.advance(1)  # log entries apart in time
    contain(daemon, a, "resume")
    assert call(daemon, "a")[0] == 200
    daemon.advance(1)
    change = contain(daemon, a, "pause", scope="key")
    assert (change["scope"], change["agents"]) == ("key", 3)
    forwarded = len(daemon.upstream.requests)
    for name in ("a", "b", None, "c"):
        assert call(daemon, name) == refused("key", "paused"), name
    assert len(daemon.upstream.requests) == forwarded
    daemon.advance(1)
    assert contain(daemon, a, "resume")["scope"] == "key"  # the scope in force
    for name in ("a", "b", None, "c"):
        assert call(daemon, name)[0] == 200, name
    _, containment = api(daemon, "GET", f"/v1/agents/{a}/containment")
    assert [(e["action"], e["scope"]) for e in containment["log"]] == [
        ("resume", "key"), ("pause", "key"), ("resume", "agent"), ("pause", "agent")]


def test_lifting_the_agent_alone_while_its_key_is_held_is_a_conflict(
        daemon: InProcessDaemon):
    plain = agent_id(daemon, None)
    named = agent_id(daemon, "x")
    contain(daemon, plain, "kill")
    status, error = api(daemon, "POST", f"/v1/agents/{named}/containment/reactivate",
                        {"scope": "agent"})
    assert (status, error["type"]) == (409, "conflict")
    assert "killed by its key" in error["error"]
    assert call(daemon, "x") == refused("key")
    change = contain(daemon, named, "reactivate")  # through any agent of the key
    assert (change["scope"], change["containment_status"]) == ("key", "active")
    assert call(daemon, "x")[0] == 200 and call(daemon, None)[0] == 200


def test_an_unknown_scope_is_a_bad_request(daemon: InProcessDaemon):
    plain = agent_id(daemon, None)
    status, error = api(daemon, "POST", f"/v1/agents/{plain}/containment/kill",
                        {"scope": "everyone"})
    assert status == 400 and error["type"] == "invalid_request_error"
    assert call(daemon, None)[0] == 200


def test_a_named_agent_from_before_keys_were_recorded_passes_a_kill_to_its_key(
        daemon: InProcessDaemon):
    plain = agent_id(daemon, None)
    legacy = agent_id(daemon, "legacy")
    # As migration 0005 leaves a named agent: its key not known.
    daemon.wait(daemon.service.storage.db.execute(
        "t", "UPDATE agents SET key_hash = NULL WHERE id = ?", (legacy,)))
    change = contain(daemon, legacy, "kill")
    assert (change["scope"], change["key_known"], change["agents"]) == ("key", False, 1)
    assert call(daemon, None)[0] == 200  # nothing ties the plain agent to it yet
    # Its next call, refused, reveals the key: the kill moves to it.
    assert call(daemon, "legacy") == refused("key")
    assert daemon.rows("SELECT key_hash, containment_status FROM key_containments") == \
        [(daemon.rows("SELECT agent_hash FROM agents WHERE id = ?", (plain,))[0][0], "killed")]
    assert call(daemon, None) == refused("key")
    assert call(daemon, "later") == refused("key")

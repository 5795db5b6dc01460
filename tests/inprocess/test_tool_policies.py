"""Tool policies on the request path, in process: for each request shape (Anthropic
Messages, OpenAI Chat, OpenAI Responses, Gemini generateContent), streaming and not, an
``enforce`` policy refuses a forbidden tool before anything reaches the provider, mapped
tools are forwarded with ``X-Policy-Verdict: pass``, ``warn`` forwards and records, a new
``enforce`` policy runs as ``warn`` through its grace period, and no policy means no
header. Evasions: a tool renamed by case, Gemini's snake_case declarations, a tool named
only in ``tool_choice``, and a database + KV outage (the last known policy holds)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.harness import InProcessDaemon

INTERNAL_KEY = "ik-tool-policies"
AUTH = {"authorization": f"Bearer {INTERNAL_KEY}"}
JSON = {"content-type": "application/json"}
MESSAGES = [{"role": "user", "content": "hi"}]
SEND_RULE = {"pattern": "send_*", "reason": "No data leaves through the agent",
             "severity": "critical"}
SEND_VIOLATION = {"type": "forbidden", "tool": "send_email", "capability": None,
                  "rule": "send_*", "reason": "No data leaves through the agent",
                  "severity": "critical"}


def policy(mode: str = "enforce", grace: float = 0, unmapped: str = "allow",
           scope: str = "agent") -> dict[str, Any]:
    return {"meta": {"schema_version": "1.0", "name": "browsing", "scope": scope},
            "capability_mappings": {"web_browsing": {"tools": ["web_search", "browse_*"],
                                                     "card_actions": ["browse"]}},
            "forbidden": [SEND_RULE],
            "defaults": {"unmapped_tool_action": unmapped, "unmapped_severity": "high",
                         "fail_open": False, "enforcement_mode": mode,
                         "grace_period_hours": grace}}


@dataclass(frozen=True)
class Shape:
    """One request shape: how a client offers tools in it."""

    name: str
    headers: dict[str, str]
    path: str
    stream_path: str | None
    payload: dict[str, Any]
    offer: Callable[[list[str]], dict[str, Any]]

    def request(self, names: list[str], stream: bool = False,
                **extra: Any) -> tuple[str, bytes]:
        payload = {**self.payload, **self.offer(names), **extra}
        path = self.path
        if stream and self.stream_path is not None:
            path = self.stream_path
        elif stream:
            payload["stream"] = True
        return path, json.dumps(payload).encode()


SHAPES = [
    Shape("anthropic", {"x-api-key": "sk-ant-policy"}, "/anthropic/v1/messages", None,
          {"model": "claude-x", "max_tokens": 2048, "messages": MESSAGES},
          lambda tools: {"tools": [{"name": t, "input_schema": {"type": "object"}}
                                   for t in tools]}),
    Shape("openai.chat", {"authorization": "Bearer sk-oai-policy"},
          "/openai/v1/chat/completions", None, {"model": "gpt-x", "messages": MESSAGES},
          lambda tools: {"tools": [{"type": "function", "function": {"name": t}}
                                   for t in tools]}),
    Shape("openai.responses", {"authorization": "Bearer sk-oai-policy"},
          "/openai/v1/responses", None, {"model": "o4-mini", "input": "hi"},
          lambda tools: {"tools": [{"type": "function", "name": t} for t in tools]}),
    Shape("gemini", {"x-goog-api-key": "g-policy"},
          "/gemini/v1beta/models/gemini-x:generateContent",
          "/gemini/v1beta/models/gemini-x:streamGenerateContent?alt=sse",
          {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
          lambda tools: {"tools": [{"functionDeclarations": [{"name": t} for t in tools]}]}),
]
ANTHROPIC = SHAPES[0]


@pytest.fixture(params=SHAPES, ids=[s.name for s in SHAPES])
def shape(request: pytest.FixtureRequest) -> Shape:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=[False, True], ids=["plain", "streaming"])
def stream(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def gateway(make_daemon: Callable[..., InProcessDaemon]) -> InProcessDaemon:
    return make_daemon(INTERNAL_API_KEY=INTERNAL_KEY)


def send(daemon: InProcessDaemon, shape: Shape, names: list[str], stream: bool = False,
         **extra: Any) -> Any:
    path, body = shape.request(names, stream, **extra)
    exchange = daemon.request("POST", path, shape.headers | JSON, body)
    assert exchange.complete, exchange.failure
    return exchange


def agent_of(daemon: InProcessDaemon, shape: Shape) -> str:
    """The agent a shape's key is (created by a first call without tools)."""
    exchange = send(daemon, shape, [])
    assert exchange.status == 200, exchange.body
    return str(exchange.header("x-mnemom-agent"))


def put_policy(daemon: InProcessDaemon, agent: str, document: dict[str, Any]) -> None:
    exchange = daemon.request("PUT", f"/v1/agents/{agent}/policy", AUTH | JSON,
                              json.dumps(document).encode())
    assert exchange.status in (200, 201), exchange.body


def subscribe(daemon: InProcessDaemon) -> None:
    exchange = daemon.request("POST", "/v1/webhooks", AUTH | JSON, json.dumps(
        {"url": "https://hooks.example.com/policy", "event_types": ["policy.violation"]},
    ).encode())
    assert exchange.status == 201, exchange.body


def forwarded(daemon: InProcessDaemon) -> int:
    return len(daemon.upstream.requests)


def violations(daemon: InProcessDaemon, agent: str) -> list[tuple[Any, ...]]:
    return daemon.rows("SELECT verdict, mode, blocked, violations FROM policy_violations "
                       "WHERE agent_id = ? ORDER BY created_at", (agent,))


# -- the four shapes ----------------------------------------------------------------------


def test_enforce_refuses_a_forbidden_tool_and_forwards_nothing(
        gateway: InProcessDaemon, shape: Shape, stream: bool):
    agent = agent_of(gateway, shape)
    put_policy(gateway, agent, policy("enforce"))
    before = forwarded(gateway)
    exchange = send(gateway, shape, ["web_search", "send_email"], stream)
    assert exchange.status == 403
    assert exchange.json() == {"error": "Request refused by tool policy: send_email",
                               "type": "policy_violation", "violations": [SEND_VIOLATION]}
    assert exchange.header("x-policy-verdict") == "fail"
    assert exchange.header("x-mnemom-agent") == agent
    assert forwarded(gateway) == before, "the provider saw nothing"
    [(verdict, mode, blocked, recorded)] = violations(gateway, agent)
    assert (verdict, mode, bool(blocked)) == ("fail", "enforce", True)
    assert json.loads(recorded) == [SEND_VIOLATION]


def test_only_mapped_tools_are_forwarded_with_a_pass(
        gateway: InProcessDaemon, shape: Shape, stream: bool):
    agent = agent_of(gateway, shape)
    put_policy(gateway, agent, policy("enforce"))
    path, body = shape.request(["web_search", "browse_page"], stream)
    exchange = gateway.request("POST", path, shape.headers | JSON, body)
    assert exchange.complete and exchange.status == 200
    assert exchange.header("x-policy-verdict") == "pass"
    sent = json.loads(gateway.upstream.requests[-1]["body"])
    assert sent["tools"] == json.loads(body)["tools"]
    assert violations(gateway, agent) == []


def test_warn_forwards_the_forbidden_tool_and_records_the_violation(
        gateway: InProcessDaemon, shape: Shape, stream: bool):
    subscribe(gateway)
    agent = agent_of(gateway, shape)
    put_policy(gateway, agent, policy("warn"))
    exchange = send(gateway, shape, ["send_email"], stream)
    assert exchange.status == 200
    assert exchange.header("x-policy-verdict") == "warn"
    assert b"send_email" in gateway.upstream.requests[-1]["body"]
    [(verdict, mode, blocked, recorded)] = violations(gateway, agent)
    assert (verdict, mode, bool(blocked)) == ("fail", "warn", False)
    assert json.loads(recorded) == [SEND_VIOLATION]
    [(event_type, payload)] = gateway.rows(
        "SELECT event_type, payload FROM webhook_deliveries WHERE agent_id = ?", (agent,))
    assert event_type == "policy.violation"
    data = json.loads(payload)["data"]
    assert (data["blocked"], data["mode"], data["violations"]) == (
        False, "warn", [SEND_VIOLATION])


def test_no_policy_means_no_verdict_header(gateway: InProcessDaemon, shape: Shape,
                                           stream: bool):
    exchange = send(gateway, shape, ["send_email"], stream)
    assert exchange.status == 200
    assert exchange.header("x-policy-verdict") is None
    assert gateway.rows("SELECT COUNT(*) FROM policy_violations") == [(0,)]


# -- grace period, sources ----------------------------------------------------------------


def test_a_new_enforce_policy_runs_as_warn_through_its_grace_period(gateway: InProcessDaemon):
    agent = agent_of(gateway, ANTHROPIC)
    put_policy(gateway, agent, policy("enforce", grace=0.01))  # 36 seconds
    exchange = send(gateway, ANTHROPIC, ["send_email"])
    assert (exchange.status, exchange.header("x-policy-verdict")) == (200, "warn")
    gateway.advance(35)
    assert send(gateway, ANTHROPIC, ["send_email"]).status == 200
    gateway.advance(1.5)
    before = forwarded(gateway)
    exchange = send(gateway, ANTHROPIC, ["send_email"])
    assert (exchange.status, exchange.header("x-policy-verdict")) == (403, "fail")
    assert forwarded(gateway) == before
    modes = [row[1] for row in violations(gateway, agent)]
    assert modes == ["warn", "warn", "enforce"]


def test_the_deployment_wide_policy_holds_every_agent(gateway: InProcessDaemon):
    exchange = gateway.request("PUT", "/v1/policy", AUTH | JSON,
                               json.dumps(policy("enforce", scope="org")).encode())
    assert exchange.status in (200, 201), exchange.body
    for shape in SHAPES:
        assert send(gateway, shape, ["send_email"]).status == 403, shape.name
        assert send(gateway, shape, ["web_search"]).header("x-policy-verdict") == "pass"


def test_a_policy_removed_stops_applying(gateway: InProcessDaemon):
    agent = agent_of(gateway, ANTHROPIC)
    put_policy(gateway, agent, policy("enforce"))
    assert send(gateway, ANTHROPIC, ["send_email"]).status == 403
    exchange = gateway.request("DELETE", f"/v1/agents/{agent}/policy", AUTH)
    assert exchange.status in (200, 204), exchange.body
    exchange = send(gateway, ANTHROPIC, ["send_email"])
    assert (exchange.status, exchange.header("x-policy-verdict")) == (200, None)


def test_the_policy_file_enforces_from_the_start(
        make_daemon: Callable[..., InProcessDaemon], tmp_path: Any):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy("enforce", grace=24, scope="org")))
    daemon = make_daemon(MNEMOM_POLICY_FILE=str(path))
    exchange = send(daemon, SHAPES[1], ["send_email"])
    assert (exchange.status, exchange.json()["type"]) == (403, "policy_violation")
    assert forwarded(daemon) == 0


# -- evasions -----------------------------------------------------------------------------


def test_a_tool_renamed_by_case_is_unmapped_and_denied_by_a_deny_default(
        gateway: InProcessDaemon):
    """Globs are case-sensitive (Mnemom's grammar): ``Send_Email`` is not ``send_*``, so
    the rule that catches a renamed tool is ``unmapped_tool_action: deny``."""
    agent = agent_of(gateway, ANTHROPIC)
    put_policy(gateway, agent, policy("enforce", unmapped="deny"))
    for name in ("Send_Email", "SEND_EMAIL", "Web_Search"):
        before = forwarded(gateway)
        exchange = send(gateway, ANTHROPIC, [name])
        assert exchange.status == 403, name
        [found] = exchange.json()["violations"]
        assert (found["type"], found["tool"], found["severity"]) == (
            "unmapped_denied", name, "high")
        assert forwarded(gateway) == before


def test_a_tool_renamed_by_case_shows_as_warn_under_a_warn_default(gateway: InProcessDaemon):
    agent = agent_of(gateway, ANTHROPIC)
    put_policy(gateway, agent, policy("enforce", unmapped="warn"))
    exchange = send(gateway, ANTHROPIC, ["Send_Email"])
    assert (exchange.status, exchange.header("x-policy-verdict")) == (200, "warn")
    assert gateway.rows("SELECT tool FROM tool_first_seen WHERE agent_id = ? AND tool = ?",
                        (agent, "Send_Email")) == [("Send_Email",)]


def test_gemini_snake_case_declarations_are_judged(gateway: InProcessDaemon):
    gemini = SHAPES[3]
    agent = agent_of(gateway, gemini)
    put_policy(gateway, agent, policy("enforce"))
    before = forwarded(gateway)
    exchange = send(gateway, gemini, [], tools=[
        {"function_declarations": [{"name": "web_search"}, {"name": "send_email"}]}])
    assert exchange.status == 403
    assert exchange.json()["violations"] == [SEND_VIOLATION]
    exchange = send(gateway, gemini, [], tool_config={
        "function_calling_config": {"mode": "ANY", "allowed_function_names": ["send_email"]}})
    assert exchange.status == 403
    assert forwarded(gateway) == before


@pytest.mark.parametrize(("shape", "choice"), [
    (SHAPES[0], {"tool_choice": {"type": "tool", "name": "send_email"}}),
    (SHAPES[1], {"tool_choice": {"type": "function", "function": {"name": "send_email"}}}),
    (SHAPES[2], {"tool_choice": {"type": "function", "name": "send_email"}}),
], ids=["anthropic", "openai.chat", "openai.responses"])
def test_a_tool_named_only_in_tool_choice_is_judged(
        gateway: InProcessDaemon, shape: Shape, choice: dict[str, Any]):
    agent = agent_of(gateway, shape)
    put_policy(gateway, agent, policy("enforce"))
    before = forwarded(gateway)
    exchange = send(gateway, shape, ["web_search"], **choice)
    assert exchange.status == 403
    assert exchange.json()["violations"] == [SEND_VIOLATION]
    assert forwarded(gateway) == before


def test_a_body_that_cannot_be_read_fails_closed_under_enforce(gateway: InProcessDaemon):
    agent = agent_of(gateway, ANTHROPIC)
    put_policy(gateway, agent, policy("enforce"))
    before = forwarded(gateway)
    exchange = gateway.request("POST", ANTHROPIC.path, ANTHROPIC.headers | JSON,
                               b'{"tools": [{"name": "send_email"}], ')
    assert exchange.status == 403
    assert exchange.header("x-policy-verdict") == "fail"
    assert forwarded(gateway) == before


def test_the_last_known_policy_keeps_enforcing_through_a_storage_outage(
        gateway: InProcessDaemon):
    agent = agent_of(gateway, ANTHROPIC)
    put_policy(gateway, agent, policy("enforce"))
    assert send(gateway, ANTHROPIC, ["web_search"]).header("x-policy-verdict") == "pass"
    before = forwarded(gateway)
    gateway.fail_storage()
    for _ in range(2):
        exchange = send(gateway, ANTHROPIC, ["send_email"])
        assert exchange.status == 403
        assert exchange.json()["violations"] == [SEND_VIOLATION]
    gateway.advance(600)  # past the KV cache's TTL: process memory holds
    assert send(gateway, ANTHROPIC, ["send_email"]).status == 403
    assert forwarded(gateway) == before, "nothing reached the upstream"
    exchange = send(gateway, ANTHROPIC, ["web_search"])
    assert (exchange.status, exchange.header("x-policy-verdict")) == (200, "pass")
    gateway.restore_storage()
    assert send(gateway, ANTHROPIC, ["send_email"]).status == 403
    gateway.take_errors()  # the outage's own log lines


# -- tools first seen ---------------------------------------------------------------------


def test_each_tool_an_agent_offers_is_recorded_once(gateway: InProcessDaemon):
    agent = agent_of(gateway, ANTHROPIC)
    send(gateway, ANTHROPIC, ["web_search", "send_email"])
    gateway.advance(5)
    send(gateway, ANTHROPIC, ["web_search", "browse_page"])
    rows = gateway.rows("SELECT tool, seen_as, first_seen_at FROM tool_first_seen "
                        "WHERE agent_id = ? ORDER BY first_seen_at, tool", (agent,))
    start = rows[0][2]
    assert rows == [("send_email", "offered", start), ("web_search", "offered", start),
                    ("browse_page", "offered", start + 5000)]


# -- privacy ------------------------------------------------------------------------------


def test_policy_rows_and_events_hold_tool_names_and_rules_only(gateway: InProcessDaemon):
    """A call's text (its prompt, tool descriptions and schemas) reaches none of the rows
    tool policies write (``policy_violations``, ``tool_first_seen``, the
    ``policy.violation`` delivery), nor the KV store."""
    marker = "Zq9PrivateText"
    subscribe(gateway)
    agent = agent_of(gateway, ANTHROPIC)
    put_policy(gateway, agent, policy("warn"))
    body = json.dumps({
        "model": "claude-x", "max_tokens": 2048,
        "messages": [{"role": "user", "content": f"{marker} prompt"}],
        "system": f"{marker} system",
        "tools": [{"name": "send_email", "description": f"{marker} description",
                   "input_schema": {"type": "object", "properties": {
                       "to": {"type": "string", "description": f"{marker} field"}}}},
                  {"name": "web_search", "input_schema": {"type": "object"}}]}).encode()
    exchange = gateway.request("POST", ANTHROPIC.path, ANTHROPIC.headers | JSON, body)
    assert (exchange.status, exchange.header("x-policy-verdict")) == (200, "warn")
    written = {table: gateway.rows(f"SELECT * FROM {table} WHERE agent_id = ?", (agent,))
               for table in ("policy_violations", "tool_first_seen", "webhook_deliveries")}
    assert all(written.values()), written
    assert marker not in repr(written)
    assert "send_email" in repr(written["policy_violations"])
    kv = gateway.service.storage.kv
    assert marker not in "".join(key + repr(kv._data[key][0]) for key in kv.keys())


def test_tools_the_model_calls_reach_the_policy_step(gateway: InProcessDaemon, shape: Shape,
                                                     stream: bool):
    """The extraction's tool calls (the fake model calls the first tool offered) are
    handed to ``PolicyStep.called``, which records a tool first seen called."""
    integrity = gateway.service.gateway_service.gateway.proxy._integrity
    wired = integrity.on_tools_called
    assert wired is not None and wired.__name__ == "called"
    handed: list[tuple[str, list[str]]] = []

    def observe(agent_id: str, names: list[str]) -> None:
        handed.append((agent_id, names))
        wired(agent_id, [f"{name}_called" for name in names])

    integrity.on_tools_called = observe
    exchange = send(gateway, shape, ["web_search"], stream)
    assert exchange.status == 200
    gateway.advance(1)  # the analysis, off the response path
    agent = str(exchange.header("x-mnemom-agent"))
    assert handed == [(agent, ["web_search"])]
    assert gateway.rows("SELECT tool, seen_as FROM tool_first_seen WHERE agent_id = ? "
                        "ORDER BY tool", (agent,)) == [("web_search", "offered"),
                                                        ("web_search_called", "called")]

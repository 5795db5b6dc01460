"""Tool policies with the official SDKs, the daemon as a real process, on SQLite and on
PostgreSQL, the policy set through the API (``PUT /v1/agents/{id}/policy``) and through
``MNEMOM_POLICY_FILE``: a request offering a forbidden tool gets 403 ``policy_violation``
and the provider sees nothing; one offering only mapped tools is forwarded with
``X-Policy-Verdict: pass``. Anthropic Messages, OpenAI Chat and Responses, Gemini."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google.genai import errors, types

from tests.e2e.api import CREDENTIALS, api_call
from tests.e2e.daemon import Daemon
from tests.e2e.test_sdks import (
    AGENT_ID,
    MESSAGES,
    anthropic_client,
    gemini_client,
    openai_client,
)
from tests.fakes.process import clear_requests, fetch_requests

SEND_VIOLATION = {"type": "forbidden", "tool": "send_email", "capability": None,
                  "rule": "send_*", "reason": "No data leaves through the agent",
                  "severity": "critical"}


def policy(scope: str) -> dict[str, Any]:
    return {"meta": {"schema_version": "1.0", "name": "browsing", "scope": scope},
            "capability_mappings": {"web_browsing": {"tools": ["web_search", "browse_*"],
                                                     "card_actions": ["browse"]}},
            "forbidden": [{"pattern": "send_*", "reason": "No data leaves through the agent",
                           "severity": "critical"}],
            "defaults": {"unmapped_tool_action": "deny", "unmapped_severity": "high",
                         "fail_open": False, "enforcement_mode": "enforce",
                         "grace_period_hours": 0}}


def anthropic_call(base: str, tools: list[str]) -> Any:
    client = anthropic_client(f"{base}/anthropic")
    return client.messages.with_raw_response.create(
        model="claude-test", max_tokens=2048, messages=MESSAGES,
        tools=[{"name": t, "input_schema": {"type": "object"}} for t in tools])


def chat_call(base: str, tools: list[str]) -> Any:
    client = openai_client(f"{base}/openai")
    return client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES,
        tools=[{"type": "function", "function": {"name": t}} for t in tools])


def responses_call(base: str, tools: list[str]) -> Any:
    client = openai_client(f"{base}/openai")
    return client.responses.with_raw_response.create(
        model="o4-mini", input="hi",
        tools=[{"type": "function", "name": t, "parameters": {"type": "object"},
                "strict": False} for t in tools])


SDK_CALLS: dict[str, Callable[[str, list[str]], Any]] = {
    "anthropic": anthropic_call, "openai.chat": chat_call, "openai.responses": responses_call}


def gemini_call(base: str, tools: list[str]) -> types.GenerateContentResponse:
    client = gemini_client(f"{base}/gemini")
    return client.models.generate_content(
        model="gemini-test", contents="hi", config=types.GenerateContentConfig(
            tools=[types.Tool(function_declarations=[
                types.FunctionDeclaration(name=t) for t in tools])]))


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "postgresql":
        return {"DATABASE_URL": request.getfixturevalue("postgres_url")}
    return {}


def with_api_policy(start: Callable[..., Daemon], env: dict[str, str]) -> Daemon:
    daemon = start(CREDENTIALS | env)
    anthropic_call(daemon.base_url, [])  # the agent exists once it has called
    stored = api_call(daemon.base_url, "PUT", f"/v1/agents/{AGENT_ID}/policy", policy("agent"))
    assert stored.status in (200, 201), stored.body
    return daemon


def with_policy_file(start: Callable[..., Daemon], env: dict[str, str], tmp: Path) -> Daemon:
    path = tmp / "policy.json"
    path.write_text(json.dumps(policy("org")))
    return start(env | {"MNEMOM_POLICY_FILE": str(path)})


@pytest.fixture(params=["api", "file"])
def gateway(request: pytest.FixtureRequest, start: Callable[..., Daemon],
            engine_env: dict[str, str], tmp_path: Path) -> Daemon:
    if request.param == "api":
        return with_api_policy(start, engine_env)
    return with_policy_file(start, engine_env, tmp_path)


def test_the_sdks_get_403_for_a_forbidden_tool_and_pass_for_mapped_ones(
        gateway: Daemon, upstream: str):
    base = gateway.base_url
    for name, call in SDK_CALLS.items():
        clear_requests(upstream)
        with pytest.raises(openai.PermissionDeniedError if "openai" in name
                           else anthropic.PermissionDeniedError) as refused:
            call(base, ["web_search", "send_email"])
        error = refused.value
        assert error.status_code == 403, name
        assert error.response.json() == {
            "error": "Request refused by tool policy: send_email",
            "type": "policy_violation", "violations": [SEND_VIOLATION]}, name
        assert error.response.headers["x-policy-verdict"] == "fail"
        assert fetch_requests(upstream) == [], f"{name}: the provider saw nothing"

        raw = call(base, ["web_search", "browse_page"])
        assert raw.status_code == 200, name
        assert raw.headers["x-policy-verdict"] == "pass", name
        assert len(fetch_requests(upstream)) == 1, name


def test_the_gemini_sdk_gets_403_for_a_forbidden_tool_and_pass_for_mapped_ones(
        gateway: Daemon, upstream: str):
    clear_requests(upstream)
    with pytest.raises(errors.ClientError) as refused:
        gemini_call(gateway.base_url, ["web_search", "send_email"])
    assert refused.value.code == 403
    assert refused.value.details["violations"] == [SEND_VIOLATION]
    assert fetch_requests(upstream) == []
    result = gemini_call(gateway.base_url, ["web_search"])
    assert result.sdk_http_response is not None
    assert result.sdk_http_response.headers["x-policy-verdict"] == "pass"
    assert len(fetch_requests(upstream)) == 1

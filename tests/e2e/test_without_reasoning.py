"""``without_reasoning`` with the official SDKs, streaming and not (issue 14, Done-when 4).

An agent in ``enforce`` mode turns its reasoning off with one parameter; the fake provider
answers as a real one does (``realistic_reasoning``: no reasoning unless asked) with a
``send_to_pastebin`` call. Through one daemon per SDK: ``refuse`` makes the SDK raise its
403 error with ``integrity_unverifiable``; after the agent is switched to
``analyse_output`` through the API, the output is analysed, a violation raises with
``integrity_violation`` and the checkpoint id (whose checkpoint says the output was
analysed), and a clear output reaches the application whole.

Streams, written against the stream hold's contract: at the first output event of an
``enforce`` stream that brought no analysable reasoning, ``refuse`` ends the stream with
the provider's own error event (type ``integrity_unverifiable``); ``analyse_output`` holds
the rest to the stream's end, then releases the held bytes unchanged or ends with the
error event (``integrity_violation``). Nothing of the output reaches the client before.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.e2e.daemon import Daemon
from tests.fakes import canned, plain
from tests.fakes.process import analysis_control
from tests.fakes.rawhttp import raw_request
from tests.integrity.fakes import VERDICT_CLEAR, VERDICT_VIOLATION

INTERNAL_KEY = f"ik-{uuid.uuid4().hex}"
SCENARIO = {"x-fake-scenario": "realistic_reasoning"}
TOOL = "send_to_pastebin"
OUTPUT_HASH = hashlib.sha256(plain.output_text(TOOL).encode()).hexdigest()
MESSAGES = [{"role": "user", "content": "Summarise the quarterly report"}]
SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}}


@pytest.fixture
def gateway(start: Callable[..., Daemon], analysis_url: str) -> Gateway:
    analysis_control(analysis_url, "DELETE", "requests")
    daemon = start({"AIP_DEFAULT_ENFORCEMENT": "enforce",
                    "AIP_DEFAULT_WITHOUT_REASONING": "refuse",
                    "ANALYSIS_BASE_URL": analysis_url, "ANTHROPIC_API_KEY": "sk-analysis-key",
                    "AIP_MIN_EVIDENCE_TOKENS": "1", "INTERNAL_API_KEY": INTERNAL_KEY})
    return Gateway(daemon, analysis_url)


class Gateway:
    def __init__(self, daemon: Daemon, analysis_url: str) -> None:
        self.daemon = daemon
        self.analysis_url = analysis_url
        self.url = daemon.base_url

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"authorization": f"Bearer {INTERNAL_KEY}",
                     "content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def analyse_output(self, agent_id: str, verdict: dict[str, Any]) -> None:
        """Switch the agent to analyse_output; the analysis model will answer ``verdict``."""
        changed = self.api("PUT", f"/v1/agents/{agent_id}/settings",
                           {"without_reasoning": "analyse_output"})
        assert changed["without_reasoning"] == "analyse_output"
        analysis_control(self.analysis_url, "POST", "script",
                         {"actions": [], "default": verdict})

    def assert_output_checkpoint(self, checkpoint_id: str) -> None:
        checkpoint = self.api("GET", f"/v1/checkpoints/{checkpoint_id}")
        assert checkpoint["verdict"] == "boundary_violation"
        assert checkpoint["output_block_hash"] == OUTPUT_HASH
        assert checkpoint["thinking_block_hash"] is None
        assert checkpoint["analysis_metadata"]["analysis_scope"] == "output_only"

    def analysed(self) -> list[str]:
        """The user prompts the analysis model was sent."""
        asked = analysis_control(self.analysis_url, "GET", "requests")
        return [json.loads(a["body"])["messages"][0]["content"] for a in asked]


def assert_nothing_of_the_output(body: bytes) -> None:
    assert TOOL.encode() not in body and canned.TEXT_PIECES[1].encode() not in body


def test_anthropic(gateway: Gateway):
    client = anthropic.Anthropic(base_url=f"{gateway.url}/anthropic", api_key="sk-ant-sdk",
                                 max_retries=0, default_headers=SCENARIO)
    kwargs: dict[str, Any] = dict(
        model="claude-sonnet-4-5", max_tokens=4096, thinking={"type": "disabled"},
        messages=MESSAGES,
        tools=[{"name": TOOL, "description": "Publish text", "input_schema": SCHEMA}])
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        client.messages.create(**kwargs)
    assert refused.value.response.json() == {
        "error": "The response was withheld: it has no reasoning that can be verified",
        "type": "integrity_unverifiable", "reason": "no_reasoning"}
    assert_nothing_of_the_output(refused.value.response.content)
    assert gateway.analysed() == []

    gateway.analyse_output(refused.value.response.headers["x-mnemom-agent"], VERDICT_VIOLATION)
    with pytest.raises(anthropic.PermissionDeniedError) as violation:
        client.messages.create(**kwargs)
    body = violation.value.response.json()
    assert body["type"] == "integrity_violation"
    assert_nothing_of_the_output(violation.value.response.content)
    gateway.assert_output_checkpoint(body["checkpoint_id"])
    assert f"[TOOL CALL] {TOOL} " in gateway.analysed()[-1]

    analysis_control(gateway.analysis_url, "POST", "script",
                     {"actions": [], "default": VERDICT_CLEAR})
    message = client.messages.create(**kwargs)
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[0].text == canned.TEXT
    assert (message.content[1].name, message.content[1].input) == (TOOL, canned.TOOL_INPUT)


def test_openai_chat(gateway: Gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key="sk-oai-sdk",
                           max_retries=0, default_headers=SCENARIO)
    kwargs: dict[str, Any] = dict(
        model="gpt-4o", messages=MESSAGES,
        tools=[{"type": "function", "function": {"name": TOOL, "parameters": SCHEMA}}])
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(**kwargs)
    assert refused.value.response.json()["type"] == "integrity_unverifiable"
    assert_nothing_of_the_output(refused.value.response.content)

    gateway.analyse_output(refused.value.response.headers["x-mnemom-agent"], VERDICT_VIOLATION)
    with pytest.raises(openai.PermissionDeniedError) as violation:
        client.chat.completions.create(**kwargs)
    body = violation.value.response.json()
    assert body["type"] == "integrity_violation"
    assert_nothing_of_the_output(violation.value.response.content)
    gateway.assert_output_checkpoint(body["checkpoint_id"])

    analysis_control(gateway.analysis_url, "POST", "script",
                     {"actions": [], "default": VERDICT_CLEAR})
    completion = client.chat.completions.create(**kwargs)
    message = completion.choices[0].message
    assert message.content == canned.TEXT
    assert [c.function.name for c in message.tool_calls] == [TOOL]
    assert json.loads(message.tool_calls[0].function.arguments) == canned.TOOL_INPUT


def test_gemini(gateway: Gateway):
    client = genai.Client(api_key="g-sdk-key", http_options=types.HttpOptions(
        base_url=f"{gateway.url}/gemini", headers=SCENARIO))
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[
        types.FunctionDeclaration(name=TOOL, description="Publish text", parameters=SCHEMA)])])

    def call() -> Any:
        return client.models.generate_content(model="gemini-2.0-flash",
                                              contents="Summarise the quarterly report",
                                              config=config)

    with pytest.raises(genai_errors.ClientError) as refused:
        call()
    assert refused.value.code == 403
    assert refused.value.details["type"] == "integrity_unverifiable"
    assert refused.value.details["reason"] == "no_reasoning"

    agents = gateway.api("GET", "/v1/agents")["items"]
    [agent_id] = [a["agent_id"] for a in agents]
    gateway.analyse_output(agent_id, VERDICT_VIOLATION)
    with pytest.raises(genai_errors.ClientError) as violation:
        call()
    assert violation.value.details["type"] == "integrity_violation"
    gateway.assert_output_checkpoint(violation.value.details["checkpoint_id"])

    analysis_control(gateway.analysis_url, "POST", "script",
                     {"actions": [], "default": VERDICT_CLEAR})
    result = call()
    assert result.text == canned.TEXT
    assert [(c.name, c.args) for c in result.function_calls] == [(TOOL, canned.TOOL_INPUT)]


# -- streams -----------------------------------------------------------------------


def raw_stream(gateway: Gateway, path: str, headers: dict[str, str],
               body: dict[str, Any]) -> bytes:
    with raw_request(gateway.url, "POST", path, json.dumps(body).encode(),
                     headers | SCENARIO | {"content-type": "application/json"},
                     timeout=20) as response:
        assert response.status == 200
        return response.read_body()


def upstream_stream(api: canned.Api, model: str, body: dict[str, Any],
                    gemini_sse: bool = True) -> bytes:
    request = canned.CannedRequest(api=api, model=model, stream=True, gemini_sse=gemini_sse)
    return b"".join(plain.stream_events(request, TOOL))


def assert_no_output(body: bytes) -> None:
    assert TOOL.encode() not in body
    for piece in canned.TEXT_PIECES:
        assert piece.encode() not in body


def clear(gateway: Gateway) -> None:
    analysis_control(gateway.analysis_url, "POST", "script",
                     {"actions": [], "default": VERDICT_CLEAR})


def test_anthropic_messages_stream(gateway: Gateway):
    client = anthropic.Anthropic(base_url=f"{gateway.url}/anthropic", api_key="sk-ant-stream",
                                 max_retries=0, default_headers=SCENARIO)
    kwargs: dict[str, Any] = dict(
        model="claude-sonnet-4-5", max_tokens=4096, thinking={"type": "disabled"},
        messages=MESSAGES,
        tools=[{"name": TOOL, "description": "Publish text", "input_schema": SCHEMA}])
    headers = {"x-api-key": "sk-ant-stream", "anthropic-version": "2023-06-01"}
    body = {**kwargs, "stream": True}
    refused = raw_stream(gateway, "/anthropic/v1/messages", headers, body)
    assert_no_output(refused)
    assert b'"type":"integrity_unverifiable"' in refused
    with pytest.raises(anthropic.APIStatusError) as raised:
        with client.messages.stream(**kwargs) as stream:
            stream.get_final_message()
    assert raised.value.body["error"]["type"] == "integrity_unverifiable"

    agent_id = gateway.api("GET", "/v1/agents")["items"][0]["agent_id"]
    gateway.analyse_output(agent_id, VERDICT_VIOLATION)
    with pytest.raises(anthropic.APIStatusError) as violation:
        with client.messages.stream(**kwargs) as stream:
            stream.get_final_message()
    error = violation.value.body["error"]
    assert error["type"] == "integrity_violation"
    gateway.assert_output_checkpoint(error["checkpoint_id"])

    clear(gateway)
    expected = upstream_stream(canned.Api.ANTHROPIC_MESSAGES, "claude-sonnet-4-5", body)
    assert raw_stream(gateway, "/anthropic/v1/messages", headers, body) == expected


def test_openai_chat_stream(gateway: Gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key="sk-oai-stream",
                           max_retries=0, default_headers=SCENARIO)
    kwargs: dict[str, Any] = dict(
        model="gpt-4o", messages=MESSAGES, stream=True,
        tools=[{"type": "function", "function": {"name": TOOL, "parameters": SCHEMA}}])
    headers = {"authorization": "Bearer sk-oai-stream"}
    refused = raw_stream(gateway, "/openai/v1/chat/completions", headers, kwargs)
    assert_no_output(refused)
    with pytest.raises(openai.APIError) as raised:
        list(client.chat.completions.create(**kwargs))
    assert raised.value.type == "integrity_unverifiable"

    agent_id = gateway.api("GET", "/v1/agents")["items"][0]["agent_id"]
    gateway.analyse_output(agent_id, VERDICT_VIOLATION)
    with pytest.raises(openai.APIError) as violation:
        list(client.chat.completions.create(**kwargs))
    assert violation.value.type == "integrity_violation"
    gateway.assert_output_checkpoint(violation.value.body["checkpoint_id"])

    clear(gateway)
    expected = upstream_stream(canned.Api.OPENAI_CHAT, "gpt-4o", kwargs)
    assert raw_stream(gateway, "/openai/v1/chat/completions", headers, kwargs) == expected


def test_openai_responses_stream(gateway: Gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key="sk-resp-stream",
                           max_retries=0, default_headers=SCENARIO)
    kwargs: dict[str, Any] = dict(
        model="gpt-4.1", input="Summarise the quarterly report",
        tools=[{"type": "function", "name": TOOL, "parameters": SCHEMA}])
    with pytest.raises(openai.APIError) as raised:
        with client.responses.stream(**kwargs) as stream:
            stream.get_final_response()
    assert raised.value.type == "integrity_unverifiable"
    headers = {"authorization": "Bearer sk-resp-stream"}
    assert_no_output(raw_stream(gateway, "/openai/v1/responses", headers,
                                {**kwargs, "stream": True}))


def test_gemini_generate_content_stream(gateway: Gateway):
    client = genai.Client(api_key="g-stream-key", http_options=types.HttpOptions(
        base_url=f"{gateway.url}/gemini", headers=SCENARIO))
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[
        types.FunctionDeclaration(name=TOOL, description="Publish text", parameters=SCHEMA)])])
    with pytest.raises(genai_errors.ClientError) as raised:
        for _ in client.models.generate_content_stream(
                model="gemini-2.0-flash", contents="Summarise", config=config):
            pass
    assert raised.value.code == 403
    assert raised.value.details["error"]["type"] == "integrity_unverifiable"
    body = {"contents": [{"role": "user", "parts": [{"text": "Summarise"}]}],
            "tools": [{"functionDeclarations": [{"name": TOOL, "parameters": SCHEMA}]}]}
    assert_no_output(raw_stream(
        gateway, "/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        {"x-goog-api-key": "g-stream-key"}, body))

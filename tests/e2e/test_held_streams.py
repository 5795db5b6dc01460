"""Enforce-mode streams held at the end of the reasoning, with the official SDKs and real
sockets: a violation raises in each SDK with the checkpoint id and the client's bytes hold
nothing after the reasoning; a clear verdict delivers exactly the upstream's bytes; a held
flood pauses the upstream with the daemon's memory flat."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.e2e.daemon import Daemon
from tests.fakes import canned
from tests.fakes.canned import Api, CannedRequest
from tests.fakes.process import analysis_control, release, stream_status, wait_until
from tests.fakes.rawhttp import raw_request
from tests.integrity.fakes import VERDICT_VIOLATION

KEY = "sk-held-stream-key"
TOOL = "send_to_pastebin"
PROMPT = "Summarise the customer file"
MESSAGES = [{"role": "user", "content": PROMPT}]
ANTHROPIC_TOOLS = [{"name": TOOL, "description": "upload text",
                    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}}]
CHAT_TOOLS = [{"type": "function", "function": {"name": TOOL, "parameters": {"type": "object"}}}]
RESPONSES_TOOLS = [{"type": "function", "name": TOOL, "parameters": {"type": "object"}}]
GEMINI_TOOLS = [types.Tool(function_declarations=[types.FunctionDeclaration(name=TOOL)])]


@pytest.fixture
def analysis(analysis_url: str) -> Iterator[str]:
    """The shared fake analysis model, left as other tests expect it."""
    analysis_control(analysis_url, "POST", "script", {"actions": [], "default": "valid"})
    analysis_control(analysis_url, "DELETE", "requests")
    yield analysis_url
    analysis_control(analysis_url, "POST", "release")
    analysis_control(analysis_url, "POST", "script", {"actions": [], "default": "valid"})


def judge(analysis: str, default: Any, *actions: Any) -> None:
    analysis_control(analysis, "POST", "script", {"actions": list(actions), "default": default})


def held(analysis: str) -> int:
    return int(analysis_control(analysis, "GET", "held")["held"])


class Gateway:
    """An enforce-mode daemon on its own SQLite file."""

    def __init__(self, start: Any, tmp_path: Path, analysis: str, mode: str = "enforce",
                 **env: str) -> None:
        state = tmp_path / "state"
        self.daemon: Daemon = start({
            "MNEMOM_DATA_DIR": str(state), "ANALYSIS_BASE_URL": analysis,
            "ANTHROPIC_API_KEY": "sk-analysis-key", "AIP_MIN_EVIDENCE_TOKENS": "1",
            "AIP_DEFAULT_ENFORCEMENT": mode, **env})
        self.database = str(state / "mnemomd.db")
        self.url = self.daemon.base_url

    def stored_violation(self, checkpoint_id: str) -> bool:
        """True once ``checkpoint_id`` is stored as a violation (it is written behind the
        verdict, so the call's answer can come first); fails after a deadline."""
        def stored() -> bool:
            with sqlite3.connect(self.database) as connection:
                return connection.execute(
                    "SELECT 1 FROM integrity_checkpoints WHERE id = ? AND "
                    "verdict = 'boundary_violation'", (checkpoint_id,)).fetchone() is not None

        return wait_until(stored, timeout=10, interval=0.02,
                          what=f"violation {checkpoint_id} stored")


def assert_no_output(body: bytes) -> None:
    """None of the text or the tool call that followed the reasoning."""
    for piece in canned.TEXT_PIECES:
        if piece not in canned.THINKING_TEXT:
            assert piece.encode() not in body
    assert TOOL.encode() not in body
    assert b"query" not in body  # the tool's arguments


def events(req: CannedRequest) -> list[bytes]:
    return canned.stream_events(req)


def raw_stream(gateway: Gateway, path: str, payload: dict, headers: dict,
               scenario: str | None = None) -> bytes:
    extra = {"x-fake-scenario": scenario} if scenario else {}
    with raw_request(gateway.url, "POST", path, json.dumps(payload).encode(),
                     headers | {"content-type": "application/json"} | extra,
                     timeout=30) as response:
        assert response.status == 200
        assert response.header("content-length") is None
        return response.read_body()


def error_of(body: bytes, prefix: bytes) -> dict:
    """The error event after the reasoning: its JSON body."""
    assert body.startswith(prefix)
    event = body[len(prefix):]
    return json.loads(event.split(b"data: ", 1)[1])


# -- Done-when 1: a violation raises in every SDK, and nothing after the reasoning arrives --


def test_enforce_violation_anthropic_messages_stream(start, tmp_path, analysis):
    gateway = Gateway(start, tmp_path, analysis)
    judge(analysis, VERDICT_VIOLATION)
    req = CannedRequest(Api.ANTHROPIC_MESSAGES, "claude-test", True, TOOL)
    prefix = b"".join(events(req)[:8])
    payload = {"model": "claude-test", "max_tokens": 2048, "stream": True,
               "messages": MESSAGES, "tools": ANTHROPIC_TOOLS}
    body = raw_stream(gateway, "/anthropic/v1/messages", payload, {"x-api-key": KEY})
    assert_no_output(body)
    error = error_of(body, prefix)["error"]
    assert error["type"] == "integrity_violation"
    assert gateway.stored_violation(error["checkpoint_id"])

    client = anthropic.Anthropic(base_url=f"{gateway.url}/anthropic", api_key=KEY,
                                 max_retries=0)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as raised:
        with client.messages.stream(model="claude-test", max_tokens=2048, messages=MESSAGES,
                                    tools=ANTHROPIC_TOOLS) as stream:
            for event in stream:
                seen.append(event.type)
                assert event.type not in ("text", "input_json")
    assert "thinking" in seen
    assert raised.value.body["error"]["type"] == "integrity_violation"
    assert gateway.stored_violation(raised.value.body["error"]["checkpoint_id"])


def test_enforce_violation_anthropic_async(start, tmp_path, analysis):
    gateway = Gateway(start, tmp_path, analysis)
    judge(analysis, VERDICT_VIOLATION)

    async def run() -> tuple[list[str], anthropic.APIStatusError]:
        client = anthropic.AsyncAnthropic(base_url=f"{gateway.url}/anthropic", api_key=KEY,
                                          max_retries=0)
        seen: list[str] = []
        try:
            async with client.messages.stream(model="claude-test", max_tokens=2048,
                                              messages=MESSAGES, tools=ANTHROPIC_TOOLS) as s:
                async for event in s:
                    seen.append(event.type)
        except anthropic.APIStatusError as error:
            return seen, error
        raise AssertionError("the stream did not raise")

    seen, error = asyncio.run(run())
    assert "thinking" in seen and "text" not in seen
    assert gateway.stored_violation(error.body["error"]["checkpoint_id"])


def test_enforce_violation_openai_chat_stream(start, tmp_path, analysis):
    gateway = Gateway(start, tmp_path, analysis)
    judge(analysis, VERDICT_VIOLATION)
    req = CannedRequest(Api.OPENAI_CHAT, "deepseek-reasoner", True, TOOL)
    prefix = b"".join(events(req)[:4])
    payload = {"model": "deepseek-reasoner", "stream": True, "messages": MESSAGES,
               "tools": CHAT_TOOLS}
    body = raw_stream(gateway, "/openai/v1/chat/completions", payload,
                      {"authorization": f"Bearer {KEY}"})
    assert_no_output(body)
    error = error_of(body, prefix)["error"]
    assert error["code"] == "integrity_violation"
    assert gateway.stored_violation(error["checkpoint_id"])

    client = openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key=KEY, max_retries=0)
    reasoning: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in client.chat.completions.create(model="deepseek-reasoner", stream=True,
                                                    messages=MESSAGES, tools=CHAT_TOOLS):
            delta = chunk.choices[0].delta
            assert not delta.content and not delta.tool_calls
            reasoning.append(getattr(delta, "reasoning_content", None) or "")
    assert "".join(reasoning) == canned.THINKING_TEXT
    assert raised.value.type == raised.value.code == "integrity_violation"
    assert gateway.stored_violation(raised.value.body["checkpoint_id"])


def test_enforce_violation_openai_responses_stream(start, tmp_path, analysis):
    gateway = Gateway(start, tmp_path, analysis)
    judge(analysis, VERDICT_VIOLATION)
    req = CannedRequest(Api.OPENAI_RESPONSES, "o4-mini", True, TOOL)
    prefix = b"".join(events(req)[:10])
    payload = {"model": "o4-mini", "input": PROMPT, "stream": True, "tools": RESPONSES_TOOLS}
    body = raw_stream(gateway, "/openai/v1/responses", payload,
                      {"authorization": f"Bearer {KEY}"})
    assert_no_output(body)
    error = error_of(body, prefix)
    assert (error["type"], error["code"], error["sequence_number"]) == (
        "error", "integrity_violation", 10)
    assert gateway.stored_violation(error["error"]["checkpoint_id"])

    client = openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key=KEY, max_retries=0)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        with client.responses.stream(model="o4-mini", input=PROMPT,
                                     tools=RESPONSES_TOOLS) as stream:
            for event in stream:
                seen.append(event.type)
    assert "response.reasoning_summary_text.delta" in seen
    assert not [t for t in seen if "output_text" in t or "function_call" in t]
    assert raised.value.type == "integrity_violation"
    assert gateway.stored_violation(raised.value.body["checkpoint_id"])


def test_enforce_violation_gemini_generate_content_stream(start, tmp_path, analysis):
    gateway = Gateway(start, tmp_path, analysis)
    judge(analysis, VERDICT_VIOLATION)
    req = CannedRequest(Api.GEMINI_GENERATE, "gemini-test", True, TOOL)
    prefix = b"".join(events(req)[:3])
    payload = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
               "tools": [{"functionDeclarations": [{"name": TOOL}]}]}
    body = raw_stream(gateway, "/gemini/v1beta/models/gemini-test:streamGenerateContent?alt=sse",
                      payload, {"x-goog-api-key": KEY})
    assert_no_output(body)
    error = error_of(body, prefix)["error"]
    assert (error["code"], error["type"]) == (403, "integrity_violation")
    assert gateway.stored_violation(error["checkpoint_id"])

    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(
        base_url=f"{gateway.url}/gemini"))
    thoughts: list[str] = []
    with pytest.raises(genai_errors.ClientError) as raised:
        for chunk in client.models.generate_content_stream(
                model="gemini-test", contents=PROMPT,
                config=types.GenerateContentConfig(tools=GEMINI_TOOLS)):
            for part in chunk.candidates[0].content.parts:
                assert part.thought, "output after the reasoning reached the application"
                thoughts.append(part.text)
    assert "".join(thoughts) == canned.THINKING_TEXT
    assert (raised.value.code, raised.value.status) == (403, "PERMISSION_DENIED")
    details = raised.value.details["error"]
    assert details["type"] == "integrity_violation"
    assert gateway.stored_violation(details["checkpoint_id"])


# -- Done-when 2: a clear verdict releases the upstream's bytes, and only then ------------


STREAMS = [
    ("anthropic", "/anthropic/v1/messages", {"x-api-key": KEY},
     {"model": "claude-test", "max_tokens": 2048, "stream": True, "messages": MESSAGES,
      "tools": ANTHROPIC_TOOLS}, CannedRequest(Api.ANTHROPIC_MESSAGES, "claude-test", True, TOOL),
     8),
    ("openai_chat", "/openai/v1/chat/completions", {"authorization": f"Bearer {KEY}"},
     {"model": "deepseek-reasoner", "stream": True, "messages": MESSAGES, "tools": CHAT_TOOLS},
     CannedRequest(Api.OPENAI_CHAT, "deepseek-reasoner", True, TOOL), 4),
    ("openai_responses", "/openai/v1/responses", {"authorization": f"Bearer {KEY}"},
     {"model": "o4-mini", "input": PROMPT, "stream": True, "tools": RESPONSES_TOOLS},
     CannedRequest(Api.OPENAI_RESPONSES, "o4-mini", True, TOOL), 10),
    ("gemini", "/gemini/v1beta/models/gemini-test:streamGenerateContent?alt=sse",
     {"x-goog-api-key": KEY},
     {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
      "tools": [{"functionDeclarations": [{"name": TOOL}]}]},
     CannedRequest(Api.GEMINI_GENERATE, "gemini-test", True, TOOL), 3),
]


@pytest.mark.parametrize("name, path, headers, payload, req, reasoning", STREAMS,
                         ids=[s[0] for s in STREAMS])
def test_enforce_clear_holds_until_the_verdict(start, tmp_path, analysis, upstream, name, path,
                                               headers, payload, req, reasoning):
    gateway = Gateway(start, tmp_path, analysis)
    judge(analysis, "valid", "hold:valid")
    all_events = events(req)
    stream_id = uuid.uuid4().hex
    for _ in all_events:  # early releases: the upstream sends everything at once
        release(upstream, stream_id)
    separators = (b"\r\n\r\n",) if name == "gemini" else (b"\n\n",)
    with raw_request(gateway.url, "POST", path, json.dumps(payload).encode(),
                     headers | {"content-type": "application/json",
                                "x-fake-scenario": f"gated:{stream_id}"},
                     timeout=30) as response:
        assert response.status == 200 and response.header("x-aip-verdict") == "pending"
        got = [response.read_event(separators) for _ in range(reasoning)]
        assert got == all_events[:reasoning]
        # The upstream has sent it all, the verdict is held: nothing more can have come.
        wait_until(lambda: (stream_status(upstream, stream_id) or {}).get("finished"),
                   timeout=10, what="the upstream to finish")
        wait_until(lambda: held(analysis) == 1, timeout=10, what="the analysis to be asked")
        assert not response.has_pending_data()
        assert analysis_control(analysis, "POST", "release") == {"released": 1}
        rest = response.read_body()
    assert b"".join(got) + rest == b"".join(all_events)


@pytest.mark.parametrize("mode", ["observe", "nudge"])
def test_observe_and_nudge_never_hold(start, tmp_path, analysis, mode):
    gateway = Gateway(start, tmp_path, analysis, mode)
    judge(analysis, "valid", "hold:valid")
    name, path, headers, payload, req, _ = STREAMS[0]
    body = raw_stream(gateway, path, payload, headers)
    assert body == b"".join(events(req))
    # The verdict cannot have come: its analysis is held until released below.
    wait_until(lambda: held(analysis) == 1, timeout=10, what="the analysis to be asked")
    with sqlite3.connect(gateway.database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM integrity_checkpoints").fetchone()[0] == 0


# -- Done-when 3: keepalives while held; a held flood pauses the upstream -----------------


def test_a_held_stream_gets_keepalives_then_the_rest(start, tmp_path, analysis):
    gateway = Gateway(start, tmp_path, analysis, AIP_HOLD_KEEPALIVE_SECONDS="1",
                      AIP_ANALYSIS_TIMEOUT_MS="60000")
    judge(analysis, "valid", "hold:valid")
    name, path, headers, payload, req, reasoning = STREAMS[0]
    all_events = events(req)
    ping = b'event: ping\ndata: {"type": "ping"}\n\n'
    with raw_request(gateway.url, "POST", path, json.dumps(payload).encode(),
                     headers | {"content-type": "application/json"}, timeout=30) as response:
        got = [response.read_event() for _ in range(reasoning)]
        assert got == all_events[:reasoning]
        assert response.read_event() == ping
        assert response.read_event() == ping
        analysis_control(analysis, "POST", "release")
        rest = response.read_body()
    assert rest.replace(ping, b"") == b"".join(all_events[reasoning:])


def test_held_output_past_the_cap_pauses_the_upstream_and_memory_stays_flat(
        start, tmp_path, analysis, upstream):
    gateway = Gateway(start, tmp_path, analysis, AIP_ANALYSIS_TIMEOUT_MS="600000")
    judge(analysis, VERDICT_VIOLATION, "hold")
    stream_id = uuid.uuid4().hex
    total = 2 * 1024**3
    payload = {"model": "claude-test", "max_tokens": 2048, "stream": True, "messages": MESSAGES}
    raw_request(gateway.url, "GET", "/health/live").close()
    baseline = gateway.daemon.rss_bytes()
    with raw_request(gateway.url, "POST", "/anthropic/v1/messages",
                     json.dumps(payload).encode(),
                     {"x-api-key": KEY, "content-type": "application/json",
                      "x-fake-scenario": f"flood_after_thinking:{stream_id}:{total}"},
                     timeout=60) as response:
        head = [response.read_event() for _ in range(5)]  # message_start and the thinking
        readings: list[int] = []

        def upstream_stalled() -> bool:
            readings.append(stream_status(upstream, stream_id)["bytes_sent"])
            return len(readings) > 20 and len(set(readings[-20:])) == 1

        wait_until(upstream_stalled, timeout=60, interval=0.05, what="upstream to pause")
        sent = readings[-1]
        assert stream_status(upstream, stream_id)["paused"]
        assert sent < 64 * 1024**2, f"upstream sent {sent} bytes to a held stream"
        growth = gateway.daemon.rss_bytes() - baseline
        assert growth < 48 * 1024**2, f"daemon grew by {growth} bytes"
        assert held(analysis) == 1
        assert not response.has_pending_data(), "held output reached the client"
        analysis_control(analysis, "POST", "release", {"answer": VERDICT_VIOLATION})
        body = response.read_body()
    assert b"thinking_delta" in b"".join(head)
    assert b"text_delta" not in body and b"flood" not in body
    assert json.loads(body.split(b"data: ", 1)[1])["error"]["type"] == "integrity_violation"
    wait_until(lambda: stream_status(upstream, stream_id)["client_gone"], timeout=30,
               what="the daemon to close the upstream connection")
    assert stream_status(upstream, stream_id)["bytes_sent"] < sent + 8 * 1024**2

"""The fake upstream must fool the official SDKs and misbehave exactly as asked.

Most tests run the fake as a subprocess (as the proxy's tests will) and talk
to it with the real Anthropic, OpenAI and Gemini SDKs or with a raw socket
client that exposes chunk boundaries and truncation.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes import canned
from tests.fakes.canned import Api, CannedRequest
from tests.fakes.process import (
    clear_requests,
    control,
    fetch_requests,
    record_body,
    record_headers,
    release,
    run_fake_upstream,
    stream_status,
    wait_until,
)
from tests.fakes.rawhttp import RawHTTPResponse, raw_request
from tests.fakes.upstream import (
    Scenario,
    UnknownScenario,
    listen_fake_upstream,
    parse_scenario,
)

CLAUDE = "claude-fake-1"
GPT = "gpt-fake-1"
GEMINI = "gemini-fake-1"
MESSAGES = [{"role": "user", "content": "héllo 世界"}]

# name -> (path, JSON payload) of a streaming request for each provider API.
STREAM_REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "anthropic": (
        "/v1/messages",
        {"model": CLAUDE, "max_tokens": 64, "stream": True, "messages": MESSAGES},
    ),
    "openai_chat": ("/v1/chat/completions", {"model": GPT, "stream": True, "messages": MESSAGES}),
    "openai_responses": ("/v1/responses", {"model": GPT, "stream": True, "input": "héllo"}),
    "gemini": (
        f"/v1beta/models/{GEMINI}:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "héllo"}]}]},
    ),
}
JSON_REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "anthropic": ("/v1/messages", {"model": CLAUDE, "max_tokens": 64, "messages": MESSAGES}),
    "openai_chat": ("/v1/chat/completions", {"model": GPT, "messages": MESSAGES}),
    "openai_responses": ("/v1/responses", {"model": GPT, "input": "héllo"}),
    "gemini": (
        f"/v1beta/models/{GEMINI}:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": "héllo"}]}]},
    ),
}
API_OF = {
    "anthropic": Api.ANTHROPIC_MESSAGES,
    "openai_chat": Api.OPENAI_CHAT,
    "openai_responses": Api.OPENAI_RESPONSES,
    "gemini": Api.GEMINI_GENERATE,
}


# --------------------------------------------------------------------------
# Fixtures and helpers.


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One fake upstream process for the module; it must log no errors."""
    log = tmp_path_factory.mktemp("fake-upstream") / "stderr.log"
    with run_fake_upstream(stderr_path=log) as base_url:
        yield base_url
    errors = log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in errors and "Unhandled" not in errors, errors


@pytest.fixture
def base(upstream: str) -> str:
    """The fake's base URL, with its request log emptied."""
    clear_requests(upstream)
    return upstream


def post(
    base_url: str,
    path: str,
    payload: dict[str, Any] | bytes,
    scenario: str | None = None,
    **kwargs: Any,
) -> RawHTTPResponse:
    """POST JSON (or raw bytes) with an optional scenario, on a fresh connection."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
    headers = {"content-type": "application/json"}
    if scenario is not None:
        headers["x-fake-scenario"] = scenario
    return raw_request(base_url, "POST", path, body, headers, **kwargs)


def expected_for(path: str, payload: dict[str, Any]) -> bytes | list[bytes]:
    """What the fake sends for this request, computed from the pure canned module."""
    raw_path, _, query = path.partition("?")
    req = canned.parse_request(raw_path, query, json.dumps(payload).encode("utf-8"))
    assert req is not None
    return canned.canned_for(req)


def unique(prefix: str) -> str:
    """A stream id no other test uses, since the fake process is shared."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def open_silent_socket(base_url: str, body: bytes, scenario: str) -> socket.socket:
    """Send a request without waiting for any answer."""
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: {parts.netloc}\r\n"
        f"content-length: {len(body)}\r\nx-fake-scenario: {scenario}\r\n\r\n"
    )
    sock.sendall(head.encode("latin-1") + body)
    return sock


# --------------------------------------------------------------------------
# Pure canned data.


def test_canned_requests_use_the_request_model() -> None:
    for name, (path, payload) in {**STREAM_REQUESTS, **JSON_REQUESTS}.items():
        expected = expected_for(path, payload)
        data = b"".join(expected) if isinstance(expected, list) else expected
        model = GEMINI if name == "gemini" else CLAUDE if name == "anthropic" else GPT
        assert model.encode() in data, name
        assert canned.TEXT.encode("utf-8") in data or "世界".encode() in data


def test_canned_shortcut_matches_parsed_request() -> None:
    path, payload = STREAM_REQUESTS["anthropic"]
    assert expected_for(path, payload) == canned.canned(Api.ANTHROPIC_MESSAGES, True, CLAUDE)
    path, payload = JSON_REQUESTS["gemini"]
    assert expected_for(path, payload) == canned.canned(Api.GEMINI_GENERATE, False, GEMINI)


def test_parse_request_and_routes() -> None:
    assert canned.match_route("/v1/messages") == (Api.ANTHROPIC_MESSAGES, None, False)
    assert canned.match_route("/v1beta/models/gemini-x:streamGenerateContent") == (
        Api.GEMINI_GENERATE,
        "gemini-x",
        True,
    )
    assert canned.match_route("/v1/models/gemini-x%3AgenerateContent") == (
        Api.GEMINI_GENERATE,
        "gemini-x",
        False,
    )
    assert canned.match_route("/v1/embeddings") is None
    req = canned.parse_request(
        "/v1/messages", "", b'{"model": "m", "stream": true, "tools": [{"name": "lookup"}]}'
    )
    assert req == CannedRequest(Api.ANTHROPIC_MESSAGES, "m", True, tool_name="lookup")
    gemini = canned.parse_request("/v1beta/models/g:streamGenerateContent", "", b"{}")
    assert gemini is not None and not canned.is_sse(gemini)
    with pytest.raises(canned.InvalidRequest):
        canned.parse_request("/v1/messages", "", b"[1, 2]")
    with pytest.raises(canned.InvalidRequest):
        canned.parse_request("/v1/messages", "", b"\xff{")


def test_split_sse_events_round_trips_every_stream() -> None:
    for api in Api:
        events = canned.stream_events(CannedRequest(api, "m", True, include_usage=True))
        assert canned.split_sse_events(b"".join(events)) == events
        assert all(event.endswith(canned.sse_separator(api)) for event in events)


def test_tiny_pieces_cut_characters_and_separators() -> None:
    data = b"".join(canned.stream_events(CannedRequest(Api.GEMINI_GENERATE, "m", True)))
    pieces = canned.tiny_pieces(data, seed=3)
    assert b"".join(pieces) == data
    assert all(1 <= len(piece) <= 7 for piece in pieces)
    boundaries = {0}
    for piece in pieces:
        boundaries.add(max(boundaries) + len(piece))
    assert data.find(b"\r\n\r\n") + 1 in boundaries
    lead = data.find("世".encode())
    assert lead + 1 in boundaries
    assert canned.tiny_pieces(data, seed=3) == pieces


def test_flood_events_have_exact_size() -> None:
    for total in (808, 1000, 4096, 65_537, 1_000_000):
        events = list(canned.flood_events("m", total))
        assert sum(map(len, events)) == total
        assert events[0].startswith(b"event: message_start\n")
        assert events[-1] == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        assert all(len(event) < 1200 for event in events)


def test_error_bodies_are_provider_shaped() -> None:
    assert json.loads(canned.error_body(Api.ANTHROPIC_MESSAGES, 429)) == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "fake upstream error 429 (rate_limit_error)",
        },
    }
    openai_error = json.loads(canned.error_body(Api.OPENAI_CHAT, 429))["error"]
    assert openai_error["code"] == "rate_limit_exceeded" and openai_error["type"] == "requests"
    gemini_error = json.loads(canned.error_body(Api.GEMINI_GENERATE, 503))["error"]
    assert gemini_error == {
        "code": 503,
        "message": "fake upstream error 503 (UNAVAILABLE)",
        "status": "UNAVAILABLE",
    }


def test_parse_scenario() -> None:
    assert parse_scenario(None) == Scenario()
    assert parse_scenario(" ok ") == Scenario()
    assert parse_scenario("split") == Scenario(kind="split")
    assert parse_scenario("split:2") == Scenario(kind="split", delay=0.002)
    assert parse_scenario("gated:a:b") == Scenario(kind="gated", stream_id="a:b")
    assert parse_scenario("abort_after:0") == Scenario(kind="abort_after", events=0)
    assert parse_scenario("status:529") == Scenario(kind="status", status=529)
    assert parse_scenario("flood:f1:1000") == Scenario(
        kind="flood", stream_id="f1", total_bytes=1000
    )
    assert parse_scenario("silent") == Scenario(kind="silent")
    assert parse_scenario("echo") == Scenario(kind="echo")
    bad = ["nope", "gated", "gated:", "abort_after:x", "abort_after:-1", "status:99", "status:600"]
    bad += ["flood:f1", "flood::10", "flood:f:0", "echo:1", "split:x", "split:5000"]
    for value in bad:
        with pytest.raises(UnknownScenario):
            parse_scenario(value)


# --------------------------------------------------------------------------
# In-process use on a caller-provided reactor.


def test_listen_in_process_on_a_private_reactor() -> None:
    from twisted.internet.selectreactor import SelectReactor

    reactor = SelectReactor()
    listening = listen_fake_upstream(reactor)
    base_url = f"http://127.0.0.1:{listening.getHost().port}"
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False})
    thread.start()
    try:
        path, payload = STREAM_REQUESTS["openai_chat"]
        with post(base_url, path, payload, scenario="split") as response:
            assert response.read_body() == b"".join(expected_for(path, payload))
        state = listening.factory.state
        assert [r["path"] for r in state.requests] == ["/v1/chat/completions"]
    finally:
        reactor.callFromThread(reactor.stop)
        thread.join(10)
    assert not thread.is_alive()


# --------------------------------------------------------------------------
# Official SDKs against the subprocess.


def test_anthropic_sdk_create(base: str) -> None:
    client = anthropic.Anthropic(base_url=base, api_key="k", max_retries=0, timeout=10)
    message = client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
    assert message.model == CLAUDE
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == canned.THINKING_TEXT
    assert thinking.signature == canned.SIGNATURE
    assert text.type == "text" and text.text == canned.TEXT
    assert message.usage.output_tokens > 0

    tool = {"name": "lookup", "description": "d", "input_schema": {"type": "object"}}
    with_tool = client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES, tools=[tool])
    assert with_tool.stop_reason == "tool_use"
    assert (
        with_tool.content[2].type == "tool_use" and with_tool.content[2].input == canned.TOOL_INPUT
    )


@pytest.mark.parametrize("scenario", ["ok", "split"])
def test_anthropic_sdk_stream(base: str, scenario: str) -> None:
    client = anthropic.Anthropic(base_url=base, api_key="k", max_retries=0, timeout=10)
    with client.messages.stream(
        model=CLAUDE,
        max_tokens=64,
        messages=MESSAGES,
        extra_headers={"x-fake-scenario": scenario},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == canned.TEXT
    assert final.content[0].thinking == canned.THINKING_TEXT
    assert final.content[0].signature == canned.SIGNATURE
    assert final.stop_reason == "end_turn"
    (record,) = fetch_requests(base)
    assert record_headers(record, "x-fake-scenario") == [scenario]
    assert json.loads(record_body(record))["stream"] is True


def test_openai_chat_sdk(base: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0, timeout=10)
    completion = client.chat.completions.create(model=GPT, messages=MESSAGES)
    assert completion.model == GPT
    assert completion.choices[0].message.content == canned.TEXT

    stream = client.chat.completions.create(
        model=GPT,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-scenario": "split"},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == canned.TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_openai_responses_sdk(base: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0, timeout=10)
    response = client.responses.create(model=GPT, input="héllo")
    assert response.model == GPT
    assert response.output_text == canned.TEXT
    assert response.output[0].type == "reasoning"
    assert response.output[0].summary[0].text == canned.THINKING_TEXT

    events = list(client.responses.create(model=GPT, input="héllo", stream=True))
    assert events[0].type == "response.created"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    summary = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    assert "".join(deltas) == canned.TEXT and "".join(summary) == canned.THINKING_TEXT
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == canned.TEXT
    assert [e.sequence_number for e in events] == list(range(len(events)))

    with client.responses.stream(model=GPT, input="héllo") as managed:
        final = managed.get_final_response()
    assert final.output_text == canned.TEXT


@pytest.mark.parametrize("scenario", ["ok", "split"])
def test_gemini_sdk(base: str, scenario: str) -> None:
    client = genai.Client(
        api_key="k",
        http_options=genai_types.HttpOptions(base_url=base, headers={"x-fake-scenario": scenario}),
    )
    response = client.models.generate_content(model=GEMINI, contents="héllo")
    assert response.model_version == GEMINI
    thought, answer = response.candidates[0].content.parts
    assert thought.thought is True and thought.text == canned.THINKING_TEXT
    assert answer.text == canned.TEXT and response.text == canned.TEXT

    chunks = list(client.models.generate_content_stream(model=GEMINI, contents="héllo"))
    parts = [p for c in chunks for p in c.candidates[0].content.parts]
    assert "".join(p.text for p in parts if p.thought) == canned.THINKING_TEXT
    assert "".join(p.text for p in parts if not p.thought) == canned.TEXT
    assert chunks[-1].usage_metadata.total_token_count > 0

    records = fetch_requests(base)
    assert [r["path"].rsplit(":", 1)[1] for r in records] == [
        "generateContent",
        "streamGenerateContent",
    ]
    assert records[1]["query"] == "alt=sse"


# --------------------------------------------------------------------------
# Raw wire behaviour.


@pytest.mark.parametrize("name", sorted(STREAM_REQUESTS))
def test_stream_bytes_match_canned_events(base: str, name: str) -> None:
    path, payload = STREAM_REQUESTS[name]
    expected = expected_for(path, payload)
    assert isinstance(expected, list)
    with post(base, path, payload) as response:
        assert response.status == 200
        assert response.header("content-type", "").startswith("text/event-stream")
        assert response.header("cache-control") == "no-cache"
        assert response.header("request-id") == response.header("x-request-id")
        assert response.chunked
        received = []
        while (event := response.read_event()) is not None:
            received.append(event)
    assert received == expected


@pytest.mark.parametrize("name", sorted(JSON_REQUESTS))
def test_json_body_matches_canned(base: str, name: str) -> None:
    path, payload = JSON_REQUESTS[name]
    with post(base, path, payload) as response:
        assert response.status == 200
        assert response.header("content-type", "").startswith("application/json")
        body = response.read_body()
        assert response.header("content-length") == str(len(body))
    assert body == expected_for(path, payload)


def test_gemini_stream_without_alt_sse_is_a_json_array(base: str) -> None:
    path, payload = STREAM_REQUESTS["gemini"]
    path = path.split("?")[0]
    with post(base, path, payload) as response:
        chunks = json.loads(response.read_body())
    assert len(chunks) == len(canned.THINKING_PIECES) + len(canned.TEXT_PIECES)
    assert chunks[0]["candidates"][0]["content"]["parts"][0]["thought"] is True


@pytest.mark.parametrize("name", ["anthropic", "gemini"])
def test_split_delivers_intact_bytes_in_tiny_writes(base: str, name: str) -> None:
    path, payload = STREAM_REQUESTS[name]
    expected = b"".join(expected_for(path, payload))
    with post(base, path, payload, scenario="split") as response:
        body = response.read_body()
        chunks = response.chunks
    assert body == expected
    assert len(chunks) > len(expected) // 8
    assert max(map(len, chunks)) <= 7
    undecodable = 0
    for chunk in chunks:
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            undecodable += 1
    assert undecodable > 0
    # Every blank-line separator is cut in the middle, never sent whole.
    assert not any(b"\n\n" in chunk or b"\r\n" in chunk for chunk in chunks)


def test_split_json_body(base: str) -> None:
    path, payload = JSON_REQUESTS["openai_responses"]
    expected = expected_for(path, payload)
    with post(base, path, payload, scenario="split:1") as response:
        assert response.header("content-length") == str(len(expected))
        assert not response.chunked
        pieces = []
        while (piece := response.read_piece()) is not None:
            pieces.append(piece)
    assert b"".join(pieces) == expected
    assert len(pieces) > 1


def test_split_client_disconnect_is_harmless(base: str) -> None:
    path, payload = STREAM_REQUESTS["anthropic"]
    with post(base, path, payload, scenario="split:2") as response:
        assert response.read_piece()
    path, payload = JSON_REQUESTS["anthropic"]
    with post(base, path, payload) as response:
        assert response.read_body() == expected_for(path, payload)


def test_gated_releases_one_event_per_call(base: str) -> None:
    stream_id = unique("gate")
    path, payload = STREAM_REQUESTS["openai_responses"]
    expected = expected_for(path, payload)
    assert isinstance(expected, list)
    with post(base, path, payload, scenario=f"gated:{stream_id}") as response:
        assert response.status == 200
        assert response.read_event() == expected[0]
        status = wait_until(lambda: stream_status(base, stream_id), what="gated stream status")
        assert status == {
            "events_sent": 1,
            "bytes_sent": len(expected[0]),
            "finished": False,
            "client_gone": False,
        }
        assert not response.has_pending_data()
        for index in range(1, len(expected)):
            answer = release(base, stream_id)
            assert answer["released"] is True and answer["events_sent"] == index + 1
            assert response.read_event() == expected[index]
            if index < len(expected) - 1:
                assert not response.has_pending_data()
        assert response.read_event() is None
        assert response.complete
    final = stream_status(base, stream_id)
    assert final == {
        "events_sent": len(expected),
        "bytes_sent": sum(map(len, expected)),
        "finished": True,
        "client_gone": False,
    }
    code, body = control(base, "POST", f"release/{stream_id}")
    assert code == 409 and stream_id in body["error"]["message"]


def test_gated_early_releases_are_consumed_in_order(base: str) -> None:
    stream_id = unique("early")
    assert stream_status(base, stream_id) is None
    assert release(base, stream_id) == {"released": False, "pending": 1}
    assert release(base, stream_id) == {"released": False, "pending": 2}
    path, payload = STREAM_REQUESTS["anthropic"]
    expected = expected_for(path, payload)
    with post(base, path, payload, scenario=f"gated:{stream_id}") as response:
        assert [response.read_event() for _ in range(3)] == expected[:3]
        assert stream_status(base, stream_id)["events_sent"] == 3
        assert not response.has_pending_data()
        assert release(base, stream_id)["events_sent"] == 4
        assert response.read_event() == expected[3]


def test_gated_client_disconnect_is_noticed(base: str) -> None:
    stream_id = unique("gone")
    path, payload = STREAM_REQUESTS["gemini"]
    with post(base, path, payload, scenario=f"gated:{stream_id}") as response:
        assert response.read_event() is not None
    status = wait_until(
        lambda: (s := stream_status(base, stream_id)) and s["client_gone"] and s,
        what="client_gone",
    )
    assert status["finished"] is False and status["events_sent"] == 1
    code, _ = control(base, "POST", f"release/{stream_id}")
    assert code == 409


@pytest.mark.parametrize("count", [0, 3])
def test_abort_after_leaves_an_incomplete_chunked_body(base: str, count: int) -> None:
    path, payload = STREAM_REQUESTS["openai_chat"]
    expected = expected_for(path, payload)
    with post(base, path, payload, scenario=f"abort_after:{count}") as response:
        assert response.status == 200 and response.chunked
        body, complete = response.read_until_closed()
        assert not complete
        assert response.connection_error is not None
    assert body == b"".join(expected[:count])


@pytest.mark.parametrize("name", sorted(JSON_REQUESTS))
def test_status_scenario_sends_provider_error(base: str, name: str) -> None:
    path, payload = JSON_REQUESTS[name]
    with post(base, path, payload, scenario="status:429") as response:
        assert response.status == 429
        assert response.header("retry-after") == "7"
        assert response.header("x-fake-upstream") == "yes"
        assert response.header("content-type") == "application/json"
        body = response.read_body()
    assert body == canned.error_body(API_OF[name], 429)
    error = json.loads(body)
    if name == "anthropic":
        assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
    elif name == "gemini":
        assert error["error"]["code"] == 429 and error["error"]["status"] == "RESOURCE_EXHAUSTED"
    else:
        assert error["error"]["code"] == "rate_limit_exceeded" and error["error"]["message"]


def test_status_scenario_surfaces_in_sdks(base: str) -> None:
    headers = {"x-fake-scenario": "status:429"}
    claude = anthropic.Anthropic(base_url=base, api_key="k", max_retries=0, default_headers=headers)
    with pytest.raises(anthropic.RateLimitError) as claude_error:
        claude.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
    assert claude_error.value.response.headers["retry-after"] == "7"
    gpt = openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0, default_headers=headers)
    with pytest.raises(openai.RateLimitError):
        gpt.chat.completions.create(model=GPT, messages=MESSAGES)
    gemini = genai.Client(
        api_key="k",
        http_options=genai_types.HttpOptions(
            base_url=base,
            headers={"x-fake-scenario": "status:503"},
            retry_options=genai_types.HttpRetryOptions(attempts=1),
        ),
    )
    with pytest.raises(genai_errors.ServerError) as gemini_error:
        gemini.models.generate_content(model=GEMINI, contents="x")
    assert gemini_error.value.code == 503 and gemini_error.value.status == "UNAVAILABLE"


def test_echo_returns_the_exact_body(base: str) -> None:
    body = bytes(range(256)) * 8 + "é\r\n\r\n世".encode() + b"\xff\xfe\x00"
    response = raw_request(
        base,
        "PUT",
        "/v1/files/raw%20upload?purpose=a%2Fb&x=1",
        body,
        {
            "content-type": "application/x-custom",
            "x-fake-scenario": "echo",
            "X-Mixed-Case": "Value",
        },
    )
    with response:
        assert response.status == 200
        assert response.header("content-type") == "application/octet-stream"
        assert response.read_body() == body
    (record,) = fetch_requests(base)
    assert record["method"] == "PUT"
    assert record["path"] == "/v1/files/raw%20upload"
    assert record["query"] == "purpose=a%2Fb&x=1"
    assert record_body(record) == body
    assert ["x-mixed-case", "Value"] in record["headers"]
    assert all(name == name.lower() for name, _ in record["headers"])


def test_silent_never_answers(base: str) -> None:
    body = json.dumps(JSON_REQUESTS["anthropic"][1]).encode()
    with open_silent_socket(base, body, "silent") as sock:
        wait_until(lambda: fetch_requests(base), what="silent request recorded")
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
    # The fake still serves others once the silent client has gone.
    path, payload = JSON_REQUESTS["openai_chat"]
    with post(base, path, payload) as response:
        assert response.status == 200


def test_flood_respects_backpressure(base: str) -> None:
    stream_id = unique("flood")
    total = 32 * 1024 * 1024
    path, payload = STREAM_REQUESTS["anthropic"]
    with post(
        base, path, payload, scenario=f"flood:{stream_id}:{total}", recv_buffer=256 * 1024
    ) as response:
        assert response.header("content-type", "").startswith("text/event-stream")
        paused = wait_until(
            lambda: (s := stream_status(base, stream_id)) and s["paused"] and s,
            what="flood producer paused",
        )
        assert paused["bytes_sent"] < total and not paused["finished"]
        body = response.read_body()
    assert len(body) == total
    assert body.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    final = wait_until(
        lambda: (s := stream_status(base, stream_id)) and s["finished"] and s,
        what="flood finished",
    )
    assert final["bytes_sent"] == total and final["client_gone"] is False
    assert final["events_sent"] == len(canned.split_sse_events(body))


def test_flood_client_disconnect_is_noticed(base: str) -> None:
    stream_id = unique("flood-gone")
    path, payload = STREAM_REQUESTS["anthropic"]
    scenario = f"flood:{stream_id}:{64 * 1024 * 1024}"
    with post(base, path, payload, scenario=scenario, recv_buffer=256 * 1024):
        wait_until(lambda: (s := stream_status(base, stream_id)) and s["paused"], what="paused")
    status = wait_until(
        lambda: (s := stream_status(base, stream_id)) and s["client_gone"] and s,
        what="client_gone",
    )
    assert not status["finished"]


def test_unknown_scenario_path_and_method(base: str) -> None:
    path, payload = JSON_REQUESTS["anthropic"]
    with post(base, path, payload, scenario="teleport:3") as response:
        assert response.status == 400
        assert "teleport:3" in json.loads(response.read_body())["error"]["message"]
    with post(base, "/v2/nothing", payload) as response:
        assert response.status == 404
        assert "/v2/nothing" in json.loads(response.read_body())["error"]["message"]
    with raw_request(base, "GET", "/v1/messages") as response:
        assert response.status == 405
    with post(base, path, b"{not json") as response:
        assert response.status == 400
        assert json.loads(response.read_body())["error"]["type"] == "invalid_request_error"
    assert control(base, "GET", "nowhere")[0] == 404
    assert control(base, "GET", "streams/never-started")[0] == 404


def test_requests_are_recorded_and_cleared(base: str) -> None:
    path, payload = STREAM_REQUESTS["gemini"]
    with post(base, path, payload, scenario="ok") as response:
        response.read_body()
    path2, payload2 = JSON_REQUESTS["openai_chat"]
    with post(base, path2, payload2) as response:
        response.read_body()
    records = fetch_requests(base)
    assert [r["seq"] for r in records] == [1, 2]
    first = records[0]
    assert first["method"] == "POST"
    assert first["path"] == f"/v1beta/models/{GEMINI}:streamGenerateContent"
    assert first["query"] == "alt=sse"
    assert json.loads(record_body(first)) == payload
    assert record_headers(first, "content-type") == ["application/json"]
    assert record_headers(first, "x-fake-scenario") == ["ok"]
    assert records[1]["path"] == "/v1/chat/completions" and records[1]["query"] == ""
    assert clear_requests(base) == 2
    assert fetch_requests(base) == []


def test_each_fake_process_has_its_own_state(base: str) -> None:
    path, payload = JSON_REQUESTS["anthropic"]
    with post(base, path, payload) as response:
        response.read_body()
    with run_fake_upstream() as other:
        assert other != base and other.startswith("http://127.0.0.1:")
        assert fetch_requests(other) == []
    assert len(fetch_requests(base)) == 1

"""Held streams, provider side: which events are reasoning, neutral or output; the error
event each SDK raises on; the keepalive each SDK ignores."""

from __future__ import annotations

import json

import pytest

from mnemomd.providers import PROVIDERS
from mnemomd.providers.base import (
    NEUTRAL,
    OUTPUT,
    REASONING,
    RequestInfo,
    StreamError,
    StreamState,
)
from mnemomd.providers.sse import SSEParser, parse_sse
from tests.fakes import canned
from tests.fakes.canned import Api, CannedRequest

R, N, OUT = REASONING, NEUTRAL, OUTPUT
TOOL = "send_to_pastebin"


def classes(provider: str, api: str, events: list[bytes]) -> list[str]:
    info = RequestInfo(api, "m", True, None)
    out = []
    for raw in events:
        [event] = parse_sse(raw)
        out.append(PROVIDERS[provider].classify_stream_event(info, event))
    return out


# Every canned event, by the APIs' documentation: head and reasoning first, then output.
ANTHROPIC = [N, R, N, R, R, R, R, R] + [OUT] * 14  # thinking block, then text and tool_use
CHAT = [N, R, R, R] + [OUT] * 11  # role, reasoning_content x3; content, tool_calls, finish
RESPONSES = [N, N] + [R] * 8 + [OUT] * 17
GEMINI = [R, R, R] + [OUT] * 6


@pytest.mark.parametrize("provider, api, canned_req, expected", [
    ("anthropic", "anthropic.messages",
     CannedRequest(Api.ANTHROPIC_MESSAGES, "claude-x", True, TOOL), ANTHROPIC),
    ("openai", "openai.chat", CannedRequest(Api.OPENAI_CHAT, "deepseek-reasoner", True, TOOL),
     CHAT),
    ("openai", "openai.responses", CannedRequest(Api.OPENAI_RESPONSES, "o4", True, TOOL),
     RESPONSES),
    ("gemini", "gemini.generate", CannedRequest(Api.GEMINI_GENERATE, "g", True, TOOL), GEMINI),
], ids=["anthropic", "chat", "responses", "gemini"])
def test_every_canned_event_is_classed(provider, api, canned_req, expected):
    events = canned.stream_events(canned_req)
    got = classes(provider, api, events)
    # Only the first output event matters to the relay; all of them are still output.
    first_output = got.index(OUTPUT)
    assert got[:first_output] == expected[:first_output]
    assert first_output == expected.index(OUTPUT)
    assert all(canned.TEXT_PIECES[-1].encode() not in e for e in events[:first_output])
    assert len(got) == len(expected)


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_the_openai_compatible_routes_class_chat_chunks(provider):
    events = canned.stream_events(CannedRequest(Api.OPENAI_CHAT, "x-reasoner", True))
    assert classes(provider, "openai.chat", events)[:5] == [N, R, R, R, OUT]


def sse(doc: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return head + b"data: " + data + b"\n\n"


@pytest.mark.parametrize("event, expected", [
    # Anything the classifier does not know is output: the safe side.
    (sse({"type": "content_block_start", "index": 0,
          "content_block": {"type": "redacted_thinking", "data": "x"}}), R),
    (sse({"type": "content_block_start", "index": 0,
          "content_block": {"type": "server_tool_use", "name": "web_search"}}), OUT),
    (sse({"type": "content_block_delta", "index": 0,
          "delta": {"type": "text_delta", "text": "x"}}), OUT),
    (sse({"type": "content_block_delta", "index": 0,
          "delta": {"type": "citations_delta"}}), OUT),
    (sse({"type": "brand_new_event"}, "brand_new_event"), OUT),
    (sse({"type": "error", "error": {"type": "overloaded_error"}}, "error"), OUT),
    (sse(b"not json", "content_block_start"), OUT),
    (sse({"type": "ping"}, "ping"), N),
])
def test_anthropic_edges(event, expected):
    assert classes("anthropic", "anthropic.messages", [event]) == [expected]


def chunk(*deltas: dict, finish: str | None = None, **extra: object) -> bytes:
    return sse({"id": "c", "object": "chat.completion.chunk", **extra,
                "choices": [{"index": i, "delta": d, "finish_reason": finish}
                            for i, d in enumerate(deltas)]})


@pytest.mark.parametrize("event, expected", [
    (chunk({"role": "assistant", "content": ""}), N),
    (chunk({"reasoning": "thinking out loud"}), R),  # newer servers' field
    (chunk({"reasoning_content": "a", "content": "b"}), OUT),  # a chunk mixing both
    (chunk({"reasoning_content": "a"}, {"content": "b"}), OUT),  # another choice's output
    (chunk({"refusal": "no"}), OUT),
    (chunk({"function_call": {"name": "f"}}), OUT),
    (chunk({"audio": {"id": "a"}}), OUT),
    (chunk({"something_new": "x"}), OUT),
    (chunk({"reasoning_content": "a"}, finish="length"), OUT),
    (sse({"id": "c", "choices": [], "usage": {"total_tokens": 3}}), N),
    (sse({"error": {"message": "x"}}), OUT),
    (sse({"id": "c"}), OUT),
    (sse(b"[DONE]"), OUT),
])
def test_chat_edges(event, expected):
    assert classes("openai", "openai.chat", [event]) == [expected]


@pytest.mark.parametrize("event, expected", [
    (sse({"type": "response.queued"}), N),
    (sse({"type": "response.output_item.added", "item": {"type": "mcp_list_tools"}}), N),
    (sse({"type": "response.mcp_list_tools.completed"}), N),
    (sse({"type": "response.reasoning_text.delta", "delta": "x"}), R),
    (sse({"type": "response.output_item.added", "item": {"type": "function_call"}}), OUT),
    (sse({"type": "response.output_item.added", "item": {"type": "web_search_call"}}), OUT),
    (sse({"type": "response.output_item.added", "item": {"type": "custom_tool_call"}}), OUT),
    (sse({"type": "response.failed"}), OUT),
    (sse({"type": "response.something_new"}), OUT),
])
def test_responses_edges(event, expected):
    assert classes("openai", "openai.responses", [event]) == [expected]


def gemini(*parts: dict, finish: str | None = None) -> bytes:
    candidate: dict = {"content": {"parts": list(parts), "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    return b"data: " + json.dumps({"candidates": [candidate]}).encode() + b"\r\n\r\n"


@pytest.mark.parametrize("event, expected", [
    (gemini({"text": "a", "thought": True}, {"text": "b"}), OUT),  # mixed: held whole
    (gemini({"functionCall": {"name": "f"}}), OUT),
    (gemini({"executableCode": {"code": "x"}}), OUT),
    (gemini({"text": "a", "thought": True}, finish="SAFETY"), OUT),
    (gemini(), OUT),
    (b'data: {"usageMetadata": {"totalTokenCount": 3}}\r\n\r\n', N),
    (b'data: {"promptFeedback": {"safetyRatings": []}}\r\n\r\n', N),
    (b'data: {"error": {"code": 500}}\r\n\r\n', OUT),
])
def test_gemini_edges(event, expected):
    assert classes("gemini", "gemini.generate", [event]) == [expected]


def test_unknown_apis_are_all_output():
    info = RequestInfo(None, None, True, None)
    [event] = parse_sse(sse({"type": "message_start"}))
    assert all(p.classify_stream_event(info, event) == OUTPUT for p in PROVIDERS.values())


ERROR = StreamError("integrity_violation", "withheld", "ic-1",
                    ({"category": "prompt_injection", "severity": "high",
                      "description": "d"},))
CONCERNS = [{"category": "prompt_injection", "severity": "high", "description": "d"}]


def error_bytes(provider: str, api: str, state: StreamState = StreamState()) -> bytes:
    return PROVIDERS[provider].stream_error_event(RequestInfo(api, "m", True, None), ERROR,
                                                  state)


def test_error_events_have_each_apis_shape():
    assert error_bytes("anthropic", "anthropic.messages") == (
        b'event: error\ndata: {"type":"error","error":{"type":"integrity_violation",'
        b'"message":"withheld","checkpoint_id":"ic-1","concerns":' +
        json.dumps(CONCERNS, separators=(",", ":")).encode() + b"}}\n\n")
    chat = json.loads(error_bytes("openai", "openai.chat").removeprefix(b"data: "))
    assert chat == {"error": {"message": "withheld", "type": "integrity_violation",
                              "param": None, "code": "integrity_violation",
                              "checkpoint_id": "ic-1", "concerns": CONCERNS}}
    raw = error_bytes("gemini", "gemini.generate")
    assert raw.startswith(b'data: {"error":') and raw.endswith(b"}}\r\n\r\n")
    body = json.loads(raw.removeprefix(b"data: "))["error"]
    assert (body["code"], body["status"], body["type"]) == (403, "PERMISSION_DENIED",
                                                            "integrity_violation")
    assert body["details"][0]["metadata"] == {"checkpoint_id": "ic-1"}
    # The Anthropic and Gemini OpenAI-compatible routes speak Chat's shape.
    assert error_bytes("anthropic", "openai.chat") == error_bytes("openai", "openai.chat")
    assert error_bytes("gemini", "openai.chat") == error_bytes("openai", "openai.chat")


def test_responses_error_event_numbers_itself_after_the_last_relayed_event():
    events = canned.stream_events(CannedRequest(Api.OPENAI_RESPONSES, "o4", True))
    last = parse_sse(events[9])[0]
    raw = error_bytes("openai", "openai.responses", StreamState(last))
    assert raw.startswith(b"event: error\ndata: ")
    doc = json.loads(raw.split(b"data: ", 1)[1])
    assert (doc["type"], doc["code"], doc["sequence_number"]) == (
        "error", "integrity_violation", 10)
    assert doc["error"]["checkpoint_id"] == "ic-1" and doc["error"]["type"] == doc["code"]
    assert json.loads(error_bytes("openai", "openai.responses").split(b"data: ", 1)[1])[
        "sequence_number"] == 0


def test_synthetic_errors_say_so():
    error = StreamError("integrity_violation", "m", None, (), synthetic=True,
                        reason="analysis_timeout")
    raw = PROVIDERS["anthropic"].stream_error_event(
        RequestInfo("anthropic.messages", "m", True, None), error, StreamState())
    body = json.loads(raw.split(b"data: ", 1)[1])["error"]
    assert (body["checkpoint_id"], body["synthetic"], body["reason"]) == (
        None, True, "analysis_timeout")


@pytest.mark.parametrize("provider, api, keepalive", [
    ("anthropic", "anthropic.messages", b'event: ping\ndata: {"type": "ping"}\n\n'),
    ("anthropic", "openai.chat", b": ping\n\n"),
    ("openai", "openai.chat", b": ping\n\n"),
    ("openai", "openai.responses", b": ping\n\n"),
    ("gemini", "gemini.generate", b"\r\n"),
])
def test_keepalives_dispatch_no_event_of_their_own_to_the_app(provider, api, keepalive):
    ping = PROVIDERS[provider].stream_keepalive(RequestInfo(api, "m", True, None))
    assert ping == keepalive
    # After a complete event, a keepalive adds no data event (Anthropic's is its own ping).
    events = parse_sse(b'data: {"a":1}\n\n' + ping)
    assert [e.data for e in events if e.event != "ping"] == ['{"a":1}']


@pytest.mark.parametrize("api", list(Api))
@pytest.mark.parametrize("seed", range(3))
def test_framed_parser_reports_where_each_event_ends_however_cut(api, seed):
    events = canned.canned(api, True, "x-reasoner")
    assert isinstance(events, list)
    parser = SSEParser(framed=True)
    framed = []
    for piece in canned.tiny_pieces(b"".join(events), seed=seed):
        framed.extend(parser.feed_framed(piece))
    framed.extend(parser.close_framed())
    ends, total = [], 0
    for event in events:
        total += len(event)
        ends.append(total)
    assert [end for _, end in framed] == ends


def test_framed_parser_ends_of_comments_bom_and_a_final_unterminated_event():
    parser = SSEParser(framed=True)
    body = b"\xef\xbb\xbf: hello\n\ndata: 1\r\n\r\nevent: x\n\ndata: 2"
    framed = parser.feed_framed(body) + parser.close_framed()
    assert [(e.data, end) for e, end in framed] == [("1", body.index(b"\r\n\r\n") + 4),
                                                   ("2", len(body))]
    assert not framed[1][0].terminated

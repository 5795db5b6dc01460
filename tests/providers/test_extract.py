"""Response extraction: thinking, tool calls, text excerpt and model, JSON and streamed."""

from __future__ import annotations

import gzip
import zlib

import pytest
from aip.adapters.anthropic import AnthropicAdapter

from mnemomd.providers import PROVIDERS, Extraction, ToolCall, decode_body
from mnemomd.providers.anthropic import MessagesAccumulator
from mnemomd.providers.base import TEXT_EXCERPT_CHARS, RequestInfo, run_extraction
from mnemomd.providers.gemini import GenerateAccumulator
from mnemomd.providers.openai import ChatAccumulator, ResponsesAccumulator
from tests.fakes import canned
from tests.providers import wire
from tests.providers.wire import JSON, SSE, TEXT, THINKING, TOOL_KEYS, canned_body, extract

READS_THINKING = ["anthropic.messages", "openai.responses", "gemini.generate"]


@pytest.mark.parametrize("api", list(wire.APIS))
@pytest.mark.parametrize("stream", [False, True])
def test_canned_responses(api, stream):
    content_type, body = canned_body(api, stream)
    result = extract(api, content_type, body, stream=stream)
    assert result.text_excerpt == TEXT
    assert result.model == wire.APIS[api][3]
    assert result.complete
    assert not result.redacted_thinking
    if api in READS_THINKING:
        assert (result.thinking, result.thinking_blocks) == (THINKING, 1)
    else:  # canned.py's chat completions carry no reasoning
        assert (result.thinking, result.thinking_blocks) == (None, 0)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_tool_use_keys_only(stream):
    content_type, body = canned_body("anthropic.messages", stream, tool_name="get_weather")
    result = extract("anthropic.messages", content_type, body)
    assert result.tool_calls == [ToolCall("get_weather", TOOL_KEYS)]
    assert "héllo" not in repr(result.tool_calls)  # argument values never leave
    assert result.thinking == THINKING


def test_gemini_json_array_stream_form():
    content_type, body = canned_body("gemini.generate", True, gemini_sse=False)
    assert content_type == JSON and body.startswith(b"[")
    result = extract("gemini.generate", content_type, body, stream=True)
    assert (result.thinking, result.text_excerpt, result.complete) == (THINKING, TEXT, True)


def test_gemini_streamed_thought_pieces_form_one_block():
    # The AIP SDK separates every streamed chunk with "---"; pieces belong to one thought.
    content_type, body = canned_body("gemini.generate", True)
    assert body.count(b"\r\n\r\n") == 8
    assert extract("gemini.generate", content_type, body).thinking_blocks == 1


def test_gemini_model_from_url_when_response_names_none():
    body = canned.encode_json({"candidates": [{"content": {"parts": [{"text": "hi"}]},
                                               "finishReason": "STOP"}]})
    result = extract("gemini.generate", JSON, body)
    assert (result.model, result.text_excerpt, result.complete) == ("gemini-2.5-pro", "hi", True)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_openai_chat_reasoning_and_tool_calls_json(field):
    result = extract("openai.chat", JSON, wire.chat_json(field))
    assert result.thinking == THINKING
    assert result.text_excerpt == TEXT
    assert result.tool_calls == [ToolCall("search", TOOL_KEYS), ToolCall("clock", [])]
    assert result.model == "deepseek-reasoner"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_openai_chat_reasoning_and_tool_calls_streamed(field):
    result = extract("openai.chat", SSE, wire.chat_stream(field))
    assert (result.thinking, result.thinking_blocks, result.text_excerpt) == (THINKING, 1, TEXT)
    assert result.tool_calls == [ToolCall("search", TOOL_KEYS), ToolCall("clock", [])]
    assert result.complete


def test_openai_chat_stream_complete_by_finish_reason_or_done():
    assert extract("openai.chat", SSE, wire.chat_stream(done=False)).complete
    body = wire.chat_stream()
    cut = body[: body.index(b'"finish_reason":"tool_calls"')]
    assert not extract("openai.chat", SSE, cut).complete


def test_responses_function_calls_json():
    result = extract("openai.responses", JSON, wire.responses_json())
    assert result.thinking == THINKING
    assert result.tool_calls == [ToolCall("search", TOOL_KEYS), ToolCall("web_search", [])]


def test_responses_function_calls_streamed_items():
    result = extract("openai.responses", SSE, wire.responses_stream())
    assert (result.thinking, result.text_excerpt, result.complete) == (THINKING, TEXT, True)
    assert result.tool_calls == [ToolCall("search", TOOL_KEYS)]
    assert not extract("openai.responses", SSE, wire.responses_stream(completed=False)).complete


def test_responses_stream_from_deltas_alone():
    """Without ``output_item.done`` / ``response.completed`` the deltas still tell."""
    body = wire.responses_stream(completed=False)
    kept = [e for e in canned.split_sse_events(body) if b"output_item.done" not in e]
    result = extract("openai.responses", SSE, b"".join(kept))
    assert (result.thinking, result.text_excerpt) == (THINKING, TEXT)
    assert result.tool_calls == [ToolCall("search", TOOL_KEYS)]
    assert not result.complete


def test_responses_reasoning_without_summary_is_flagged_unreadable():
    body = canned.encode_json({"object": "response", "model": "o3", "output": [
        {"type": "reasoning", "summary": [], "encrypted_content": "gAAAA"},
        {"type": "reasoning", "summary": [],
         "content": [{"type": "reasoning_text", "text": "raw chain"}]},
    ]})
    result = extract("openai.responses", JSON, body)
    assert (result.thinking, result.redacted_thinking) == ("raw chain", True)


@pytest.mark.parametrize("form", ["json", "sse", "array"])
def test_gemini_function_calls_and_interleaved_thoughts(form):
    chunks = wire.gemini_function_chunks()
    if form == "json":
        parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
        doc = chunks[-1] | {"candidates": [{"content": {"parts": parts}, "finishReason": "STOP"}]}
        content_type, body = JSON, canned.encode_json(doc)
    elif form == "sse":
        content_type, body = "text/event-stream", wire.sse(*chunks, sep=b"\r\n\r\n")
    else:
        content_type = JSON
        body = b"[" + b",\r\n".join(canned.encode_json(c) for c in chunks) + b"]"
    result = extract("gemini.generate", content_type, body, stream=form != "json")
    assert result.thinking == "Plan: look it up.\n\n---\n\nThen answer."
    assert result.thinking_blocks == 2
    assert result.tool_calls == [ToolCall("search", TOOL_KEYS)]
    assert (result.text_excerpt, result.model, result.complete) == (
        TEXT, "gemini-2.5-flash", True)


def test_anthropic_redacted_thinking_and_several_blocks():
    result = extract("anthropic.messages", JSON, wire.anthropic_redacted_json())
    assert result.redacted_thinking
    assert result.thinking == THINKING + "\n\n---\n\nsecond block"
    assert result.thinking_blocks == 2


def test_anthropic_redacted_thinking_streamed():
    events = [
        {"type": "message_start", "message": {"model": "claude-opus-4-1", "content": []}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "redacted_thinking", "data": "EmwKAhgB"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "ok"}},
        {"type": "message_stop"},
    ]
    result = extract("anthropic.messages", SSE, wire.sse(*events, event_names=True))
    assert result == Extraction(None, 0, True, [], "ok", "claude-opus-4-1", True)


def test_matches_the_aip_sdk_where_the_sdk_is_right():
    adapter = AnthropicAdapter()
    for stream in (False, True):
        _, body = canned_body("anthropic.messages", stream, tool_name="t")
        sdk = (adapter.extract_thinking_from_stream if stream else adapter.extract_thinking)(
            body.decode())
        assert sdk is not None
        assert extract("anthropic.messages", "", body).thinking == sdk.content


def test_text_excerpt_is_capped():
    body = canned.encode_json({"model": "m", "content": [{"type": "text", "text": "é" * 5000}]})
    assert extract("anthropic.messages", JSON, body).text_excerpt == "é" * TEXT_EXCERPT_CHARS


def test_unknown_endpoint_and_error_bodies_extract_nothing():
    info = PROVIDERS["openai"].describe_request(b"/v1/models", b"", b"")
    result = PROVIDERS["openai"].extract_response(info, JSON, b'{"data": []}', False)
    assert result == Extraction.empty(complete=True)
    for api, canned_api in [("anthropic.messages", "anthropic.messages"),
                            ("openai.chat", "openai.chat_completions"),
                            ("gemini.generate", "gemini.generate_content")]:
        result = extract(api, JSON, canned.error_body(canned_api, 529))
        assert (result.thinking, result.tool_calls, result.text_excerpt) == (None, [], "")


# --------------------------------------------------------------------------
# Content-Encoding.


@pytest.mark.parametrize("stream", [False, True])
def test_gzip_encoded_bodies(stream):
    content_type, body = canned_body("anthropic.messages", stream, tool_name="t")
    decoded = decode_body(gzip.compress(body), "gzip")
    assert decoded == body
    assert extract("anthropic.messages", content_type, decoded).thinking == THINKING


def test_decode_body_encodings():
    body = b'{"a": "b"}' * 100
    assert decode_body(body, None) == body
    assert decode_body(body, "identity") == body
    assert decode_body(zlib.compress(body), "deflate") == body
    raw = zlib.compressobj(wbits=-15)
    assert decode_body(raw.compress(body) + raw.flush(), "deflate") == body
    assert decode_body(gzip.compress(body) * 2, "x-gzip") == body * 2  # two gzip members
    assert decode_body(gzip.compress(zlib.compress(body)), "deflate, gzip") == body
    assert decode_body(body, "br") is None
    assert decode_body(body, "gzip") is None  # not gzip at all
    assert decode_body(gzip.compress(body), "gzip, zstd") is None


def test_decode_body_truncated_gzip_keeps_the_prefix():
    content_type, body = canned_body("anthropic.messages", True)
    packed = gzip.compress(body)
    partial = decode_body(packed[: len(packed) * 2 // 3], "gzip")
    assert partial is not None and body.startswith(partial) and 0 < len(partial) < len(body)
    result = extract("anthropic.messages", content_type, partial, truncated=True)
    assert not result.complete


def test_decode_body_is_bounded():
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(decode_body(bomb, "gzip", limit=1_000_000) or b"") == 1_000_000


# --------------------------------------------------------------------------
# Truncated captures: every cut point of every canned response.


def _each_cut(api: str, stream: bool, **options: object):
    """Cuts inside every multi-byte character and around every delimiter, plus a sweep."""
    content_type, body = canned_body(api, stream, **options)
    for end in range(len(body)):
        if end % 4 == 0 or body[end] >= 0x80 or body[end - 1:end] in (b'"', b"\\", b"\n"):
            yield content_type, body[:end]


@pytest.mark.parametrize("api", list(wire.APIS))
@pytest.mark.parametrize("stream", [False, True])
def test_every_truncation_point_gives_a_prefix(api, stream):
    options = {"tool_name": "t"} if api == "anthropic.messages" else {}
    for content_type, cut in _each_cut(api, stream, **options):
        result = extract(api, content_type, cut, truncated=True)
        assert not result.complete
        assert THINKING.startswith(result.thinking or "")
        assert TEXT.startswith(result.text_excerpt)
        assert "\ufffd" not in (result.thinking or "") + result.text_excerpt
        for call in result.tool_calls:
            assert call.name == "t" and TOOL_KEYS[: len(call.argument_keys)] == call.argument_keys


def test_truncated_json_gives_partial_thinking_with_split_character():
    content_type, body = canned_body("anthropic.messages", False)
    start = body.index("世界".encode())
    cut = body[: start + 2]  # inside the three bytes of 世
    result = extract("anthropic.messages", content_type, cut, truncated=True)
    assert result.thinking == "The user greets me in several scripts: héllo, "
    assert not result.complete


def test_truncated_stream_keeps_the_partial_final_event():
    content_type, body = canned_body("anthropic.messages", True)
    cut = body[: body.index("世界".encode()) + 4]  # 世 whole, 界 split
    result = extract("anthropic.messages", content_type, cut, truncated=True)
    assert result.thinking == "The user greets me in several scripts: héllo, 世"
    assert not result.complete


def test_complete_body_flagged_truncated_is_not_complete():
    content_type, body = canned_body("openai.responses", True)
    assert not extract("openai.responses", content_type, body, truncated=True).complete


# --------------------------------------------------------------------------
# Garbage and hostile input.

HOSTILE = [
    b"",
    b"\xff\xfe\x00garbage\x80",
    b"[" * 200_000,
    b'{"content":' + b"[" * 200_000,
    b"data: " + b"[" * 200_000 + b"\n\n",
    b"null",
    b"[1, 2, 3]",
    b'"a string"',
    b"data: [DONE]\n\n" * 10,
    bytes(range(256)) * 64,
]


@pytest.mark.parametrize("api", list(wire.APIS))
@pytest.mark.parametrize("content_type", [JSON, SSE, ""])
def test_hostile_bodies_yield_empty_extractions(api, content_type):
    for body in HOSTILE:
        result = extract(api, content_type, body)
        assert (result.thinking, result.thinking_blocks, result.tool_calls,
                result.text_excerpt, result.redacted_thinking) == (None, 0, [], "", False)


@pytest.mark.parametrize("api", ["anthropic.messages", "gemini.generate"])
def test_ten_megabytes_of_data_lines(api):
    result = extract(api, SSE, b"data: x\n" * (10 * 1024 * 1024 // 8), stream=True)
    assert (result.thinking, result.tool_calls, result.text_excerpt) == (None, [], "")
    assert not result.complete


WEIRD = [None, True, -1, 2**80, 1.5, "x", [], {}, [None], [[]], {"type": []}, [{"index": []}]]
ACCUMULATORS = {
    "anthropic.messages": MessagesAccumulator,
    "openai.chat": ChatAccumulator,
    "openai.responses": ResponsesAccumulator,
    "gemini.generate": GenerateAccumulator,
}


def _mutations(doc: object):
    """``doc`` with each node in turn replaced by each weird value."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            for weird in WEIRD:
                yield {**doc, key: weird}
            for mutated in _mutations(value):
                yield {**doc, key: mutated}
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            for mutated in _mutations(value):
                yield [*doc[:index], mutated, *doc[index + 1:]]


def _sample_documents(api: str) -> list[tuple[str, bytes]]:
    """(content type, single JSON document or SSE event) samples of ``api``."""
    samples = []
    for stream in (False, True):
        options = {"tool_name": "t"} if api == "anthropic.messages" else {}
        content_type, body = canned_body(api, stream, **options)
        if content_type == JSON:
            samples.append((JSON, body))
        else:
            samples += [(SSE, event) for event in canned.split_sse_events(body)]
    extra = {"openai.chat": [(JSON, wire.chat_json()), (SSE, wire.chat_stream())],
             "openai.responses": [(JSON, wire.responses_json())],
             "gemini.generate": [(SSE, wire.sse(*wire.gemini_function_chunks()))]}
    for content_type, body in extra.get(api, []):
        if content_type == JSON:
            samples.append((JSON, body))
        else:
            samples += [(SSE, event) for event in canned.split_sse_events(body)]
    return samples


@pytest.mark.parametrize("api", list(ACCUMULATORS))
def test_wrong_types_anywhere_never_raise_unguarded(api):
    """Type confusion is handled by the readers themselves, not by the last-resort guard."""
    import json

    info = RequestInfo(api, "m", False, None)
    for content_type, sample in _sample_documents(api):
        data = sample.split(b"data: ", 1)[-1].strip() if content_type == SSE else sample
        if data == b"[DONE]":
            continue
        for mutated in _mutations(json.loads(data)):
            body = canned.encode_json(mutated)
            if content_type == SSE:
                body = b"data: " + body + b"\n\n"
            result = run_extraction(ACCUMULATORS[api], info, content_type, body, False)
            assert isinstance(result, Extraction)


def test_hostile_tool_arguments_and_counts_are_bounded():
    calls = [{"type": "tool_use", "name": "n" * 10_000, "input": {f"k{i}": i for i in range(100)}}
             for i in range(200)]
    calls.append({"type": "tool_use", "name": "deep", "input": "[" * 100_000})
    body = canned.encode_json({"model": "m", "content": calls})
    result = extract("anthropic.messages", JSON, body)
    assert len(result.tool_calls) == 128
    assert len(result.tool_calls[0].name) == 256
    assert len(result.tool_calls[0].argument_keys) == 64


def test_lone_surrogates_from_json_escapes_are_made_encodable():
    body = b'{"model":"m","content":[{"type":"thinking","thinking":"a\\ud800b"}]}'
    result = extract("anthropic.messages", JSON, body)
    assert result.thinking is not None
    result.thinking.encode("utf-8")


def test_openai_chat_stream_variants():
    """Two choices, a call continued without index or id, and a legacy function_call."""

    def chunk(*choices: dict[str, object]) -> dict[str, object]:
        return {"model": "local-model", "choices": list(choices)}

    def call(**fields: object) -> dict[str, object]:
        return {"tool_calls": [fields]}

    first = call(id="a", function={"name": "first", "arguments": '{"x":'})
    more = call(function={"arguments": "1}"})
    legacy = {"function_call": {"name": "legacy", "arguments": "{}"}}
    body = wire.sse(
        chunk({"index": 0, "delta": first}, {"index": 1, "delta": {"content": "second choice"}}),
        chunk({"index": 0, "delta": more}),
        chunk({"index": 0, "delta": legacy}),
        chunk({"index": 0, "delta": {}, "finish_reason": "tool_calls"},
              {"index": 1, "delta": {}, "finish_reason": "stop"}),
    )
    result = extract("openai.chat", SSE, body)
    assert result.tool_calls == [ToolCall("first", ["x"]), ToolCall("legacy", [])]
    assert (result.text_excerpt, result.model, result.complete) == (
        "second choice", "local-model", True)


def test_openai_chat_custom_and_legacy_calls_json():
    message = {"role": "assistant", "content": None, "refusal": "I can't.",
               "function_call": {"name": "legacy", "arguments": '{"a": 1}'},
               "tool_calls": [{"type": "custom", "custom": {"name": "grammar", "input": "{}"}}]}
    body = canned.encode_json({"model": "gpt-5", "choices": [{"message": message}]})
    result = extract("openai.chat", JSON, body)
    assert result.tool_calls == [ToolCall("grammar", []), ToolCall("legacy", ["a"])]
    assert result.text_excerpt == "I can't."


def test_anthropic_server_tool_use_and_tool_without_streamed_input():
    events = [
        {"type": "message_start", "message": {"model": "claude-sonnet-4-5"}},
        {"type": "content_block_start", "index": 0, "content_block": {
            "type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "input_json_delta", "partial_json": '{"query": "x"}'}},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "t", "name": "noargs", "input": {}}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "message_stop"},
    ]
    result = extract("anthropic.messages", SSE, wire.sse(*events))
    assert result.tool_calls == [ToolCall("web_search", ["query"]), ToolCall("noargs", [])]


def test_anthropic_stream_error_event_is_terminal():
    body = wire.sse({"type": "message_start", "message": {"model": "m"}},
                    {"type": "error", "error": {"type": "overloaded_error", "message": "x"}},
                    event_names=True)
    assert extract("anthropic.messages", SSE, body).complete


def test_sse_body_sent_without_event_stream_content_type():
    _, body = canned_body("anthropic.messages", True)
    assert extract("anthropic.messages", "", body).thinking == THINKING
    assert extract("anthropic.messages", "text/plain", body).thinking == THINKING

"""``output_block``: what a response does, as output analysis sees it, for each API.

The expected blocks are written out by hand: visible text blocks joined with a newline,
then one ``[TOOL CALL] <name> <compact JSON arguments>`` line per call, in response order,
and nothing of the reasoning. A streamed response gives the same block as the same
response in one JSON document.
"""

from __future__ import annotations

import hashlib

import pytest

from mnemomd.providers import PROVIDERS, RequestInfo
from tests.fakes import canned, plain
from tests.providers.wire import (
    JSON,
    SSE,
    TEXT,
    THINKING,
    anthropic_redacted_json,
    canned_body,
    chat_json,
    chat_stream,
    gemini_function_chunks,
    info_for,
    responses_json,
    responses_stream,
    sse,
)

TOOL = '{"query":"héllo 世界 🌍","limit":3}'
PROVIDER_OF = {"anthropic.messages": "anthropic", "openai.chat": "openai",
               "openai.responses": "openai", "gemini.generate": "gemini"}
CANNED_API = {"anthropic.messages": canned.Api.ANTHROPIC_MESSAGES,
              "openai.chat": canned.Api.OPENAI_CHAT,
              "openai.responses": canned.Api.OPENAI_RESPONSES,
              "gemini.generate": canned.Api.GEMINI_GENERATE}


def block(api: str, body: bytes, content_type: str = "", stream: bool = False) -> str:
    return PROVIDERS[PROVIDER_OF[api]].output_block(info_for(api, stream), body, content_type)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_anthropic_text_then_tool_use_without_the_thinking(stream: bool):
    content_type, body = canned_body("anthropic.messages", stream, tool_name="send_to_pastebin")
    got = block("anthropic.messages", body, content_type, stream)
    assert got == f"{TEXT}\n[TOOL CALL] send_to_pastebin {TOOL}"
    assert THINKING not in got


def test_anthropic_text_only_is_the_typescript_sdks_output_text():
    """Text blocks joined with a newline, as ``extractOutputText`` does: same hash."""
    body = canned.encode_json({"type": "message", "content": [
        {"type": "thinking", "thinking": "t", "signature": "s"},
        {"type": "text", "text": "first"}, {"type": "text", "text": "second"}]})
    got = block("anthropic.messages", body, JSON)
    assert got == "first\nsecond"
    assert hashlib.sha256(got.encode()).hexdigest() == hashlib.sha256(b"first\nsecond").hexdigest()


def test_anthropic_redacted_thinking_is_not_output():
    assert block("anthropic.messages", anthropic_redacted_json(), JSON) == TEXT


def test_anthropic_server_and_mcp_tools_are_calls_too():
    body = canned.encode_json({"type": "message", "content": [
        {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {"query": "q"}},
        {"type": "mcp_tool_use", "id": "m1", "name": "push", "server_name": "git",
         "input": {}}]})
    assert block("anthropic.messages", body, JSON) == (
        '[TOOL CALL] web_search {"query":"q"}\n[TOOL CALL] push {}')


@pytest.mark.parametrize("body, content_type", [(chat_json(), JSON), (chat_stream(), SSE)],
                         ids=["json", "sse"])
def test_chat_content_then_each_tool_call(body: bytes, content_type: str):
    got = block("openai.chat", body, content_type)
    assert got == f"{TEXT}\n[TOOL CALL] search {TOOL}\n[TOOL CALL] clock {{}}"
    assert THINKING not in got


def test_chat_refusal_legacy_function_call_and_custom_tool():
    body = canned.encode_json({"choices": [{"index": 0, "message": {
        "role": "assistant", "content": None, "refusal": "I cannot do that.",
        "function_call": {"name": "old_style", "arguments": '{"a": 1}'},
        "tool_calls": [{"id": "c", "type": "custom",
                        "custom": {"name": "shell", "input": "rm -rf /tmp/x"}}]}}]})
    assert block("openai.chat", body, JSON) == (
        "I cannot do that.\n[TOOL CALL] shell rm -rf /tmp/x\n"
        '[TOOL CALL] old_style {"a":1}')


def test_responses_message_then_function_and_provider_tool_calls():
    got = block("openai.responses", responses_json(), JSON)
    assert got == f"{TEXT}\n[TOOL CALL] search {TOOL}\n[TOOL CALL] web_search {{}}"
    assert THINKING not in got


def test_responses_stream_without_a_final_output_list():
    got = block("openai.responses", responses_stream(), SSE)
    assert got == f"{TEXT}\n[TOOL CALL] search {TOOL}"


def test_responses_custom_tool_call_keeps_its_free_form_input():
    body = canned.encode_json({"output": [
        {"type": "custom_tool_call", "name": "apply_patch", "input": "*** Begin Patch"}]})
    assert block("openai.responses", body, JSON) == "[TOOL CALL] apply_patch *** Begin Patch"


def test_gemini_parts_in_response_order_without_thoughts():
    chunks = gemini_function_chunks()  # thought, call, thought, text
    expected = f"[TOOL CALL] search {TOOL}\n{TEXT}"
    streamed = sse(*chunks, sep=b"\r\n\r\n")
    assert block("gemini.generate", streamed, "text/event-stream", stream=True) == expected
    array = b"[" + b",\r\n".join(canned.encode_json(c) for c in chunks) + b"]"
    assert block("gemini.generate", array, "application/json", stream=True) == expected


@pytest.mark.parametrize("api", list(CANNED_API))
@pytest.mark.parametrize("tool", [None, "send_to_pastebin"])
def test_streamed_and_whole_responses_give_the_same_block(api: str, tool: str | None):
    req = canned.CannedRequest(api=CANNED_API[api], model="m")
    whole = block(api, plain.response_body(req, tool), JSON)
    streamed_req = canned.CannedRequest(api=CANNED_API[api], model="m", stream=True)
    streamed = block(api, b"".join(plain.stream_events(streamed_req, tool)), SSE, stream=True)
    expected = TEXT if tool is None else f"{TEXT}\n[TOOL CALL] {tool} {TOOL}"
    assert whole == streamed == expected


def test_the_content_type_may_be_left_out():
    _, body = canned_body("anthropic.messages", True)
    assert block("anthropic.messages", body) == TEXT


def test_unknown_apis_and_unreadable_bodies_give_an_empty_block():
    unknown = RequestInfo(None, None, False, None)
    assert PROVIDERS["anthropic"].output_block(unknown, b'{"content": []}', JSON) == ""
    assert block("openai.chat", b"\xff\xfe not json", JSON) == ""
    assert block("openai.chat", b"", "") == ""

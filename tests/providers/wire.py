"""Wire bodies for cases ``tests/fakes/canned.py`` does not produce, and small helpers.

canned.py covers thinking + text for all four APIs and Anthropic tool use; the OpenAI
reasoning / tool-call shapes, Responses function calls, Gemini ``functionCall`` parts and
Anthropic ``redacted_thinking`` are built here in the same compact raw-UTF-8 encoding.
"""

from __future__ import annotations

from typing import Any

from mnemomd.providers import PROVIDERS, Extraction, RequestInfo
from tests.fakes import canned

THINKING = canned.THINKING_TEXT
TEXT = canned.TEXT
TOOL_KEYS = list(canned.TOOL_INPUT)
SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"

#: (provider, request path, canned api, model) of the four analysed APIs.
APIS = {
    "anthropic.messages": ("anthropic", b"/v1/messages", "anthropic.messages",
                           "claude-sonnet-4-5"),
    "openai.chat": ("openai", b"/v1/chat/completions", "openai.chat_completions", "o4-mini"),
    "openai.responses": ("openai", b"/v1/responses", "openai.responses", "o3"),
    "gemini.generate": ("gemini", b"/v1beta/models/gemini-2.5-pro:generateContent",
                        "gemini.generate_content", "gemini-2.5-pro"),
}


def info_for(api: str, stream: bool = False) -> RequestInfo:
    """What ``describe_request`` says about a typical request to ``api``."""
    provider, path, _, model = APIS[api]
    if api == "gemini.generate" and stream:
        path = path.replace(b":generateContent", b":streamGenerateContent")
    body = canned.encode_json({"model": model, "stream": stream, "messages": []})
    return PROVIDERS[provider].describe_request(path, b"?alt=sse" if stream else b"", body)


def extract(api: str, content_type: str, body: bytes, truncated: bool = False,
            stream: bool = False) -> Extraction:
    provider = APIS[api][0]
    return PROVIDERS[provider].extract_response(info_for(api, stream), content_type, body,
                                                truncated)


def canned_body(api: str, stream: bool, **options: Any) -> tuple[str, bytes]:
    """(content type, exact bytes) canned.py sends for ``api``."""
    _, _, canned_api, model = APIS[api]
    data = canned.canned(canned_api, stream, model, **options)
    if isinstance(data, list):
        return SSE, b"".join(data)
    return JSON, data


def sse(*events: Any, event_names: bool = False, sep: bytes = b"\n\n") -> bytes:
    """Encode JSON events (or raw bytes) as an SSE body."""
    out = []
    for item in events:
        data = item if isinstance(item, bytes) else canned.encode_json(item)
        head = b""
        if event_names and isinstance(item, dict):
            head = b"event: " + str(item.get("type")).encode() + b"\n"
        out.append(head + b"data: " + data + sep)
    return b"".join(out)


# --------------------------------------------------------------------------
# OpenAI Chat Completions with reasoning and tool calls.

TOOL_ARGS = canned.encode_json(canned.TOOL_INPUT).decode()


def chat_json(reasoning_field: str = "reasoning_content") -> bytes:
    message = {
        "role": "assistant",
        "content": TEXT,
        reasoning_field: THINKING,
        "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "search", "arguments": TOOL_ARGS}},
            {"id": "call_2", "type": "function",
             "function": {"name": "clock", "arguments": "{}"}},
        ],
    }
    return canned.encode_json({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "deepseek-reasoner",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
    })


def chat_stream(reasoning_field: str = "reasoning_content", done: bool = True) -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                "model": "deepseek-reasoner",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events: list[Any] = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({reasoning_field: piece}) for piece in canned.THINKING_PIECES]
    events += [chunk({"content": piece}) for piece in canned.TEXT_PIECES]
    events.append(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                         "function": {"name": "search", "arguments": ""}}]}))
    events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
               for piece in canned.TOOL_INPUT_PIECES]
    events.append(chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                         "function": {"name": "clock", "arguments": "{}"}}]}))
    events.append(chunk({}, "tool_calls"))
    if done:
        events.append(b"[DONE]")
    return sse(*events)


# --------------------------------------------------------------------------
# OpenAI Responses with a function call.


def _function_item(arguments: str) -> dict[str, Any]:
    return {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1",
            "name": "search", "arguments": arguments}


def responses_json() -> bytes:
    doc = canned.response_json(canned.CannedRequest(api=canned.Api.OPENAI_RESPONSES,
                                                    model="o3"))
    doc["output"].append(_function_item(TOOL_ARGS))
    doc["output"].append({"id": "ws_1", "type": "web_search_call", "status": "completed"})
    return canned.encode_json(doc)


def responses_stream(completed: bool = True) -> bytes:
    """Canned reasoning + text events, then a streamed function call."""
    events = canned.canned("openai.responses", True, "o3")
    assert isinstance(events, list)
    body = b"".join(events[:-1])  # all but response.completed
    added = {"type": "response.output_item.added", "output_index": 2,
             "item": _function_item("") | {"status": "in_progress"}}
    deltas = [{"type": "response.function_call_arguments.delta", "item_id": "fc_1",
               "output_index": 2, "delta": piece} for piece in canned.TOOL_INPUT_PIECES]
    done = {"type": "response.output_item.done", "output_index": 2,
            "item": _function_item(TOOL_ARGS)}
    body += sse(added, *deltas, done, event_names=True)
    if completed:
        body += sse({"type": "response.completed",
                     "response": {"id": "resp_1", "model": "o3", "status": "completed",
                                  "output": []}}, event_names=True)
    return body


# --------------------------------------------------------------------------
# Gemini with a function call; Anthropic with redacted thinking.


def gemini_function_chunks() -> list[dict[str, Any]]:
    def chunk(parts: list[dict[str, Any]], finish: bool = False) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = "STOP"
        return {"candidates": [candidate], "modelVersion": "gemini-2.5-flash"}

    return [
        chunk([{"text": "Plan: look it up.", "thought": True}]),
        chunk([{"functionCall": {"name": "search", "args": canned.TOOL_INPUT}}]),
        chunk([{"text": "Then answer.", "thought": True}]),
        chunk([{"text": TEXT}], finish=True),
    ]


def anthropic_redacted_json() -> bytes:
    return canned.encode_json({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-7-sonnet",
        "content": [
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT"},
            {"type": "thinking", "thinking": THINKING, "signature": "sig"},
            {"type": "thinking", "thinking": "second block", "signature": "sig"},
            {"type": "text", "text": TEXT},
        ],
        "stop_reason": "end_turn",
    })

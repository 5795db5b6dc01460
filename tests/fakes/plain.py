"""Responses without readable reasoning, as providers send them when it was not asked for.

The canned responses of :mod:`tests.fakes.canned` always reason. A real model reasons only
when the request asks (and the model can), which is what an agent exploits to slip past
``enforce``: ``temperature: 0``, ``thinking: {type: disabled}``, a forced ``tool_choice``
or a model without reasoning all leave the gateway nothing to analyse. The fake upstream's
scenarios here answer like that:

* ``realistic_reasoning`` -- reasoning only when asked: Anthropic ``thinking.type ==
  "enabled"``, Responses ``reasoning``, Gemini ``includeThoughts``, and Chat Completions
  only for ``*-reasoner`` models (``reasoning_content``). Asked, the answer is the canned
  one; not asked, it is the plain answer below.
* ``redacted_reasoning`` -- reasoning nobody can read: an Anthropic ``redacted_thinking``
  block, a Responses reasoning item with only ``encrypted_content``; elsewhere plain.

A plain answer has the canned text and, when the request offers tools, one call of the
first tool with :data:`canned.TOOL_INPUT`, in each API's JSON and SSE form. Pure data and
pure functions, like ``canned``.
"""

from __future__ import annotations

import json
from typing import Any

from tests.fakes import canned
from tests.fakes.canned import (
    ANTHROPIC_MESSAGE_ID,
    ANTHROPIC_TOOL_USE_ID,
    CREATED,
    OPENAI_CHAT_ID,
    OPENAI_FINGERPRINT,
    OPENAI_MESSAGE_ID,
    OPENAI_REASONING_ID,
    OPENAI_RESPONSE_ID,
    TEXT,
    TEXT_PIECES,
    THINKING_PIECES,
    THINKING_TEXT,
    TOOL_INPUT,
    TOOL_INPUT_PIECES,
    Api,
    CannedRequest,
    encode_json,
)

SCENARIOS = ("realistic_reasoning", "redacted_reasoning")
#: What an encrypted / redacted reasoning block carries: opaque to the gateway.
OPAQUE = "RmFrZVVwc3RyZWFtRW5jcnlwdGVkUmVhc29uaW5nMDAx"
CHAT_TOOL_CALL_ID = "call_FakeUpstream0000000001"
RESPONSES_CALL_ID = "fc_fakeupstream0000000000000001"


def _sse(event: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, bytes) else encode_json(data)
    head = f"event: {event}\n".encode() if event is not None else b""
    return head + b"data: " + payload + b"\n\n"


def _payload(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def tool_name(api: Api, payload: dict[str, Any]) -> str | None:
    """The first tool the request offers, in each API's shape."""
    tools = payload.get("tools")
    first = tools[0] if isinstance(tools, list) and tools else None
    if not isinstance(first, dict):
        return None
    if api is Api.OPENAI_CHAT:
        function = first.get("function")
        name = function.get("name") if isinstance(function, dict) else None
    elif api is Api.GEMINI_GENERATE:
        declarations = first.get("functionDeclarations") or first.get("function_declarations")
        declaration = declarations[0] if isinstance(declarations, list) and declarations else {}
        name = declaration.get("name") if isinstance(declaration, dict) else None
    else:
        name = first.get("name")
    return name if isinstance(name, str) and name else None


def reasoning_asked(req: CannedRequest, payload: dict[str, Any]) -> bool:
    """Whether a real provider would expose reasoning for this request."""
    if req.api is Api.ANTHROPIC_MESSAGES:
        thinking = payload.get("thinking")
        return isinstance(thinking, dict) and thinking.get("type") == "enabled"
    if req.api is Api.OPENAI_RESPONSES:
        return isinstance(payload.get("reasoning"), dict)
    if req.api is Api.GEMINI_GENERATE:
        for key in ("generationConfig", "generation_config"):
            config = payload.get(key)
            if not isinstance(config, dict):
                continue
            thinking = config.get("thinkingConfig") or config.get("thinking_config") or {}
            if isinstance(thinking, dict) and (thinking.get("includeThoughts")
                                               or thinking.get("include_thoughts")):
                return True
        return False
    return False  # Chat: reasoning_content is not canned; see chat_reasoning


def chat_reasoning(req: CannedRequest) -> bool:
    """Chat Completions servers that reason unasked (DeepSeek's ``*-reasoner``)."""
    return req.api is Api.OPENAI_CHAT and req.model.endswith("reasoner")


def answer(req: CannedRequest, body: bytes, scenario: str) -> bytes | list[bytes] | None:
    """The body (or SSE events) for ``scenario``; None when the canned answer is right."""
    payload = _payload(body)
    if scenario == "realistic_reasoning" and reasoning_asked(req, payload):
        return None
    tool = tool_name(req.api, payload)
    redacted = scenario == "redacted_reasoning"
    if canned.is_sse(req):
        return stream_events(req, tool, redacted)
    return response_body(req, tool, redacted)


def output_text(tool: str | None) -> str:
    """The output block the gateway builds from a plain answer (text, then the call)."""
    block = TEXT
    if tool is not None:
        arguments = json.dumps(TOOL_INPUT, ensure_ascii=False, separators=(",", ":"))
        block += f"\n[TOOL CALL] {tool} {arguments}"
    return block


# --------------------------------------------------------------------------
# Anthropic Messages.


def _anthropic_usage(output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": canned.INPUT_TOKENS, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0, "output_tokens": output_tokens}


def _anthropic_body(req: CannedRequest, tool: str | None, redacted: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if redacted:
        content.append({"type": "redacted_thinking", "data": OPAQUE})
    content.append({"type": "text", "text": TEXT})
    if tool:
        content.append({"type": "tool_use", "id": ANTHROPIC_TOOL_USE_ID, "name": tool,
                        "input": TOOL_INPUT})
    return {"id": ANTHROPIC_MESSAGE_ID, "type": "message", "role": "assistant",
            "model": req.model, "content": content,
            "stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None,
            "usage": _anthropic_usage(canned.TEXT_TOKENS)}


def _anthropic_events(req: CannedRequest, tool: str | None, redacted: bool) -> list[bytes]:
    message = {**_anthropic_body(req, tool, redacted), "content": [], "stop_reason": None,
               "usage": _anthropic_usage(1)}
    events = [_sse("message_start", {"type": "message_start", "message": message})]
    index = 0

    def block(start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        nonlocal index
        events.append(_sse("content_block_start", {"type": "content_block_start",
                                                   "index": index, "content_block": start}))
        for delta in deltas:
            events.append(_sse("content_block_delta", {"type": "content_block_delta",
                                                       "index": index, "delta": delta}))
        events.append(_sse("content_block_stop", {"type": "content_block_stop",
                                                  "index": index}))
        index += 1

    if redacted:
        block({"type": "redacted_thinking", "data": OPAQUE}, [])
    block({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in TEXT_PIECES])
    if tool:
        block({"type": "tool_use", "id": ANTHROPIC_TOOL_USE_ID, "name": tool, "input": {}},
              [{"type": "input_json_delta", "partial_json": p} for p in TOOL_INPUT_PIECES])
    events.append(_sse("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": canned.TEXT_TOKENS}}))
    events.append(_sse("message_stop", {"type": "message_stop"}))
    return events


# --------------------------------------------------------------------------
# OpenAI Chat Completions.


def _chat_call(tool: str, arguments: str, index: int | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"id": CHAT_TOOL_CALL_ID, "type": "function",
                            "function": {"name": tool, "arguments": arguments}}
    return call if index is None else {"index": index, **call}


def _chat_body(req: CannedRequest, tool: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": TEXT, "refusal": None,
                               "annotations": []}
    if chat_reasoning(req):
        message["reasoning_content"] = THINKING_TEXT
    if tool:
        message["tool_calls"] = [_chat_call(tool, json.dumps(TOOL_INPUT, ensure_ascii=False))]
    return {"id": OPENAI_CHAT_ID, "object": "chat.completion", "created": CREATED,
            "model": req.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if tool else "stop"}],
            "system_fingerprint": OPENAI_FINGERPRINT}


def _chat_events(req: CannedRequest, tool: str | None) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(None, {"id": OPENAI_CHAT_ID, "object": "chat.completion.chunk",
                           "created": CREATED, "model": req.model,
                           "system_fingerprint": OPENAI_FINGERPRINT,
                           "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                        "finish_reason": finish}]})

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if chat_reasoning(req):
        events += [chunk({"reasoning_content": piece}) for piece in THINKING_PIECES]
    events += [chunk({"content": piece}) for piece in TEXT_PIECES]
    if tool:
        events.append(chunk({"tool_calls": [_chat_call(tool, "", 0)]}))
        events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                   for piece in TOOL_INPUT_PIECES]
    events.append(chunk({}, "tool_calls" if tool else "stop"))
    events.append(_sse(None, b"[DONE]"))
    return events


# --------------------------------------------------------------------------
# OpenAI Responses.


def _responses_items(tool: str | None, redacted: bool) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if redacted:
        items.append({"id": OPENAI_REASONING_ID, "type": "reasoning", "summary": [],
                      "encrypted_content": OPAQUE})
    items.append({"id": OPENAI_MESSAGE_ID, "type": "message", "status": "completed",
                  "role": "assistant",
                  "content": [{"type": "output_text", "annotations": [], "text": TEXT}]})
    if tool:
        items.append({"id": RESPONSES_CALL_ID, "type": "function_call", "status": "completed",
                      "call_id": CHAT_TOOL_CALL_ID, "name": tool,
                      "arguments": json.dumps(TOOL_INPUT, ensure_ascii=False)})
    return items


def _response(req: CannedRequest, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": OPENAI_RESPONSE_ID, "object": "response", "created_at": CREATED,
            "status": status, "error": None, "incomplete_details": None, "model": req.model,
            "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}


def _responses_events(req: CannedRequest, tool: str | None, redacted: bool) -> list[bytes]:
    payloads: list[dict[str, Any]] = []

    def add(kind: str, **fields: Any) -> None:
        payloads.append({"type": kind, "sequence_number": len(payloads), **fields})

    add("response.created", response=_response(req, "in_progress", []))
    add("response.in_progress", response=_response(req, "in_progress", []))
    items = _responses_items(tool, redacted)
    for index, item in enumerate(items):
        if item["type"] == "message":
            add("response.output_item.added", output_index=index,
                item={**item, "status": "in_progress", "content": []})
            ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
            part = {"type": "output_text", "annotations": [], "text": ""}
            add("response.content_part.added", **ids, part=part)
            for piece in TEXT_PIECES:
                add("response.output_text.delta", **ids, delta=piece)
            add("response.output_text.done", **ids, text=TEXT)
            add("response.content_part.done", **ids, part={**part, "text": TEXT})
        elif item["type"] == "function_call":
            add("response.output_item.added", output_index=index,
                item={**item, "status": "in_progress", "arguments": ""})
            for piece in TOOL_INPUT_PIECES:
                add("response.function_call_arguments.delta", item_id=item["id"],
                    output_index=index, delta=piece)
            add("response.function_call_arguments.done", item_id=item["id"],
                output_index=index, arguments=item["arguments"])
        else:
            add("response.output_item.added", output_index=index, item=item)
        add("response.output_item.done", output_index=index, item=item)
    add("response.completed", response=_response(req, "completed", items))
    return [_sse(p["type"], p) for p in payloads]


# --------------------------------------------------------------------------
# Gemini.


def _gemini_chunk(req: CannedRequest, parts: list[dict[str, Any]],
                  finish: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "modelVersion": req.model,
            "responseId": canned.GEMINI_RESPONSE_ID}


def _gemini_parts(tool: str | None) -> list[list[dict[str, Any]]]:
    parts: list[list[dict[str, Any]]] = [[{"text": piece}] for piece in TEXT_PIECES]
    if tool:
        parts.append([{"functionCall": {"name": tool, "args": TOOL_INPUT}}])
    return parts


# --------------------------------------------------------------------------
# By API.


def response_body(req: CannedRequest, tool: str | None, redacted: bool = False) -> bytes:
    """The JSON body of a plain answer (a JSON array for a Gemini stream without SSE)."""
    if req.api is Api.ANTHROPIC_MESSAGES:
        return encode_json(_anthropic_body(req, tool, redacted))
    if req.api is Api.OPENAI_CHAT:
        return encode_json(_chat_body(req, tool))
    if req.api is Api.OPENAI_RESPONSES:
        return encode_json(_response(req, "completed", _responses_items(tool, redacted)))
    chunks = _gemini_parts(tool)
    if req.stream:
        return b"[" + b",\r\n".join(
            encode_json(_gemini_chunk(req, p, i == len(chunks) - 1))
            for i, p in enumerate(chunks)) + b"]"
    return encode_json(_gemini_chunk(req, [{"text": TEXT}, *(p[0] for p in chunks[
        len(TEXT_PIECES):])], True))


def stream_events(req: CannedRequest, tool: str | None, redacted: bool = False) -> list[bytes]:
    """The SSE events of a plain answer, each with its terminator."""
    if req.api is Api.ANTHROPIC_MESSAGES:
        return _anthropic_events(req, tool, redacted)
    if req.api is Api.OPENAI_CHAT:
        return _chat_events(req, tool)
    if req.api is Api.OPENAI_RESPONSES:
        return _responses_events(req, tool, redacted)
    chunks = _gemini_parts(tool)
    return [b"data: " + encode_json(_gemini_chunk(req, p, i == len(chunks) - 1)) + b"\r\n\r\n"
            for i, p in enumerate(chunks)]

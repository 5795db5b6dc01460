"""Deterministic canned responses in each provider's wire format.

Pure data and pure functions (no Twisted), so a test can compute exactly which
bytes the fake upstream sent and compare them with what a client received
through the proxy.  Every JSON document is encoded compactly with raw UTF-8
(``ensure_ascii=False``) so multi-byte characters really travel as multi-byte
sequences on the wire.
"""

from __future__ import annotations

import bisect
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs, unquote

__all__ = [
    "SIGNATURE",
    "TEXT",
    "THINKING_TEXT",
    "TOOL_INPUT",
    "Api",
    "CannedRequest",
    "InvalidRequest",
    "canned",
    "canned_for",
    "content_type",
    "encode_json",
    "error_body",
    "error_json",
    "flood_after_thinking_events",
    "flood_events",
    "is_sse",
    "match_route",
    "parse_request",
    "response_body",
    "response_json",
    "split_sse_events",
    "sse_separator",
    "stream_events",
    "tiny_pieces",
]


class Api(StrEnum):
    """The provider APIs the fake upstream speaks."""

    ANTHROPIC_MESSAGES = "anthropic.messages"
    OPENAI_CHAT = "openai.chat_completions"
    OPENAI_RESPONSES = "openai.responses"
    GEMINI_GENERATE = "gemini.generate_content"


class InvalidRequest(ValueError):
    """The request body cannot be understood (not a JSON object)."""


# --------------------------------------------------------------------------
# Canned content.  Pieces are what streaming deltas carry; joined they give
# the full strings the non-streaming responses contain.

THINKING_PIECES: tuple[str, ...] = (
    "The user greets me in several scripts",
    ": héllo, 世界",
    " and 🌍 — I should answer in kind…",
)
TEXT_PIECES: tuple[str, ...] = (
    "héllo ",
    "世界 ",
    "🌍🚀",
    " — canned réponse: ",
    "naïve café, 日本語, Ωμέγα ✓",
)
THINKING_TEXT: str = "".join(THINKING_PIECES)
TEXT: str = "".join(TEXT_PIECES)
SIGNATURE: str = "RmFrZVVwc3RyZWFtVGhpbmtpbmdTaWduYXR1cmUwMDE="
TOOL_INPUT: dict[str, Any] = {"query": "héllo 世界 🌍", "limit": 3}
TOOL_INPUT_PIECES: tuple[str, ...] = ('{"query": "hé', 'llo 世界 🌍", "li', 'mit": 3}')

CREATED: int = 1_700_000_000
ANTHROPIC_MESSAGE_ID = "msg_01FakeUpstream00000000001"
ANTHROPIC_TOOL_USE_ID = "toolu_01FakeUpstream000000001"
OPENAI_CHAT_ID = "chatcmpl-FakeUpstream0000000001"
OPENAI_FINGERPRINT = "fp_fake0001"
OPENAI_RESPONSE_ID = "resp_fakeupstream0000000000000001"
OPENAI_REASONING_ID = "rs_fakeupstream0000000000000001"
OPENAI_MESSAGE_ID = "msg_fakeupstream0000000000000001"
OPENAI_CALL_ITEM_ID = "fc_fakeupstream0000000000000001"
OPENAI_CALL_ID = "call_FakeUpstream0000000001"
GEMINI_RESPONSE_ID = "FakeUpstreamGeminiResponse01"

INPUT_TOKENS = 21
THINKING_TOKENS = 17
TEXT_TOKENS = 19
TOOL_TOKENS = 11
DEFAULT_MODEL = "fake-model"


def encode_json(obj: Any) -> bytes:
    """Compact JSON with raw UTF-8, the way the providers send it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------
# Request parsing.


@dataclass(frozen=True)
class CannedRequest:
    """What the canned response depends on, distilled from one request.

    ``stream`` is the provider's own notion of streaming (``"stream": true`` or
    ``:streamGenerateContent``); ``gemini_sse`` tells whether a Gemini stream
    uses SSE (``alt=sse``) or a streamed JSON array.
    """

    api: Api
    model: str = DEFAULT_MODEL
    stream: bool = False
    tool_name: str | None = None
    include_usage: bool = False
    gemini_sse: bool = True


_OPENAI_ROUTES: dict[str, Api] = {
    "/v1/messages": Api.ANTHROPIC_MESSAGES,
    "/v1/chat/completions": Api.OPENAI_CHAT,
    "/v1/responses": Api.OPENAI_RESPONSES,
}
_GEMINI_PREFIXES: tuple[str, ...] = ("/v1beta/", "/v1/", "/v1alpha/")


def match_route(path: str) -> tuple[Api, str | None, bool] | None:
    """Map a raw request path to ``(api, model_from_path, gemini_stream)``.

    Returns ``None`` for paths that are not provider routes.
    """
    path = unquote(path)
    if len(path) > 1:
        path = path.rstrip("/")
    api = _OPENAI_ROUTES.get(path)
    if api is not None:
        return api, None, False
    for prefix in _GEMINI_PREFIXES:
        if not path.startswith(prefix + "models/"):
            continue
        rest = path[len(prefix) + len("models/") :]
        model, sep, method = rest.rpartition(":")
        if not sep or not model or "/" in model:
            return None
        if method == "generateContent":
            return Api.GEMINI_GENERATE, model, False
        if method == "streamGenerateContent":
            return Api.GEMINI_GENERATE, model, True
        return None
    return None


def parse_request(path: str, query: str, body: bytes) -> CannedRequest | None:
    """Distil a provider request into a :class:`CannedRequest`.

    Returns ``None`` when ``path`` is not a provider route and raises
    :class:`InvalidRequest` when the body is not a JSON object.
    """
    route = match_route(path)
    if route is None:
        return None
    api, path_model, gemini_stream = route
    try:
        payload = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    tool_name = _first_tool_name(api, payload.get("tools"))
    if api is Api.GEMINI_GENERATE:
        alt = parse_qs(query).get("alt", [""])[-1]
        return CannedRequest(
            api=api,
            model=path_model or DEFAULT_MODEL,
            stream=gemini_stream,
            tool_name=tool_name,
            gemini_sse=alt == "sse",
        )
    model = payload.get("model")
    options = payload.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return CannedRequest(
        api=api,
        model=model if isinstance(model, str) and model else DEFAULT_MODEL,
        stream=payload.get("stream") is True,
        tool_name=tool_name,
        include_usage=include_usage,
    )


def _first_tool_name(api: Api, tools: Any) -> str | None:
    """The name of the first tool the request offers, in each API's own shape: the canned
    answer calls it (after its text), as a model asked to use a tool would."""
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    first = tools[0]
    if api is Api.OPENAI_CHAT:
        first = first.get("function")
    elif api is Api.GEMINI_GENERATE:
        declarations = first.get("functionDeclarations", first.get("function_declarations"))
        first = declarations[0] if isinstance(declarations, list) and declarations else None
    name = first.get("name") if isinstance(first, dict) else None
    return name if isinstance(name, str) and name else None


def chat_reasons(req: CannedRequest) -> bool:
    """Chat Completions reasons visibly (``reasoning_content``, as DeepSeek and vLLM send
    it) for a model named ``…reasoner``; other chat models show no reasoning."""
    return req.model.endswith("reasoner")


def is_sse(req: CannedRequest) -> bool:
    """Whether the response to ``req`` is an SSE stream."""
    if req.api is Api.GEMINI_GENERATE:
        return req.stream and req.gemini_sse
    return req.stream


def content_type(req: CannedRequest) -> str:
    """The ``content-type`` the provider sends for this response."""
    if not is_sse(req):
        return (
            "application/json; charset=utf-8"
            if req.api is Api.GEMINI_GENERATE
            else "application/json"
        )
    if req.api is Api.GEMINI_GENERATE:
        return "text/event-stream"
    return "text/event-stream; charset=utf-8"


def sse_separator(api: Api) -> bytes:
    """The blank-line terminator each SSE event of ``api`` ends with."""
    return b"\r\n\r\n" if api is Api.GEMINI_GENERATE else b"\n\n"


def _sse(event: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, bytes) else encode_json(data)
    head = f"event: {event}\n".encode() if event is not None else b""
    return head + b"data: " + payload + b"\n\n"


_SSE_TERMINATOR = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def split_sse_events(data: bytes) -> list[bytes]:
    """Split a raw SSE body into events, each keeping its terminator.

    Any trailing bytes that are not a complete event come last, unterminated.
    """
    events: list[bytes] = []
    start = 0
    for match in _SSE_TERMINATOR.finditer(data):
        events.append(data[start : match.end()])
        start = match.end()
    if start < len(data):
        events.append(data[start:])
    return events


# --------------------------------------------------------------------------
# Anthropic Messages.


def _anthropic_usage(output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": INPUT_TOKENS,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }


def _anthropic_output_tokens(req: CannedRequest) -> int:
    return THINKING_TOKENS + TEXT_TOKENS + (TOOL_TOKENS if req.tool_name else 0)


def _anthropic_message(req: CannedRequest) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "thinking", "thinking": THINKING_TEXT, "signature": SIGNATURE},
        {"type": "text", "text": TEXT},
    ]
    if req.tool_name:
        content.append(
            {
                "type": "tool_use",
                "id": ANTHROPIC_TOOL_USE_ID,
                "name": req.tool_name,
                "input": TOOL_INPUT,
            }
        )
    return {
        "id": ANTHROPIC_MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": "tool_use" if req.tool_name else "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(_anthropic_output_tokens(req)),
    }


def _anthropic_start_message(model: str) -> dict[str, Any]:
    """The message of a stream's ``message_start`` event: empty content so far."""
    return {
        "id": ANTHROPIC_MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(1),
    }


def _anthropic_events(req: CannedRequest) -> list[bytes]:
    start_message = _anthropic_start_message(req.model)
    events = [
        _sse("message_start", {"type": "message_start", "message": start_message}),
        _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
        ),
        _sse("ping", {"type": "ping"}),
    ]
    for piece in THINKING_PIECES:
        events.append(
            _sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": piece},
                },
            )
        )
    events.append(
        _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": SIGNATURE},
            },
        )
    )
    events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(
        _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "text", "text": ""},
            },
        )
    )
    for piece in TEXT_PIECES:
        events.append(
            _sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
        )
    events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 1}))
    if req.tool_name:
        block = {
            "type": "tool_use",
            "id": ANTHROPIC_TOOL_USE_ID,
            "name": req.tool_name,
            "input": {},
        }
        events.append(
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": 2, "content_block": block},
            )
        )
        for piece in TOOL_INPUT_PIECES:
            events.append(
                _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 2,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
            )
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 2}))
    events.append(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": "tool_use" if req.tool_name else "end_turn",
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": _anthropic_output_tokens(req)},
            },
        )
    )
    events.append(_sse("message_stop", {"type": "message_stop"}))
    return events


# --------------------------------------------------------------------------
# OpenAI Chat Completions.


def _openai_chat_usage() -> dict[str, Any]:
    completion = THINKING_TOKENS + TEXT_TOKENS
    return {
        "prompt_tokens": INPUT_TOKENS,
        "completion_tokens": completion,
        "total_tokens": INPUT_TOKENS + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": THINKING_TOKENS,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_tool_call(req: CannedRequest) -> dict[str, Any]:
    return {
        "id": OPENAI_CALL_ID,
        "type": "function",
        "function": {"name": req.tool_name, "arguments": "".join(TOOL_INPUT_PIECES)},
    }


def _openai_chat_completion(req: CannedRequest) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": TEXT,
        "refusal": None,
        "annotations": [],
    }
    if chat_reasons(req):
        message["reasoning_content"] = THINKING_TEXT
    if req.tool_name:
        message["tool_calls"] = [_chat_tool_call(req)]
    return {
        "id": OPENAI_CHAT_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": req.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if req.tool_name else "stop",
            }
        ],
        "usage": _openai_chat_usage(),
        "service_tier": "default",
        "system_fingerprint": OPENAI_FINGERPRINT,
    }


def _openai_chat_events(req: CannedRequest) -> list[bytes]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj: dict[str, Any] = {
            "id": OPENAI_CHAT_ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": req.model,
            "service_tier": "default",
            "system_fingerprint": OPENAI_FINGERPRINT,
            "choices": choices,
        }
        if req.include_usage:
            obj["usage"] = None
        obj.update(extra)
        return _sse(None, obj)

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    reasons = chat_reasons(req)
    role: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
    if reasons:
        role = {"role": "assistant", "content": None, "reasoning_content": ""}
    events = [chunk(choice(role))]
    if reasons:
        events.extend(
            chunk(choice({"content": None, "reasoning_content": piece}))
            for piece in THINKING_PIECES
        )
    for piece in TEXT_PIECES:
        delta: dict[str, Any] = {"content": piece}
        if reasons:
            delta["reasoning_content"] = None
        events.append(chunk(choice(delta)))
    if req.tool_name:
        call = _chat_tool_call(req)
        first = {**call, "index": 0, "function": {"name": req.tool_name, "arguments": ""}}
        events.append(chunk(choice({"tool_calls": [first]})))
        events.extend(
            chunk(choice({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
            for piece in TOOL_INPUT_PIECES
        )
    events.append(chunk(choice({}, "tool_calls" if req.tool_name else "stop")))
    if req.include_usage:
        events.append(chunk([], usage=_openai_chat_usage()))
    events.append(_sse(None, b"[DONE]"))
    return events


# --------------------------------------------------------------------------
# OpenAI Responses.


def _reasoning_item(summary: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": OPENAI_REASONING_ID, "type": "reasoning", "summary": summary}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _message_item(status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": OPENAI_MESSAGE_ID,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _responses_usage() -> dict[str, Any]:
    output = THINKING_TOKENS + TEXT_TOKENS
    return {
        "input_tokens": INPUT_TOKENS,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": THINKING_TOKENS},
        "total_tokens": INPUT_TOKENS + output,
    }


def _response_object(
    req: CannedRequest, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": OPENAI_RESPONSE_ID,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": req.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _function_call_item(req: CannedRequest, status: str, arguments: str) -> dict[str, Any]:
    return {
        "id": OPENAI_CALL_ITEM_ID,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": OPENAI_CALL_ID,
        "name": req.tool_name,
    }


def _openai_response(req: CannedRequest) -> dict[str, Any]:
    output = [
        _reasoning_item([{"type": "summary_text", "text": THINKING_TEXT}]),
        _message_item("completed", [_output_text(TEXT)]),
    ]
    if req.tool_name:
        output.append(_function_call_item(req, "completed", "".join(TOOL_INPUT_PIECES)))
    return _response_object(req, "completed", output, _responses_usage())


def _openai_responses_events(req: CannedRequest) -> list[bytes]:
    payloads: list[dict[str, Any]] = []

    def add(kind: str, **fields: Any) -> None:
        payloads.append({"type": kind, "sequence_number": len(payloads), **fields})

    reasoning_ids = {"item_id": OPENAI_REASONING_ID, "output_index": 0, "summary_index": 0}
    message_ids = {"item_id": OPENAI_MESSAGE_ID, "output_index": 1, "content_index": 0}
    summary_done = {"type": "summary_text", "text": THINKING_TEXT}

    add("response.created", response=_response_object(req, "in_progress", [], None))
    add("response.in_progress", response=_response_object(req, "in_progress", [], None))
    add("response.output_item.added", output_index=0, item=_reasoning_item([]))
    add(
        "response.reasoning_summary_part.added",
        **reasoning_ids,
        part={"type": "summary_text", "text": ""},
    )
    for piece in THINKING_PIECES:
        add("response.reasoning_summary_text.delta", **reasoning_ids, delta=piece)
    add("response.reasoning_summary_text.done", **reasoning_ids, text=THINKING_TEXT)
    add("response.reasoning_summary_part.done", **reasoning_ids, part=summary_done)
    add("response.output_item.done", output_index=0, item=_reasoning_item([summary_done]))
    add("response.output_item.added", output_index=1, item=_message_item("in_progress", []))
    add("response.content_part.added", **message_ids, part=_output_text(""))
    for piece in TEXT_PIECES:
        add("response.output_text.delta", **message_ids, delta=piece, logprobs=[])
    add("response.output_text.done", **message_ids, text=TEXT, logprobs=[])
    add("response.content_part.done", **message_ids, part=_output_text(TEXT))
    add(
        "response.output_item.done",
        output_index=1,
        item=_message_item("completed", [_output_text(TEXT)]),
    )
    if req.tool_name:
        call_ids = {"item_id": OPENAI_CALL_ITEM_ID, "output_index": 2}
        arguments = "".join(TOOL_INPUT_PIECES)
        add("response.output_item.added", output_index=2,
            item=_function_call_item(req, "in_progress", ""))
        for piece in TOOL_INPUT_PIECES:
            add("response.function_call_arguments.delta", **call_ids, delta=piece)
        add("response.function_call_arguments.done", **call_ids, arguments=arguments)
        add("response.output_item.done", output_index=2,
            item=_function_call_item(req, "completed", arguments))
    add("response.completed", response=_openai_response(req))
    return [_sse(p["type"], p) for p in payloads]


# --------------------------------------------------------------------------
# Gemini generateContent / streamGenerateContent.


def _gemini_usage(thoughts: int, candidates: int) -> dict[str, Any]:
    return {
        "promptTokenCount": INPUT_TOKENS,
        "candidatesTokenCount": candidates,
        "totalTokenCount": INPUT_TOKENS + thoughts + candidates,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": INPUT_TOKENS}],
        "thoughtsTokenCount": thoughts,
    }


def _gemini_response(
    req: CannedRequest, parts: list[dict[str, Any]], finish: bool, usage: dict[str, Any]
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": req.model,
        "responseId": GEMINI_RESPONSE_ID,
    }


def _gemini_call(req: CannedRequest) -> dict[str, Any]:
    return {"functionCall": {"name": req.tool_name, "args": TOOL_INPUT}}


def _gemini_generate(req: CannedRequest) -> dict[str, Any]:
    parts = [
        {"text": THINKING_TEXT, "thought": True},
        {"text": TEXT, "thoughtSignature": SIGNATURE},
    ]
    if req.tool_name:
        parts.append(_gemini_call(req))
    return _gemini_response(req, parts, True, _gemini_usage(THINKING_TOKENS, TEXT_TOKENS))


def _gemini_chunks(req: CannedRequest) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = []
    for piece in THINKING_PIECES:
        chunks.append(
            _gemini_response(
                req, [{"text": piece, "thought": True}], False, _gemini_usage(THINKING_TOKENS, 0)
            )
        )
    for index, piece in enumerate(TEXT_PIECES):
        part: dict[str, Any] = {"text": piece}
        if index == 0:
            part["thoughtSignature"] = SIGNATURE
        last = index == len(TEXT_PIECES) - 1 and not req.tool_name
        tokens = TEXT_TOKENS if last else index + 1
        chunks.append(_gemini_response(req, [part], last, _gemini_usage(THINKING_TOKENS, tokens)))
    if req.tool_name:
        usage = _gemini_usage(THINKING_TOKENS, TEXT_TOKENS)
        chunks.append(_gemini_response(req, [_gemini_call(req)], True, usage))
    return chunks


# --------------------------------------------------------------------------
# Public accessors.


def response_json(req: CannedRequest) -> Any:
    """The response document as a Python object (a list for a Gemini JSON-array stream)."""
    if req.api is Api.ANTHROPIC_MESSAGES:
        return _anthropic_message(req)
    if req.api is Api.OPENAI_CHAT:
        return _openai_chat_completion(req)
    if req.api is Api.OPENAI_RESPONSES:
        return _openai_response(req)
    if req.stream:
        return _gemini_chunks(req)
    return _gemini_generate(req)


def response_body(req: CannedRequest) -> bytes:
    """Exact body bytes of the non-SSE (JSON) response to ``req``."""
    if req.api is Api.GEMINI_GENERATE and req.stream:
        # Without alt=sse Gemini streams one JSON array, element by element.
        return b"[" + b",\r\n".join(encode_json(c) for c in _gemini_chunks(req)) + b"]"
    return encode_json(response_json(req))


def stream_events(req: CannedRequest) -> list[bytes]:
    """Exact SSE events (each with its terminator) streamed for ``req``.

    Works whatever ``req.stream`` says: scenarios that always stream use it too.
    """
    if req.api is Api.ANTHROPIC_MESSAGES:
        return _anthropic_events(req)
    if req.api is Api.OPENAI_CHAT:
        return _openai_chat_events(req)
    if req.api is Api.OPENAI_RESPONSES:
        return _openai_responses_events(req)
    return [b"data: " + encode_json(chunk) + b"\r\n\r\n" for chunk in _gemini_chunks(req)]


def canned_for(req: CannedRequest) -> bytes | list[bytes]:
    """Body bytes for a JSON response, or the SSE event list for a stream."""
    return stream_events(req) if is_sse(req) else response_body(req)


def canned(api: Api | str, stream: bool, model: str, **options: Any) -> bytes | list[bytes]:
    """Shorthand for :func:`canned_for` from ``(api, streaming?, model)``.

    ``options`` are the other :class:`CannedRequest` fields (``tool_name``,
    ``include_usage``, ``gemini_sse``).
    """
    return canned_for(CannedRequest(api=Api(api), model=model, stream=stream, **options))


# --------------------------------------------------------------------------
# Errors.

_ANTHROPIC_ERRORS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}
_GEMINI_STATUSES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_json(api: Api | str, status: int, message: str | None = None) -> dict[str, Any]:
    """A provider-shaped error document for HTTP ``status``."""
    api = Api(api)
    if api is Api.ANTHROPIC_MESSAGES:
        kind = _ANTHROPIC_ERRORS.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        text = message or f"fake upstream error {status} ({kind})"
        return {"type": "error", "error": {"type": kind, "message": text}}
    if api is Api.GEMINI_GENERATE:
        state = _GEMINI_STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        text = message or f"fake upstream error {status} ({state})"
        return {"error": {"code": status, "message": text, "status": state}}
    kind, code = _OPENAI_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    text = message or f"fake upstream error {status} ({code or kind})"
    return {"error": {"message": text, "type": kind, "param": None, "code": code}}


def error_body(api: Api | str, status: int, message: str | None = None) -> bytes:
    """Encoded :func:`error_json`."""
    return encode_json(error_json(api, status, message))


# --------------------------------------------------------------------------
# Flood stream and byte splitting.

_FLOOD_PHRASE = "flood 世界 🌊 données — "
_FLOOD_TEXT = _FLOOD_PHRASE * 33  # 1023 bytes of UTF-8
_FLOOD_OUTPUT_TOKENS = 4096


def _flood_delta(text: str) -> bytes:
    return _sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


def flood_events(model: str, total_bytes: int) -> Iterator[bytes]:
    """Lazily yield an Anthropic stream of exactly ``total_bytes`` bytes.

    Deltas carry about 1 KB of text each; the last one is padded with ASCII so
    the total is exact.  When ``total_bytes`` is too small for even a minimal
    stream, the minimal stream (slightly larger) is produced.
    """
    req = CannedRequest(api=Api.ANTHROPIC_MESSAGES, model=model, stream=True)
    start_message = _anthropic_start_message(req.model)
    head = [
        _sse("message_start", {"type": "message_start", "message": start_message}),
        _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    tail = [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                "usage": {"output_tokens": _FLOOD_OUTPUT_TOKENS},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    overhead = len(_flood_delta(""))
    full = _flood_delta(_FLOOD_TEXT)
    budget = total_bytes - sum(map(len, head)) - sum(map(len, tail))
    yield from head
    if budget <= overhead:
        yield _flood_delta("x")
        yield from tail
        return
    n_full, rest = divmod(budget, len(full))
    if 0 < rest <= overhead:
        # Too little left for a delta of its own: split the last full delta in two.
        # (n_full >= 1 here: a lone remainder above is always > overhead.)
        n_full -= 1
        text_bytes = len(full) + rest - 2 * overhead
        first = text_bytes // 2
        tail_deltas = [_flood_delta("x" * first), _flood_delta("y" * (text_bytes - first))]
    elif rest:
        tail_deltas = [_flood_delta("z" * (rest - overhead))]
    else:
        tail_deltas = []
    for _ in range(n_full):
        yield full
    yield from tail_deltas
    yield from tail


#: Thinking of the flood-after-thinking stream: enough tokens for any minimum evidence.
FLOOD_THINKING_TEXT = "I will answer at length, with every detail I can think of. " * 8


def flood_after_thinking_events(model: str, total_bytes: int) -> Iterator[bytes]:
    """:func:`flood_events` with a thinking block (about 120 tokens) before the text, so
    an enforce-mode gateway holds the flood at its first text event."""
    events = flood_events(model, total_bytes)
    yield next(events)  # message_start
    thinking_block = {"type": "thinking", "thinking": "", "signature": ""}
    yield _sse(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": thinking_block},
    )
    yield _sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": FLOOD_THINKING_TEXT},
        },
    )
    yield _sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": SIGNATURE},
        },
    )
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    for event in events:
        yield event.replace(b'"index":0', b'"index":1', 1)


def tiny_pieces(data: bytes, *, seed: int = 0, max_size: int = 7) -> list[bytes]:
    """Cut ``data`` into pieces of 1..``max_size`` bytes.

    Deterministic for a given ``seed``.  Besides the random cuts, every
    multi-byte UTF-8 character is cut right after its lead byte and every
    ``\\n\\n`` / ``\\r\\n`` pair is cut in the middle, so a consumer that
    decodes or frames per read is sure to trip.
    """
    if max_size < 1:
        raise ValueError("max_size must be >= 1")
    forced: set[int] = set()
    for index, byte in enumerate(data):
        if byte >= 0xC0:
            forced.add(index + 1)
    for pair in (b"\n\n", b"\r\n"):
        pos = data.find(pair)
        while pos >= 0:
            forced.add(pos + 1)
            pos = data.find(pair, pos + 1)
    cuts: list[int] = sorted(p for p in forced if 0 < p < len(data))
    rng = random.Random(seed)
    pieces: list[bytes] = []
    start = 0
    while start < len(data):
        end = min(start + rng.randint(1, max_size), len(data))
        nxt = bisect.bisect_right(cuts, start)
        if nxt < len(cuts) and cuts[nxt] < end:
            end = cuts[nxt]
        pieces.append(data[start:end])
        start = end
    return pieces

"""Anthropic Messages API (``/v1/messages``).

Anthropic's OpenAI-compatible ``/v1/chat/completions`` endpoint is described as
``openai.chat`` and handled by the OpenAI Chat Completions code.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.web.http_headers import Headers

from mnemomd.providers import openai
from mnemomd.providers.analysis import (
    AnalysisAPI,
    AnalysisCall,
    AnalysisTarget,
    join_text_parts,
    versioned_url,
)
from mnemomd.providers.base import (
    NEUTRAL,
    OUTPUT,
    REASONING,
    Accumulator,
    ExtractionBuilder,
    OfferedTools,
    Provider,
    RequestInfo,
    StreamError,
    StreamState,
    anthropic_tools,
    bearer_token,
    chat_tools,
    comment_keepalive,
    describe_json_api,
    event_json,
    extractor,
    first_header,
    injector,
    model_name,
    never_raises,
    output_writer,
    prepend_text,
    route_path,
    sse_event,
    stream_dispatch,
)
from mnemomd.providers.jsonutil import Parsed
from mnemomd.providers.openai import OPENAI_CHAT
from mnemomd.providers.sse import SSEEvent

#: The official API, the default of ``ANTHROPIC_BASE_URL``.
BASE_URL = "https://api.anthropic.com"
#: ``RequestInfo.api`` of the Messages API.
ANTHROPIC_MESSAGES = "anthropic.messages"
#: The ``anthropic-version`` analysis calls pin.
API_VERSION = "2023-06-01"
#: Anthropic's documented minimum ``budget_tokens``.
MIN_THINKING_BUDGET = 1024


def find_api_key(headers: Headers, query: bytes) -> bytes | None:
    """``x-api-key``; an OAuth-style ``Authorization: Bearer`` token also identifies."""
    key = first_header(headers, b"x-api-key")
    if key is not None and key.strip():
        return key.strip()
    return bearer_token(headers)


@never_raises(lambda *args: RequestInfo(None, None, False, None))
def describe_request(path: bytes, query: bytes, body: bytes) -> RequestInfo:
    """``…/messages`` is the Messages API; ``…/chat/completions`` the OpenAI-compatible one.

    Matching on the suffix keeps base URLs with a path prefix working; ``count_tokens``,
    batches and model lists are forwarded without analysis.
    """
    route = route_path(path)
    if route.endswith("/messages"):
        return describe_json_api(ANTHROPIC_MESSAGES, body)
    if route.endswith("/chat/completions"):
        return describe_json_api(OPENAI_CHAT, body)
    return describe_json_api(None, body)


def offered_tools(info: RequestInfo) -> OfferedTools:
    """The tool names a described request offers the model (tool policies)."""
    if info.json_body is None:
        return OfferedTools()
    if info.api == ANTHROPIC_MESSAGES:
        return anthropic_tools(info.json_body)
    if info.api == OPENAI_CHAT:
        return chat_tools(info.json_body)
    return OfferedTools()


# --------------------------------------------------------------------------
# Thinking injection.

_VERSION_FIRST = re.compile(r"claude-(\d+)(?:[-.](\d+))?-([a-z]+)")
_FAMILY_FIRST = re.compile(r"claude-([a-z]+)-(\d+)(?:$|[-.@:])")
_TOOL_USE = ("tool_use", "server_tool_use", "mcp_tool_use")


def supports_thinking(model: str | None) -> bool:
    """Extended thinking: Claude 3.7 Sonnet and every Claude 4+ model (``claude-opus-4…``,
    ``claude-sonnet-4-5…``, ``claude-haiku-4-5…``). Claude 3.5 / 3 / 2 / instant and names
    we do not recognise are left alone: enabling thinking there is a 400.
    """
    name = model_name(model)
    match = _VERSION_FIRST.match(name)
    if match:
        version = (int(match[1]), int(match[2] or 0))
        return version >= (4, 0) or (version >= (3, 7) and match[3] == "sonnet")
    match = _FAMILY_FIRST.match(name)
    return bool(match) and int(match[2]) >= 4


def _is_one(value: object) -> bool:
    return type(value) in (int, float) and value == 1


def _blocks(message: object) -> list[Any]:
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, list) else []


def _block_type(block: object) -> object:
    return block.get("type") if isinstance(block, dict) else None


def _tool_cycle_lacks_thinking(messages: list[Any]) -> bool:
    """Whether an open tool-use cycle has an assistant turn not starting with thinking.

    With thinking enabled the API demands that assistant turns of the current tool loop
    (after the last genuine user message) begin with a (redacted) thinking block; history
    produced without thinking would turn the request into a 400.
    """
    for message in reversed(messages):
        if not isinstance(message, dict):
            return True
        role = message.get("role")
        blocks = _blocks(message)
        if role == "user":
            if not blocks or any(_block_type(b) != "tool_result" for b in blocks):
                return False  # a genuine user turn closes the cycle
        elif role == "assistant":
            uses_tools = any(_block_type(b) in _TOOL_USE for b in blocks)
            if uses_tools and _block_type(blocks[0]) not in ("thinking", "redacted_thinking"):
                return True
    return False


def _inject_messages_thinking(
    info: RequestInfo, body: dict[str, Any], budget_tokens: int = MIN_THINKING_BUDGET
) -> dict[str, Any] | None:
    """``thinking: {type: enabled, budget_tokens}`` when the API will accept it.

    Left alone when: the client set ``thinking`` in any form; the model does not support
    extended thinking; ``max_tokens`` is not an integer above the budget (budget at least
    1024, the API minimum); ``temperature`` is set to anything but 1; ``top_k`` or
    ``top_p`` is set; ``tool_choice`` forces a tool (``any``/``tool``) or is malformed;
    the last message is an assistant prefill; or the open tool loop has assistant turns
    without thinking blocks.
    """
    if "thinking" in body or not supports_thinking(body.get("model")):
        return None
    budget = max(int(budget_tokens), MIN_THINKING_BUDGET)
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is not int or max_tokens <= budget:
        return None
    if "temperature" in body and not _is_one(body["temperature"]):
        return None
    if "top_k" in body or "top_p" in body:
        return None
    if "tool_choice" in body:
        choice = body["tool_choice"]
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "none"):
            return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None  # assistant prefill cannot be combined with thinking
    if _tool_cycle_lacks_thinking(messages):
        return None
    return {**body, "thinking": {"type": "enabled", "budget_tokens": budget}}


def _inject_messages_nudge(
    info: RequestInfo, body: dict[str, Any], notice: str
) -> dict[str, Any] | None:
    """Prepend the notice to ``system``: string, list of text blocks, or absent."""
    system = body.get("system")
    if system is None:
        return {**body, "system": notice}
    if isinstance(system, str):
        return {**body, "system": prepend_text(notice, system)}
    if isinstance(system, list):
        return {**body, "system": [{"type": "text", "text": notice}, *system]}
    return None


inject_thinking = injector(
    {ANTHROPIC_MESSAGES: _inject_messages_thinking, OPENAI_CHAT: openai.inject_chat_thinking}
)
inject_nudge = injector(
    {ANTHROPIC_MESSAGES: _inject_messages_nudge, OPENAI_CHAT: openai.inject_chat_nudge}
)


# --------------------------------------------------------------------------
# Response extraction.


#: Which field of each delta type carries text worth keeping (signatures are not).
_DELTA_FIELDS: dict[str, str] = {
    "thinking_delta": "thinking",
    "text_delta": "text",
    "input_json_delta": "partial_json",
}


class _Block:
    __slots__ = ("kind", "name", "pieces", "arguments")

    def __init__(self, kind: str, name: object = None, arguments: object = None) -> None:
        self.kind = kind
        self.name = name
        self.pieces: list[str] = []
        self.arguments = arguments


class MessagesAccumulator(Accumulator):
    """Messages API: ``content`` blocks, or the ``content_block_*`` event stream."""

    def __init__(self, out: ExtractionBuilder) -> None:
        super().__init__(out)
        self._blocks: dict[int, _Block] = {}

    def whole(self, doc: dict[str, Any], cut: Parsed | None = None) -> None:
        self.out.set_model(doc.get("model"))
        content = doc.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict):
                self._add(block)

    def _add(self, block: dict[str, Any]) -> None:
        kind = block.get("type")
        if kind == "thinking":
            self.out.thinking(block.get("thinking"))
        elif kind == "redacted_thinking":
            self.out.redacted = True
        elif kind == "text":
            self.out.text(block.get("text"))
        elif kind in _TOOL_USE:
            self.out.tool(block.get("name"), block.get("input"))

    def chunk(self, doc: dict[str, Any], event: str, cut: Parsed | None = None) -> None:
        kind = doc.get("type", event)
        if kind == "content_block_delta":
            index, delta = doc.get("index"), doc.get("delta")
            block = self._blocks.get(index) if type(index) is int else None
            if block is None or not isinstance(delta, dict):
                return
            delta_type = delta.get("type")
            field = _DELTA_FIELDS.get(delta_type) if isinstance(delta_type, str) else None
            piece = delta.get(field) if field else None
            if isinstance(piece, str):
                block.pieces.append(piece)
        elif kind == "content_block_start":
            self._start(doc.get("index"), doc.get("content_block"))
        elif kind == "message_start":
            message = doc.get("message")
            if isinstance(message, dict):
                self.out.set_model(message.get("model"))
        elif kind in ("message_stop", "error"):
            self.terminal = True

    def _start(self, index: object, block: object) -> None:
        if type(index) is not int or not isinstance(block, dict):
            return
        kind = block.get("type")
        if kind == "redacted_thinking":
            self.out.redacted = True
        elif kind in ("thinking", "text"):
            state = self._blocks[index] = _Block(kind)
            initial = block.get(kind)
            if isinstance(initial, str):
                state.pieces.append(initial)
        elif kind in _TOOL_USE:
            self._blocks[index] = _Block("tool", block.get("name"), block.get("input"))

    def finish(self) -> None:
        for index in sorted(self._blocks):
            block = self._blocks[index]
            text = "".join(block.pieces)
            if block.kind == "thinking":
                self.out.thinking(text)
            elif block.kind == "text":
                self.out.text(text)
            else:
                # Streamed input arrives as partial JSON; without any, the start block's.
                self.out.tool(block.name, text if text.strip() else block.arguments)


extract_response = extractor(
    {ANTHROPIC_MESSAGES: MessagesAccumulator, OPENAI_CHAT: openai.ChatAccumulator}
)
#: Text blocks and ``[TOOL CALL] name {input}`` lines (``tool_use``, server and MCP tools).
output_block = output_writer(
    {ANTHROPIC_MESSAGES: MessagesAccumulator, OPENAI_CHAT: openai.ChatAccumulator}
)

# --------------------------------------------------------------------------
# Held streams (enforce mode).

_THINKING_BLOCKS = ("thinking", "redacted_thinking")
_THINKING_DELTAS = ("thinking_delta", "signature_delta")
#: Anthropic's own keepalive: the SDK skips ``ping`` events.
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def classify_messages_event(info: RequestInfo, event: SSEEvent) -> str:
    """``message_start`` and ``ping`` are neutral; thinking blocks are reasoning; the start
    of any other block (text, tool use, tool results), ``message_delta``, ``message_stop``
    and anything unknown are output.

    A ``content_block_stop`` is reasoning: while the stream is relayed live, every block
    opened so far was a thinking block (any other start is where the hold begins).
    """
    doc = event_json(event)
    if doc is None:
        return OUTPUT
    kind = doc.get("type", event.event)
    if kind in ("message_start", "ping"):
        return NEUTRAL
    if kind == "content_block_start":
        block = doc.get("content_block")
        return REASONING if isinstance(block, dict) and block.get("type") in _THINKING_BLOCKS \
            else OUTPUT
    if kind == "content_block_delta":
        delta = doc.get("delta")
        return REASONING if isinstance(delta, dict) and delta.get("type") in _THINKING_DELTAS \
            else OUTPUT
    if kind == "content_block_stop":
        return REASONING
    return OUTPUT


def messages_error_event(info: RequestInfo, error: StreamError, state: StreamState) -> bytes:
    """``event: error`` as the API sends it: the SDK raises ``APIStatusError`` with
    ``.type`` the error's type and the gateway's fields in ``.body["error"]``."""
    return sse_event("error", {"type": "error", "error": {
        "type": error.type, "message": error.message, **error.fields()}})


def messages_keepalive(info: RequestInfo) -> bytes:
    return PING


classify_stream_event = stream_dispatch(
    {ANTHROPIC_MESSAGES: classify_messages_event, OPENAI_CHAT: openai.classify_chat_event},
    lambda *args: OUTPUT)
stream_error_event = stream_dispatch(
    {ANTHROPIC_MESSAGES: messages_error_event, OPENAI_CHAT: openai.chat_error_event},
    messages_error_event)
stream_keepalive = stream_dispatch(
    {ANTHROPIC_MESSAGES: messages_keepalive, OPENAI_CHAT: comment_keepalive},
    comment_keepalive)

# --------------------------------------------------------------------------
# As the analysis backend: the Messages API.


def analysis_request(target: AnalysisTarget, system: str, user: str,
                     max_tokens: int) -> AnalysisCall:
    """``POST {base}/v1/messages`` with ``x-api-key`` and the pinned API version."""
    url = versioned_url(target.endpoint, ("/v1",), "/messages")
    headers = {"x-api-key": target.api_key or "", "anthropic-version": API_VERSION}
    body = {"model": target.model, "max_tokens": max_tokens, "system": system,
            "messages": [{"role": "user", "content": user}]}
    return AnalysisCall(url, headers, body)


def analysis_answer(answer: Any) -> str:
    """The text blocks of ``content``; thinking and tool blocks are not the verdict."""
    return join_text_parts(answer["content"], kind_key="type", kind="text")


ANALYSIS = AnalysisAPI(
    name="anthropic",
    build_request=analysis_request,
    parse_answer=analysis_answer,
    official_base_url=BASE_URL,
    key_setting="ANTHROPIC_API_KEY",
)

PROVIDER = Provider(
    name="anthropic",
    title="Anthropic",
    base_url=BASE_URL,
    base_url_setting="ANTHROPIC_BASE_URL",
    find_api_key=find_api_key,
    key_header="x-api-key",
    describe_request=describe_request,
    offered_tools=offered_tools,
    inject_thinking=inject_thinking,
    inject_nudge=inject_nudge,
    extract_response=extract_response,
    output_block=output_block,
    injection_hints={ANTHROPIC_MESSAGES: ("thinking",)},
    analysis=ANALYSIS,
    classify_stream_event=classify_stream_event,
    stream_error_event=stream_error_event,
    stream_keepalive=stream_keepalive,
)

"""OpenAI Chat Completions (``/v1/chat/completions``) and Responses (``/v1/responses``).

The Chat Completions code here also serves the OpenAI-compatible endpoints of the other
providers and of local servers (vLLM, Ollama, llama.cpp) behind ``OPENAI_BASE_URL``,
which is why it reads ``reasoning_content`` and ``reasoning`` alike. As an analysis
backend it speaks Chat Completions, here and in ``openai_compatible``.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.web.http_headers import Headers

from mnemomd.providers.analysis import (
    AnalysisAPI,
    AnalysisCall,
    AnalysisRequestBuilder,
    AnalysisTarget,
    join_text_parts,
    model_text,
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
    bearer_token,
    chat_tools,
    comment_keepalive,
    describe_json_api,
    event_json,
    extractor,
    injector,
    model_name,
    never_raises,
    output_writer,
    prepend_text,
    responses_tools,
    route_path,
    short_name,
    sse_event,
    stream_dispatch,
)
from mnemomd.providers.jsonutil import Parsed
from mnemomd.providers.sse import SSEEvent

#: The official API, the default of ``OPENAI_BASE_URL``.
BASE_URL = "https://api.openai.com"
#: ``RequestInfo.api`` values of the APIs read here.
OPENAI_CHAT = "openai.chat"
OPENAI_RESPONSES = "openai.responses"


def find_api_key(headers: Headers, query: bytes) -> bytes | None:
    return bearer_token(headers)


_AZURE_DEPLOYMENT = re.compile(r"/deployments/([^/]+)/")


@never_raises(lambda *args: RequestInfo(None, None, False, None))
def describe_request(path: bytes, query: bytes, body: bytes) -> RequestInfo:
    """Chat Completions and Responses by path suffix (base URLs may carry a prefix).

    Azure OpenAI names no model in the body: its deployment name stands in. Retrieval,
    cancellation and every other endpoint are forwarded without analysis.
    """
    route = route_path(path)
    if route.endswith("/chat/completions"):
        info = describe_json_api(OPENAI_CHAT, body)
    elif route.endswith("/responses"):
        info = describe_json_api(OPENAI_RESPONSES, body)
    else:
        return describe_json_api(None, body)
    if info.model is None and info.json_body is not None:
        match = _AZURE_DEPLOYMENT.search(route)
        if match:
            info = RequestInfo(info.api, short_name(match[1]), info.streaming_requested,
                               info.json_body)
    return info


def offered_tools(info: RequestInfo) -> OfferedTools:
    """The tool names a described request offers the model (tool policies)."""
    if info.json_body is None:
        return OfferedTools()
    if info.api == OPENAI_CHAT:
        return chat_tools(info.json_body)
    if info.api == OPENAI_RESPONSES:
        return responses_tools(info.json_body)
    return OfferedTools()


# --------------------------------------------------------------------------
# Injection.

_O_SERIES = re.compile(r"o[134](?:$|-)")
#: Models that accept neither a system nor a developer message.
_NO_SYSTEM_MESSAGE = ("o1-mini", "o1-preview")


def is_reasoning_model(model: str | None) -> bool:
    """o1/o3/o4 and GPT-5 families, minus ``o1-mini``/``o1-preview`` (no summaries) and the
    ``gpt-5*-chat`` models, which are not reasoning models and refuse ``reasoning``."""
    name = model_name(model)
    if name.startswith(_NO_SYSTEM_MESSAGE):
        return False
    if name.startswith("gpt-5"):
        return "chat" not in name
    return bool(_O_SERIES.match(name))


def inject_chat_thinking(
    info: RequestInfo, body: dict[str, Any], budget_tokens: int = 1024
) -> dict[str, Any] | None:
    """Never: Chat Completions only offers ``reasoning_effort``, which changes cost and
    behaviour and yields no readable reasoning from OpenAI. Servers that expose reasoning
    (``reasoning_content``) do so unasked, and we extract it."""
    return None


def _inject_responses_thinking(
    info: RequestInfo, body: dict[str, Any], budget_tokens: int = 1024
) -> dict[str, Any] | None:
    """``reasoning: {summary: "auto"}`` for reasoning models when ``reasoning`` is absent.

    Effort stays unset (the model default), so only the summary is added. Non-reasoning
    models would answer 400, so they are left alone, as is any client-set ``reasoning``.
    """
    if "reasoning" in body or not is_reasoning_model(body.get("model") or info.model):
        return None
    return {**body, "reasoning": {"summary": "auto"}}


def inject_chat_nudge(
    info: RequestInfo, body: dict[str, Any], notice: str
) -> dict[str, Any] | None:
    """Prepend to the first system/developer message, else insert a system message first.

    Content may be a string, a list of content parts or null. ``o1-mini``/``o1-preview``
    take no system message at all, so without one there the body is left alone.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer"):
            continue
        content = message.get("content")
        if isinstance(content, str):
            content = prepend_text(notice, content)
        elif isinstance(content, list):
            content = [{"type": "text", "text": notice}, *content]
        elif content is None:
            content = notice
        else:
            return None
        updated = list(messages)
        updated[index] = {**message, "content": content}
        return {**body, "messages": updated}
    if model_name(body.get("model") or info.model).startswith(_NO_SYSTEM_MESSAGE):
        return None
    return {**body, "messages": [{"role": "system", "content": notice}, *messages]}


def _inject_responses_nudge(
    info: RequestInfo, body: dict[str, Any], notice: str
) -> dict[str, Any] | None:
    """Prepend to ``instructions`` (set it when absent)."""
    instructions = body.get("instructions")
    if instructions is None:
        return {**body, "instructions": notice}
    if isinstance(instructions, str):
        return {**body, "instructions": prepend_text(notice, instructions)}
    return None


inject_thinking = injector(
    {OPENAI_CHAT: inject_chat_thinking, OPENAI_RESPONSES: _inject_responses_thinking}
)
inject_nudge = injector({OPENAI_CHAT: inject_chat_nudge, OPENAI_RESPONSES: _inject_responses_nudge})


# --------------------------------------------------------------------------
# Chat Completions extraction.


def _reasoning_of(message: dict[str, Any]) -> str | None:
    """``reasoning_content`` (DeepSeek, vLLM, SDK docs) or ``reasoning`` (newer servers)."""
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _content_text(content: object) -> str | None:
    """A message's text: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(t for t in texts if isinstance(t, str))
    return None


class _Choice:
    __slots__ = ("reasoning", "text", "tools", "finished")

    def __init__(self) -> None:
        self.reasoning: list[str] = []
        self.text: list[str] = []
        self.tools: dict[object, list[Any]] = {}  # index -> [name, argument pieces]
        self.finished = False


class ChatAccumulator(Accumulator):
    """Chat Completions: ``choices[].message``, or streamed ``choices[].delta`` chunks."""

    def __init__(self, out: ExtractionBuilder) -> None:
        super().__init__(out)
        self._choices: dict[int, _Choice] = {}

    def whole(self, doc: dict[str, Any], cut: Parsed | None = None) -> None:
        self.out.set_model(doc.get("model"))
        choices = doc.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            self.out.thinking(_reasoning_of(message))
            text = _content_text(message.get("content"))
            self.out.text(text or message.get("refusal"))
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                if isinstance(call, dict):
                    self._whole_call(call)
            legacy = message.get("function_call")
            if isinstance(legacy, dict):
                self.out.tool(legacy.get("name"), legacy.get("arguments"))

    def _whole_call(self, call: dict[str, Any]) -> None:
        function = call.get("function")
        if isinstance(function, dict):
            self.out.tool(function.get("name"), function.get("arguments"))
        custom = call.get("custom")
        if isinstance(custom, dict):
            self.out.tool(custom.get("name"), custom.get("input"))  # free-form: no keys

    def chunk(self, doc: dict[str, Any], event: str, cut: Parsed | None = None) -> None:
        self.out.set_model(doc.get("model"))
        if "error" in doc:
            self.terminal = True
        choices = doc.get("choices")
        for position, choice in enumerate(choices if isinstance(choices, list) else []):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index")
            state = self._choices.setdefault(index if type(index) is int else position, _Choice())
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(state, delta)
            if isinstance(choice.get("finish_reason"), str):
                state.finished = True

    def _delta(self, state: _Choice, delta: dict[str, Any]) -> None:
        reasoning = _reasoning_of(delta)
        if reasoning:
            state.reasoning.append(reasoning)
        text = _content_text(delta.get("content")) or delta.get("refusal")
        if isinstance(text, str) and text:
            state.text.append(text)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if not isinstance(call, dict):
                continue
            index: object = call.get("index")
            if type(index) is not int:
                # Servers that omit the index send each call whole, or continue the last.
                if state.tools and not call.get("id"):
                    index = next(reversed(state.tools))
                else:
                    index = ("unindexed", len(state.tools))
            slot = state.tools.setdefault(index, [None, []])
            function = call.get("function")
            if isinstance(function, dict):
                name, arguments = function.get("name"), function.get("arguments")
                if isinstance(name, str) and name and slot[0] is None:
                    slot[0] = name
                if isinstance(arguments, str):
                    slot[1].append(arguments)
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):
            slot = state.tools.setdefault("function_call", [None, []])
            if isinstance(legacy.get("name"), str) and slot[0] is None:
                slot[0] = legacy["name"]
            if isinstance(legacy.get("arguments"), str):
                slot[1].append(legacy["arguments"])

    def finish(self) -> None:
        # Some servers end without [DONE]; every choice having finished is just as final.
        if self._choices and all(c.finished for c in self._choices.values()):
            self.terminal = True
        for index in sorted(self._choices):
            state = self._choices[index]
            self.out.thinking("".join(state.reasoning))
            self.out.text("".join(state.text))
            for name, pieces in state.tools.values():
                self.out.tool(name, "".join(pieces))


# --------------------------------------------------------------------------
# Responses extraction.

#: Output item types that call something, named by their tool (``web_search_call``…).
_FUNCTION_ITEMS = ("function_call", "mcp_call")


def _join_texts(parts: object, kind: str) -> str:
    """Texts of the ``kind`` parts of a list (summary or content), paragraph-separated."""
    if not isinstance(parts, list):
        return ""
    texts = [p.get("text") for p in parts if isinstance(p, dict) and p.get("type") == kind]
    return "\n\n".join(t for t in texts if isinstance(t, str) and t)


def add_response_item(out: ExtractionBuilder, item: object) -> None:
    """One Responses ``output`` item: reasoning, message, or a tool call."""
    if not isinstance(item, dict):
        return
    kind = item.get("type")
    if kind == "reasoning":
        # Raw reasoning text (open-weight models) is fuller than the summary.
        text = _join_texts(item.get("content"), "reasoning_text")
        text = text or _join_texts(item.get("summary"), "summary_text")
        if text:
            out.thinking(text)
        else:
            out.redacted = True  # reasoned, but only encrypted or unsummarised
    elif kind == "message":
        content = item.get("content")
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") in ("output_text", "refusal"):
                out.text(part.get("text") if part["type"] == "output_text" else part.get("refusal"))
    elif kind in _FUNCTION_ITEMS:
        out.tool(item.get("name"), item.get("arguments"))
    elif kind == "custom_tool_call":
        out.tool(item.get("name"), item.get("input"))  # free-form input: no keys
    elif isinstance(kind, str) and kind.endswith("_call"):
        out.tool(kind.removesuffix("_call"), None)


class _Item:
    __slots__ = ("kind", "name", "summary", "reasoning", "text", "arguments", "done")

    def __init__(self) -> None:
        self.kind: object = None
        self.name: object = None
        self.summary: dict[object, list[str]] = {}
        self.reasoning: list[str] = []
        self.text: list[str] = []
        self.arguments: list[str] = []
        self.done: dict[str, Any] | None = None


_TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed", "error")


class ResponsesAccumulator(Accumulator):
    """Responses API: ``output`` items, or the typed ``response.*`` event stream.

    Deltas build each item; ``response.output_item.done`` replaces it with the finished
    item, and the terminal event's ``response.output`` (when present) replaces them all.
    """

    def __init__(self, out: ExtractionBuilder) -> None:
        super().__init__(out)
        self._items: dict[object, _Item] = {}
        self._aliases: dict[str, object] = {}
        self._final: list[Any] | None = None

    def whole(self, doc: dict[str, Any], cut: Parsed | None = None) -> None:
        self.out.set_model(doc.get("model"))
        output = doc.get("output")
        for item in output if isinstance(output, list) else []:
            add_response_item(self.out, item)

    def _item(self, doc: dict[str, Any]) -> _Item:
        index, item_id = doc.get("output_index"), doc.get("item_id")
        item = doc.get("item")
        if not isinstance(item_id, str) and isinstance(item, dict):
            item_id = item.get("id")
        key: object
        if type(index) is int:
            key = index
            if isinstance(item_id, str):
                self._aliases.setdefault(item_id, index)
        elif isinstance(item_id, str):
            key = self._aliases.setdefault(item_id, item_id)
        else:
            key = None
        return self._items.setdefault(key, _Item())

    def chunk(self, doc: dict[str, Any], event: str, cut: Parsed | None = None) -> None:
        kind = doc.get("type", event)
        if not isinstance(kind, str):
            return
        if kind.endswith(".delta"):
            delta = doc.get("delta")
            if not isinstance(delta, str):
                return
            state = self._item(doc)
            if kind == "response.reasoning_summary_text.delta":
                state.summary.setdefault(str(doc.get("summary_index")), []).append(delta)
            elif kind == "response.reasoning_text.delta":
                state.reasoning.append(delta)
            elif kind in ("response.output_text.delta", "response.refusal.delta"):
                state.text.append(delta)
            elif kind in ("response.function_call_arguments.delta",
                          "response.mcp_call_arguments.delta"):
                state.arguments.append(delta)
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = doc.get("item")
            if isinstance(item, dict):
                state = self._item(doc)
                state.kind, state.name = item.get("type"), item.get("name")
                if kind.endswith(".done"):
                    state.done = item
        elif kind.startswith("response."):
            response = doc.get("response")
            if isinstance(response, dict):
                self.out.set_model(response.get("model"))
                output = response.get("output")
                if kind in _TERMINAL_EVENTS and isinstance(output, list) and output:
                    self._final = output
        if kind in _TERMINAL_EVENTS:
            self.terminal = True

    def finish(self) -> None:
        if self._final is not None:
            for item in self._final:
                add_response_item(self.out, item)
            return
        for state in self._items.values():
            if state.done is not None:
                add_response_item(self.out, state.done)
            elif state.kind == "reasoning" or state.summary or state.reasoning:
                summary = "\n\n".join("".join(parts) for parts in state.summary.values())
                self.out.thinking("".join(state.reasoning) or summary)
            elif state.text:
                self.out.text("".join(state.text))
            elif state.kind in _FUNCTION_ITEMS:
                self.out.tool(state.name, "".join(state.arguments))


extract_response = extractor({OPENAI_CHAT: ChatAccumulator, OPENAI_RESPONSES: ResponsesAccumulator})
#: Message text (and refusals) and ``[TOOL CALL]`` lines: Chat ``tool_calls`` and
#: ``function_call``, Responses function, MCP and custom tool calls and ``*_call`` items.
output_block = output_writer({OPENAI_CHAT: ChatAccumulator,
                              OPENAI_RESPONSES: ResponsesAccumulator})


# --------------------------------------------------------------------------
# Held streams (enforce mode).

#: Delta fields that carry nothing of the answer when empty; reasoning fields are
#: reasoning when not.
_QUIET_DELTA_FIELDS = ("role", "content", "refusal")
_REASONING_FIELDS = ("reasoning_content", "reasoning")


def _delta_class(delta: object) -> str:
    if not isinstance(delta, dict):
        return OUTPUT
    found = NEUTRAL
    for name, value in delta.items():
        if name == "role" or value is None or value == "" or value == [] or value == {}:
            continue
        if name in _REASONING_FIELDS and isinstance(value, str):
            found = REASONING
        else:
            return OUTPUT  # content, refusal, tool_calls, function_call, audio, unknown
    return found


def classify_chat_event(info: RequestInfo, event: SSEEvent) -> str:
    """A chunk is reasoning when its deltas carry only reasoning text (``reasoning_content``
    or ``reasoning``, as DeepSeek, vLLM and the compatible endpoints send it); the role
    chunk and usage-only chunks (``choices: []``) are neutral; content, refusals, tool or
    function calls, audio, a finish reason, errors, ``[DONE]`` and anything unknown are
    output."""
    doc = event_json(event)
    if doc is None or "error" in doc:
        return OUTPUT
    choices = doc.get("choices")
    if not isinstance(choices, list):
        return OUTPUT
    found = NEUTRAL
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("finish_reason") is not None:
            return OUTPUT
        kind = _delta_class(choice.get("delta"))
        if kind == OUTPUT:
            return OUTPUT
        if kind == REASONING:
            found = REASONING
    return found


def chat_error_event(info: RequestInfo, error: StreamError, state: StreamState) -> bytes:
    """``data: {"error": {…}}`` with no event name, as OpenAI sends errors mid-stream: the
    SDK raises ``APIError`` with ``.type`` and ``.code`` the error's type."""
    return sse_event(None, {"error": {
        "message": error.message, "type": error.type, "param": None, "code": error.type,
        **error.fields()}})


_RESPONSES_NEUTRAL = ("response.created", "response.in_progress", "response.queued")
_RESPONSES_REASONING = ("response.reasoning_summary_part.", "response.reasoning_summary_text.",
                        "response.reasoning_text.")


def classify_responses_event(info: RequestInfo, event: SSEEvent) -> str:
    """Reasoning items and their summary and text events are reasoning; the response's
    creation and progress events and the MCP tool list are neutral; any other output item
    (message, function or tool call), the terminal events and anything unknown are output."""
    doc = event_json(event)
    if doc is None:
        return OUTPUT
    kind = doc.get("type", event.event)
    if not isinstance(kind, str):
        return OUTPUT
    if kind in _RESPONSES_NEUTRAL or kind.startswith("response.mcp_list_tools."):
        return NEUTRAL
    if kind.startswith(_RESPONSES_REASONING):
        return REASONING
    if kind in ("response.output_item.added", "response.output_item.done"):
        item = doc.get("item")
        item_type = item.get("type") if isinstance(item, dict) else None
        if item_type == "reasoning":
            return REASONING
        if item_type == "mcp_list_tools":
            return NEUTRAL  # the server's tool list, not model output
    return OUTPUT


def _sequence_after(state: StreamState) -> int:
    doc = event_json(state.last_event) if state.last_event is not None else None
    number = doc.get("sequence_number") if doc is not None else None
    return number + 1 if type(number) is int else 0


def responses_error_event(info: RequestInfo, error: StreamError, state: StreamState) -> bytes:
    """The documented ``error`` event (flat ``code``/``message``/``sequence_number``) with
    the error also nested under ``error``: today's SDK raises ``APIError`` only for the
    nested form, readers of the documented shape find theirs."""
    nested = {"type": error.type, "code": error.type, "message": error.message,
              "param": None, **error.fields()}
    return sse_event("error", {"type": "error", "code": error.type, "message": error.message,
                               "param": None, "sequence_number": _sequence_after(state),
                               "error": nested})


classify_stream_event = stream_dispatch(
    {OPENAI_CHAT: classify_chat_event, OPENAI_RESPONSES: classify_responses_event},
    lambda *args: OUTPUT)
stream_error_event = stream_dispatch(
    {OPENAI_CHAT: chat_error_event, OPENAI_RESPONSES: responses_error_event},
    chat_error_event)

# --------------------------------------------------------------------------
# As the analysis backend: Chat Completions.


def chat_analysis_request(token_field: str) -> AnalysisRequestBuilder:
    """``POST {base}/v1/chat/completions`` with a Bearer key when there is one, the output
    limit in ``token_field`` (OpenAI's reasoning models require ``max_completion_tokens``,
    local servers know ``max_tokens``)."""

    def build(target: AnalysisTarget, system: str, user: str, max_tokens: int) -> AnalysisCall:
        url = versioned_url(target.endpoint, ("/v1",), "/chat/completions")
        headers = {"authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        body: dict[str, Any] = {"model": target.model,
                                "messages": [{"role": "system", "content": system},
                                             {"role": "user", "content": user}],
                                token_field: max_tokens}
        return AnalysisCall(url, headers, body)

    return build


def chat_analysis_answer(answer: Any) -> str:
    """The first choice's message content: a string or a list of text parts."""
    content = answer["choices"][0]["message"]["content"]
    if isinstance(content, list):
        return join_text_parts(content)
    return model_text(content)


ANALYSIS = AnalysisAPI(
    name="openai",
    build_request=chat_analysis_request("max_completion_tokens"),
    parse_answer=chat_analysis_answer,
    official_base_url=BASE_URL,
    key_setting="OPENAI_API_KEY",
)

PROVIDER = Provider(
    name="openai",
    title="OpenAI",
    base_url=BASE_URL,
    base_url_setting="OPENAI_BASE_URL",
    find_api_key=find_api_key,
    key_header="Authorization",
    describe_request=describe_request,
    offered_tools=offered_tools,
    inject_thinking=inject_thinking,
    inject_nudge=inject_nudge,
    extract_response=extract_response,
    output_block=output_block,
    injection_hints={OPENAI_RESPONSES: ("reasoning",)},
    analysis=ANALYSIS,
    classify_stream_event=classify_stream_event,
    stream_error_event=stream_error_event,
    stream_keepalive=comment_keepalive,
)

"""Google Gemini API (``/v1beta/models/{model}:generateContent`` and streaming).

The model is named by the URL, not the body. Streams come as SSE (``alt=sse``) or, without
it, as one JSON array written element by element; both feed the same reader. Gemini's
OpenAI-compatible ``/v1beta/openai/chat/completions`` is handled as ``openai.chat``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

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
    chat_tools,
    comment_keepalive,
    describe_json_api,
    event_json,
    extractor,
    first_header,
    gemini_tools,
    injector,
    load_json_object,
    model_name,
    never_raises,
    output_writer,
    query_param,
    route_path,
    short_name,
    sse_event,
    stream_dispatch,
)
from mnemomd.providers.jsonutil import Parsed
from mnemomd.providers.openai import OPENAI_CHAT
from mnemomd.providers.sse import SSEEvent

#: The official API, the default of ``GEMINI_BASE_URL``.
BASE_URL = "https://generativelanguage.googleapis.com"
#: ``RequestInfo.api`` of ``generateContent`` and ``streamGenerateContent``.
GEMINI_GENERATE = "gemini.generate"


def find_api_key(headers: Headers, query: bytes) -> bytes | None:
    """``x-goog-api-key`` header, or the ``key`` query parameter older clients use."""
    key = first_header(headers, b"x-goog-api-key")
    if key is not None and key.strip():
        return key.strip()
    return query_param(query, "key")


_GENERATE_METHODS = {"generateContent": False, "streamGenerateContent": True}


def model_from_path(route: str) -> tuple[str | None, str]:
    """(model, method) of ``…/models/{model}:{method}`` or ``…/tunedModels/{id}:{method}``.

    Works behind any version prefix (``/v1beta``, ``/v1``, ``/v1alpha``) and for Vertex-style
    ``…/publishers/google/models/{model}``. Tuned models keep their ``tunedModels/`` prefix.
    """
    resource, sep, method = route.rpartition(":")
    if not sep or "/" in method:
        return None, ""
    for marker, prefix in (("/models/", ""), ("/tunedModels/", "tunedModels/")):
        start = resource.rfind(marker)
        if start >= 0:
            name = resource[start + len(marker):]
            if name and "/" not in name:
                return short_name(prefix + name), method
    return None, method


@never_raises(lambda *args: RequestInfo(None, None, False, None))
def describe_request(path: bytes, query: bytes, body: bytes) -> RequestInfo:
    """``:generateContent`` / ``:streamGenerateContent`` are analysed; the model and the
    streaming flag come from the URL. Other methods keep their model but are not parsed."""
    route = route_path(path)
    if route.endswith("/chat/completions"):
        return describe_json_api(OPENAI_CHAT, body)
    model, method = model_from_path(route)
    if method not in _GENERATE_METHODS or model is None:
        return RequestInfo(None, model, False, None)
    return RequestInfo(GEMINI_GENERATE, model, _GENERATE_METHODS[method], load_json_object(body))


def offered_tools(info: RequestInfo) -> OfferedTools:
    """The tool names a described request offers the model (tool policies)."""
    if info.json_body is None:
        return OfferedTools()
    if info.api == GEMINI_GENERATE:
        return gemini_tools(info.json_body)
    if info.api == OPENAI_CHAT:
        return chat_tools(info.json_body)
    return OfferedTools()


# --------------------------------------------------------------------------
# Injection.

_GEMINI_VERSION = re.compile(r"gemini-(\d+)(?:\.(\d+))?-")
#: Variants that generate media or audio and do not take a thinking config.
_NON_THINKING_VARIANTS = ("-image", "-tts", "-audio", "-live", "embedding")
_SNAKE_CASE_KEYS = ("system_instruction", "generation_config", "safety_settings",
                    "tool_config", "cached_content")


def thinks(model: str | None) -> bool:
    """Gemini 2.5 and later text models, and ``*thinking*`` experiments. Gemini 1.x, 2.0,
    media/audio variants, tuned models and unknown aliases are left alone."""
    if not model or model.startswith("tunedModels/"):
        return False
    name = model_name(model)
    if any(variant in name for variant in _NON_THINKING_VARIANTS):
        return False
    if name.startswith("gemini-") and "thinking" in name:
        return True
    match = _GEMINI_VERSION.match(name + "-")
    return bool(match) and (int(match[1]), int(match[2] or 0)) >= (2, 5)


def _snake_case(body: dict[str, Any]) -> bool:
    """Whether the client writes proto field names (``generation_config``) rather than JSON
    names: our additions follow its style so no field ends up given twice."""
    return any(key in body for key in _SNAKE_CASE_KEYS)


def _inject_generate_thinking(
    info: RequestInfo, body: dict[str, Any], budget_tokens: int = 1024
) -> dict[str, Any] | None:
    """``generationConfig.thinkingConfig.includeThoughts = true`` for models that think.

    The thinking budget stays the model's default; a client-set ``thinkingConfig`` (either
    spelling, any content) wins, and a malformed ``generationConfig`` is left alone.
    """
    if not thinks(info.model):
        return None
    present = [key for key in ("generationConfig", "generation_config") if key in body]
    if len(present) > 1:
        return None
    key = present[0] if present else ("generation_config" if _snake_case(body) else
                                      "generationConfig")
    config = body.get(key, {})
    if not isinstance(config, dict) or "thinkingConfig" in config or "thinking_config" in config:
        return None
    if key == "generation_config":
        thinking = {"thinking_config": {"include_thoughts": True}}
    else:
        thinking = {"thinkingConfig": {"includeThoughts": True}}
    return {**body, key: {**config, **thinking}}


def _inject_generate_nudge(
    info: RequestInfo, body: dict[str, Any], notice: str
) -> dict[str, Any] | None:
    """Prepend a text part to ``systemInstruction`` (or ``system_instruction``), creating it
    in the client's spelling when absent."""
    present = [key for key in ("systemInstruction", "system_instruction") if key in body]
    if len(present) > 1:
        return None
    part = {"text": notice}
    if not present:
        key = "system_instruction" if _snake_case(body) else "systemInstruction"
        return {**body, key: {"parts": [part]}}
    key = present[0]
    instruction = body[key]
    if instruction is None:
        return {**body, key: {"parts": [part]}}
    if not isinstance(instruction, dict):
        return None
    parts = instruction.get("parts")
    if parts is None:
        parts = []
    elif isinstance(parts, dict):
        parts = [parts]  # a lone part object, which the API also accepts
    elif not isinstance(parts, list):
        return None
    return {**body, key: {**instruction, "parts": [part, *parts]}}


inject_thinking = injector(
    {GEMINI_GENERATE: _inject_generate_thinking, OPENAI_CHAT: openai.inject_chat_thinking}
)
inject_nudge = injector(
    {GEMINI_GENERATE: _inject_generate_nudge, OPENAI_CHAT: openai.inject_chat_nudge}
)


# --------------------------------------------------------------------------
# Extraction.


class _Candidate:
    __slots__ = ("blocks", "run", "output", "finished")

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.run: list[str] = []  # the thought being streamed
        #: In response order: runs of text pieces, and (name, args) of function calls.
        self.output: list[list[str] | tuple[object, object]] = []
        self.finished = False

    def text(self, piece: str) -> None:
        if self.output and isinstance(self.output[-1], list):
            self.output[-1].append(piece)
        else:
            self.output.append([piece])

    def end_thought(self) -> None:
        if self.run:
            self.blocks.append("".join(self.run))
            self.run = []


class GenerateAccumulator(Accumulator):
    """``candidates[].content.parts``: ``thought: true`` parts are thinking, consecutive
    ones (also across stream chunks) forming one block; text parts are output;
    ``functionCall`` parts are tool calls. A whole response is a one-chunk stream."""

    def __init__(self, out: ExtractionBuilder) -> None:
        super().__init__(out)
        self._candidates: dict[int, _Candidate] = {}

    def whole(self, doc: dict[str, Any], cut: Parsed | None = None) -> None:
        self.chunk(doc, "", cut)

    def chunk(self, doc: dict[str, Any], event: str, cut: Parsed | None = None) -> None:
        self.out.set_model(doc.get("modelVersion"))
        feedback = doc.get("promptFeedback")
        if "error" in doc or (isinstance(feedback, dict) and feedback.get("blockReason")):
            self.terminal = True
        candidates = doc.get("candidates")
        for position, candidate in enumerate(candidates if isinstance(candidates, list) else []):
            if not isinstance(candidate, dict):
                continue
            index = candidate.get("index")
            state = self._candidates.setdefault(
                index if type(index) is int else position, _Candidate())
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts if isinstance(parts, list) else []:
                if not isinstance(part, dict):
                    continue
                # A part cut short may have lost its trailing "thought": true: skip it
                # rather than report thinking as visible text.
                if cut is not None and cut.is_open(part) and "thought" not in part:
                    continue
                self._part(state, part)
            if candidate.get("finishReason"):
                state.finished = True

    def _part(self, state: _Candidate, part: dict[str, Any]) -> None:
        text = part.get("text")
        if part.get("thought") is True:
            if isinstance(text, str):
                state.run.append(text)
            return
        call = part.get("functionCall")
        if isinstance(text, str) and text:
            state.end_thought()
            state.text(text)
        if isinstance(call, dict):
            state.end_thought()
            state.output.append((call.get("name"), call.get("args")))

    def finish(self) -> None:
        # Gemini streams have no end event: the last chunk carries the finish reasons.
        if self._candidates and all(c.finished for c in self._candidates.values()):
            self.terminal = True
        for index in sorted(self._candidates):
            state = self._candidates[index]
            state.end_thought()
            for block in state.blocks:
                self.out.thinking(block)
            for item in state.output:  # text and calls in response order
                if isinstance(item, list):
                    self.out.text("".join(item))
                else:
                    self.out.tool(*item)


extract_response = extractor({GEMINI_GENERATE: GenerateAccumulator,
                              OPENAI_CHAT: openai.ChatAccumulator})
#: Non-thought text and ``[TOOL CALL] name {args}`` lines of ``functionCall`` parts.
output_block = output_writer({GEMINI_GENERATE: GenerateAccumulator,
                              OPENAI_CHAT: openai.ChatAccumulator})

# --------------------------------------------------------------------------
# Held streams (enforce mode, ``alt=sse``).

#: A bare line ending: google-genai skips a blank line, but reads any other non-``data:``
#: line (an SSE comment too) as JSON and fails on it.
BLANK_LINE = b"\r\n"


def classify_generate_event(info: RequestInfo, event: SSEEvent) -> str:
    """A chunk whose parts are all ``thought: true`` is reasoning; a chunk without
    candidates (usage, prompt feedback) is neutral; a chunk with any other part, a finish
    reason or an error (a chunk mixing thought and output too) is output."""
    doc = event_json(event)
    if doc is None or "error" in doc:
        return OUTPUT
    candidates = doc.get("candidates")
    if candidates is None or candidates == []:
        return NEUTRAL
    if not isinstance(candidates, list):
        return OUTPUT
    for candidate in candidates:
        if not isinstance(candidate, dict) or candidate.get("finishReason"):
            return OUTPUT
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            return OUTPUT
        if not all(isinstance(p, dict) and p.get("thought") is True for p in parts):
            return OUTPUT
    return REASONING


def generate_error_event(info: RequestInfo, error: StreamError, state: StreamState) -> bytes:
    """``data: {"error": …}`` with ``error`` the first key (google-genai tests the text's
    start) and Google's status: the SDK raises ``ClientError`` (403, PERMISSION_DENIED)
    whose ``details`` hold the gateway's fields."""
    body = {"code": 403, "message": error.message, "status": "PERMISSION_DENIED",
            "type": error.type, **error.fields(),
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                         "reason": error.type.upper(), "domain": "mnemom.ai",
                         "metadata": {"checkpoint_id": error.checkpoint_id or ""}}]}
    return sse_event(None, {"error": body}, terminator=b"\r\n\r\n")


def generate_keepalive(info: RequestInfo) -> bytes:
    return BLANK_LINE


classify_stream_event = stream_dispatch(
    {GEMINI_GENERATE: classify_generate_event, OPENAI_CHAT: openai.classify_chat_event},
    lambda *args: OUTPUT)
stream_error_event = stream_dispatch(
    {GEMINI_GENERATE: generate_error_event, OPENAI_CHAT: openai.chat_error_event},
    generate_error_event)
stream_keepalive = stream_dispatch(
    {GEMINI_GENERATE: generate_keepalive, OPENAI_CHAT: comment_keepalive}, comment_keepalive)

# --------------------------------------------------------------------------
# As the analysis backend: generateContent.


def analysis_request(target: AnalysisTarget, system: str, user: str,
                     max_tokens: int) -> AnalysisCall:
    """``POST {base}/v1beta/models/{model}:generateContent`` with ``x-goog-api-key``, the
    system prompt as the system instruction and a JSON answer asked for."""
    model = target.model.removeprefix("models/")
    url = versioned_url(target.endpoint, ("/v1beta", "/v1"),
                        f"/models/{quote(model, safe='-._')}:generateContent")
    headers = {"x-goog-api-key": target.api_key or ""}
    body = {"systemInstruction": {"parts": [{"text": system}]},
            "contents": [{"role": "user", "parts": [{"text": user}]}],
            "generationConfig": {"maxOutputTokens": max_tokens,
                                 "responseMimeType": "application/json"}}
    return AnalysisCall(url, headers, body)


def analysis_answer(answer: Any) -> str:
    """The first candidate's text parts, without the model's own thought parts."""
    return join_text_parts(answer["candidates"][0]["content"]["parts"], skip_key="thought")


ANALYSIS = AnalysisAPI(
    name="gemini",
    build_request=analysis_request,
    parse_answer=analysis_answer,
    official_base_url=BASE_URL,
    key_setting="GEMINI_API_KEY",
)

PROVIDER = Provider(
    name="gemini",
    title="Gemini",
    base_url=BASE_URL,
    base_url_setting="GEMINI_BASE_URL",
    find_api_key=find_api_key,
    key_header="x-goog-api-key",
    describe_request=describe_request,
    offered_tools=offered_tools,
    inject_thinking=inject_thinking,
    inject_nudge=inject_nudge,
    extract_response=extract_response,
    output_block=output_block,
    injection_hints={GEMINI_GENERATE: ("thinking", "include_thoughts", "includethoughts")},
    analysis=ANALYSIS,
    classify_stream_event=classify_stream_event,
    stream_error_event=stream_error_event,
    stream_keepalive=stream_keepalive,
)

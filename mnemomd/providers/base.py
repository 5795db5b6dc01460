"""What the gateway needs to know about one LLM provider's HTTP API.

Everything provider-specific lives behind this interface so the proxy, the configuration
and the analysis stay generic: adding a provider means adding one module that builds a
``Provider`` and registering it (``mnemomd.providers.PROVIDERS``). Apart from
``find_api_key`` (which reads Twisted headers) every callable is a pure function over
bytes and dicts: no I/O, no reactor, and none of them raises on any input, because
analysis must never break the call it analyses.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, unquote

from twisted.web.http_headers import Headers

from mnemomd.providers.analysis import AnalysisAPI
from mnemomd.providers.jsonutil import (
    MISSING,
    Parsed,
    decode_text,
    loads,
    parse_document,
    parse_partial,
    parse_partial_document,
)
from mnemomd.providers.sse import SSEEvent, looks_like_sse, parse_sse

#: Separator between thinking blocks, as the AIP SDK joins them (SPEC §4).
THINKING_SEPARATOR = "\n\n---\n\n"
TEXT_EXCERPT_CHARS = 500
#: Bounds on what one response can contribute, so hostile upstreams cannot bloat records.
MAX_TOOL_CALLS = 128
MAX_ARGUMENT_KEYS = 64
MAX_NAME_CHARS = 256
#: ``decode_body`` never inflates past this (a capped capture can still be a zip bomb).
MAX_DECODED_BYTES = 16 * 1024 * 1024


def first_header(headers: Headers, name: bytes) -> bytes | None:
    values = headers.getRawHeaders(name)
    return values[0] if values else None


def bearer_token(headers: Headers) -> bytes | None:
    """The token of an ``Authorization: Bearer …`` header, if there is one."""
    value = first_header(headers, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


def query_param(query: bytes, name: str) -> bytes | None:
    """A query-string parameter, percent-decoded byte for byte, or None.

    Escapes decode as Latin-1, one character per byte, so any value (``%E2%82%AC``, ``%FF``)
    comes back as the client's exact bytes: it is for ``is_usable_key`` to refuse it, never
    for an encoder to raise on it.
    """
    text = query.decode("latin-1").removeprefix("?")
    for key, value in parse_qsl(text, keep_blank_values=False, encoding="latin-1"):
        if key == name and value:
            return value.encode("latin-1")
    return None


def is_usable_key(key: bytes) -> bool:
    """Whether ``key`` could be a provider key at all: visible ASCII only.

    Every provider issues keys of letters, digits and punctuation. Anything else (UTF-8,
    control bytes, NUL) cannot authenticate anywhere, and would not survive being put back
    into a header or query string, so the gateway refuses it with a 400 instead of
    forwarding it.
    """
    return bool(key) and all(0x21 <= byte <= 0x7E for byte in key)


# --------------------------------------------------------------------------
# Data passed between the proxy and the provider adapters.


@dataclass(frozen=True)
class RequestInfo:
    """What a request is: which API, which model, streamed or not, and its JSON body.

    ``api`` is None for endpoints the gateway only forwards (model lists, files,
    embeddings…); their bodies are not parsed. ``json_body`` is None when the body is not
    a JSON object: such a request is forwarded unchanged.
    """

    api: str | None
    model: str | None
    streaming_requested: bool
    json_body: dict[str, Any] | None


@dataclass(frozen=True)
class ToolCall:
    """A tool the model asked to call. Argument keys only: values may hold user data."""

    name: str
    argument_keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Extraction:
    """What analysis and tracing need from one response (SPEC §3.6, §4, §8.1).

    ``thinking`` joins readable blocks with ``THINKING_SEPARATOR``; ``redacted_thinking``
    says the model reasoned in a form nobody can read (Anthropic ``redacted_thinking``,
    OpenAI reasoning items without summary). ``complete`` is False when the capture was
    truncated or a stream never reached its terminal event, so a verdict can say it saw
    only part of the reasoning.
    """

    thinking: str | None
    thinking_blocks: int
    redacted_thinking: bool
    tool_calls: list[ToolCall]
    text_excerpt: str
    model: str | None
    complete: bool

    @classmethod
    def empty(cls, model: str | None = None, complete: bool = False) -> Extraction:
        return cls(None, 0, False, [], "", model, complete)


#: Tools read from one request at most; more is reported as an overflow.
MAX_OFFERED_TOOLS = 512


@dataclass(frozen=True)
class OfferedTools:
    """The tool names a request offers the model (or names in ``tool_choice``), in order,
    at most ``MAX_OFFERED_TOOLS``; ``overflow`` when it offered more. A name that is not a
    string is listed as its JSON text, so it matches no ordinary glob."""

    names: tuple[str, ...] = ()
    overflow: bool = False


class ToolLister(Protocol):
    def __call__(self, info: RequestInfo) -> OfferedTools: ...


class RequestDescriber(Protocol):
    def __call__(self, path: bytes, query: bytes, body: bytes) -> RequestInfo: ...


class ThinkingInjector(Protocol):
    def __call__(
        self, info: RequestInfo, body: dict[str, Any], budget_tokens: int = 1024
    ) -> dict[str, Any] | None: ...


class NudgeInjector(Protocol):
    def __call__(
        self, info: RequestInfo, body: dict[str, Any], notice: str
    ) -> dict[str, Any] | None: ...


class ResponseExtractor(Protocol):
    def __call__(
        self, info: RequestInfo, content_type: str, body: bytes, truncated: bool
    ) -> Extraction: ...


#: How the relay of a held stream treats one event (``Provider.classify_stream_event``):
#: reasoning and neutral events are relayed as they come, the first output event is where
#: the stream is held until the verdict.
REASONING = "reasoning"
NEUTRAL = "neutral"
OUTPUT = "output"


@dataclass(frozen=True)
class StreamError:
    """Why a held stream is ended: what its error event tells the client.

    ``type`` is ``integrity_violation`` or ``integrity_unverifiable``; the checkpoint id
    and concerns are those of the non-streaming 403 (``checkpoint_id`` is None when no
    checkpoint was stored, as after an analysis timeout).
    """

    type: str
    message: str
    checkpoint_id: str | None = None
    concerns: tuple[dict[str, Any], ...] = ()
    synthetic: bool = False
    reason: str | None = None

    def fields(self) -> dict[str, Any]:
        """The gateway's fields, in the order every error shape carries them."""
        out: dict[str, Any] = {"checkpoint_id": self.checkpoint_id,
                               "concerns": [dict(c) for c in self.concerns]}
        if self.synthetic:
            out["synthetic"] = True
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class StreamState:
    """What the relay passed on before the error event (Responses numbers its events)."""

    last_event: SSEEvent | None = None


class StreamClassifier(Protocol):
    def __call__(self, info: RequestInfo, event: SSEEvent) -> str: ...


class StreamErrorWriter(Protocol):
    def __call__(self, info: RequestInfo, error: StreamError, state: StreamState) -> bytes: ...


class StreamKeepalive(Protocol):
    def __call__(self, info: RequestInfo) -> bytes: ...


class OutputBlockWriter(Protocol):
    def __call__(self, info: RequestInfo, body: bytes, content_type: str = "") -> str: ...


def _describe_nothing(path: bytes, query: bytes, body: bytes) -> RequestInfo:
    return RequestInfo(None, None, False, None)


def _no_tools(info: RequestInfo) -> OfferedTools:
    return OfferedTools()


def _inject_nothing(info: RequestInfo, body: dict[str, Any], *args: Any) -> None:
    return None


def _extract_nothing(
    info: RequestInfo, content_type: str, body: bytes, truncated: bool
) -> Extraction:
    return Extraction.empty(info.model, complete=not truncated)


def _everything_is_output(info: RequestInfo, event: SSEEvent) -> str:
    return OUTPUT


def sse_event(event: str | None, payload: dict[str, Any], terminator: bytes = b"\n\n") -> bytes:
    """One SSE event as providers write it: compact JSON, raw UTF-8."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    head = f"event: {event}\n".encode() if event is not None else b""
    return head + b"data: " + data + terminator


def generic_stream_error(info: RequestInfo, error: StreamError, state: StreamState) -> bytes:
    """``event: error`` with the Anthropic-style body, for APIs without a shape of their own."""
    return sse_event("error", {"type": "error", "error": {
        "type": error.type, "message": error.message, **error.fields()}})


def comment_keepalive(info: RequestInfo) -> bytes:
    """An SSE comment: every event-stream reader skips it."""
    return b": ping\n\n"


def stream_dispatch(handlers: Mapping[str, Callable[..., _T]],
                    fallback: Callable[..., _T]) -> Callable[..., _T]:
    """A provider's stream function: the handler for ``info.api``, else ``fallback``; any
    exception means ``fallback`` (for the classifier: output, the safe answer)."""

    @never_raises(fallback)
    def dispatch(info: RequestInfo, *args: Any) -> _T:
        handler = handlers.get(getattr(info, "api", None) or "", fallback)
        return handler(info, *args)

    return dispatch


def event_json(event: SSEEvent) -> dict[str, Any] | None:
    """An event's data as a JSON object, or None."""
    doc = loads(event.data)
    return doc if isinstance(doc, dict) else None


def _no_output(info: RequestInfo, body: bytes, content_type: str = "") -> str:
    return ""


@dataclass(frozen=True, kw_only=True, eq=False)
class Provider:
    """An LLM provider: its proxy route, its settings, its wire formats.

    The configuration derives its settings from these fields (``base_url_setting`` with
    ``base_url`` as default, and ``analysis.key_setting``), so a provider module is the only
    place that names them. Compared and hashed by identity: each module builds one.
    """

    #: The route segment (``/anthropic/…``) and the ``ANALYSIS_PROVIDER`` value.
    name: str
    #: How operators call it in help texts and messages ("Anthropic").
    title: str
    #: The official API: where its routes go unless ``base_url_setting`` says otherwise.
    base_url: str
    #: The setting that points its routes elsewhere (``ANTHROPIC_BASE_URL``).
    base_url_setting: str
    #: How the credential the agent sends is found: (request headers, raw query) -> key.
    find_api_key: Callable[[Headers, bytes], bytes | None]
    #: The header named in the 401 answer when no credential is sent.
    key_header: str
    #: (path after the provider segment, raw query with its ``?``, body) -> RequestInfo.
    describe_request: RequestDescriber = _describe_nothing
    #: The tool names a described request offers the model (tool policies); pure.
    offered_tools: ToolLister = _no_tools
    #: SPEC §5.1 ``auto`` mode: a new body that exposes reasoning, or None to leave it.
    inject_thinking: ThinkingInjector = _inject_nothing
    #: SPEC §6.3: a new body with the integrity notice prepended to the system prompt.
    inject_nudge: NudgeInjector = _inject_nothing
    #: Thinking, tool calls and a text excerpt out of a (decoded) JSON or SSE body.
    extract_response: ResponseExtractor = _extract_nothing
    #: The visible output of a (decoded) JSON or SSE body, for output analysis (SPEC
    #: §6.2 ``without_reasoning: analyse_output``): see ``OutputBuilder``.
    output_block: OutputBlockWriter = _no_output
    #: Per API id, words that name the parameter ``inject_thinking`` adds, so a 400
    #: blaming it can be told apart (see ``injection_rejected``).
    injection_hints: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: How to call it as the analysis backend; None when it cannot be one.
    analysis: AnalysisAPI | None = None
    #: Held streams (enforce mode): one SSE event's class, ``REASONING``, ``NEUTRAL`` or
    #: ``OUTPUT`` (unknown events are output); pure, never raises.
    classify_stream_event: StreamClassifier = _everything_is_output
    #: The bytes of the provider's own error event, so the client's SDK raises.
    stream_error_event: StreamErrorWriter = generic_stream_error
    #: Bytes that keep a held stream's connection alive and every SDK of the API ignores.
    stream_keepalive: StreamKeepalive = comment_keepalive

    def injection_rejected(self, info: RequestInfo, status: int, body: bytes) -> bool:
        """Whether a 400 answer blames the parameter ``inject_thinking`` added."""
        return blames_injection(self.injection_hints.get(getattr(info, "api", None) or ""),
                                status, body)


# --------------------------------------------------------------------------
# Shared helpers for the provider modules.

_T = TypeVar("_T")


def never_raises(fallback: Callable[..., _T]) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Turn any exception into ``fallback(*args)``: adapters run on the proxy path."""

    def decorate(func: Callable[..., _T]) -> Callable[..., _T]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> _T:
            try:
                return func(*args, **kwargs)
            except Exception:
                return fallback(*args, **kwargs)

        return wrapper

    return decorate


def clean_text(text: str) -> str:
    """``text`` made safe to encode: JSON escapes can smuggle in lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def short_name(value: object) -> str | None:
    """A bounded, encodable identifier (model, tool or key name), or None."""
    if not isinstance(value, str) or not value:
        return None
    return clean_text(value[:MAX_NAME_CHARS])


def route_path(path: bytes) -> str:
    """The request path as text for matching: percent-decoded, no trailing slash."""
    return unquote(path.decode("latin-1"), errors="replace").rstrip("/")


def load_json_object(body: bytes) -> dict[str, Any] | None:
    """The request body as a JSON object, or None (non-JSON bodies are forwarded as is)."""
    if not body:
        return None
    value = loads(body, strict=True)
    return value if isinstance(value, dict) else None


def describe_json_api(api: str | None, body: bytes) -> RequestInfo:
    """RequestInfo for APIs that name the model and ``stream`` flag in a JSON body."""
    if api is None:
        return RequestInfo(None, None, False, None)
    json_body = load_json_object(body)
    if json_body is None:
        return RequestInfo(api, None, False, None)
    return RequestInfo(
        api, short_name(json_body.get("model")), json_body.get("stream") is True, json_body
    )


def model_name(model: str | None) -> str:
    """Lower-case model name without gateway prefixes (``openai/…``, ``models/…``, ``ft:``)."""
    name = (model or "").strip().lower().rsplit("/", 1)[-1]
    return name.removeprefix("ft:")


def prepend_text(notice: str, text: str) -> str:
    return f"{notice}\n\n{text}" if text else notice


def argument_keys(arguments: object) -> list[str]:
    """Top-level keys of tool arguments (a dict, or JSON text possibly cut short)."""
    if isinstance(arguments, str):
        value = loads(arguments)
        arguments = parse_partial(arguments) if value is MISSING else value
    if not isinstance(arguments, dict):
        return []
    keys: list[str] = []
    for key in arguments:
        name = short_name(key)
        if name is not None:
            keys.append(name)
        if len(keys) >= MAX_ARGUMENT_KEYS:
            break
    return keys


class ExtractionBuilder:
    """Collects one response's thinking blocks, text, tool calls and model."""

    def __init__(self, model: str | None) -> None:
        self.model = model
        self.redacted = False
        self._thinking: list[str] = []
        self._text: list[str] = []
        self._text_chars = 0
        self._tools: list[ToolCall] = []

    def thinking(self, text: object) -> None:
        """One readable thinking block; empty blocks do not count."""
        if isinstance(text, str) and text:
            self._thinking.append(text)

    def text(self, text: object) -> None:
        """One block of visible output; only the excerpt's worth is kept."""
        if not isinstance(text, str) or not text or self._text_chars >= TEXT_EXCERPT_CHARS:
            return
        if self._text:
            text = "\n" + text
        piece = text[: TEXT_EXCERPT_CHARS - self._text_chars]
        self._text.append(piece)
        self._text_chars += len(piece)

    def tool(self, name: object, arguments: object) -> None:
        tool_name = short_name(name)
        if tool_name is not None and len(self._tools) < MAX_TOOL_CALLS:
            self._tools.append(ToolCall(tool_name, argument_keys(arguments)))

    def set_model(self, model: object) -> None:
        """The model the response names wins over the one the request asked for."""
        name = short_name(model)
        if name is not None:
            self.model = name

    def build(self, complete: bool) -> Extraction:
        thinking = clean_text(THINKING_SEPARATOR.join(self._thinking)) if self._thinking else None
        return Extraction(
            thinking=thinking,
            thinking_blocks=len(self._thinking),
            redacted_thinking=self.redacted,
            tool_calls=list(self._tools),
            text_excerpt=clean_text("".join(self._text)),
            model=self.model,
            complete=complete,
        )


def compact_arguments(arguments: object) -> str:
    """Tool arguments as compact JSON, however they arrived: a dict, JSON text (streamed
    pieces joined), or nothing. Text that is not JSON (free-form tool input, or arguments
    cut short) is kept as it is."""
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        value = loads(arguments)
        if value is MISSING:
            return arguments
        arguments = value
    try:
        return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return str(arguments)


#: How a tool call appears in an output block.
TOOL_CALL_PREFIX = "[TOOL CALL]"


class OutputBuilder(ExtractionBuilder):
    """Collects what a response *does*, in response order, for output analysis.

    Each visible text block is kept whole, and each tool call becomes one line
    ``[TOOL CALL] <name> <arguments as compact JSON>``; the pieces are joined with
    ``"\n"``, as Mnemom's TypeScript AIP SDK joins text blocks, so a text-only response
    gives the same block (and ``output_block_hash``) there and here. Reasoning is not
    part of the output. The block goes to the analysis backend only: it is never
    stored or logged (a checkpoint keeps its SHA-256).
    """

    def __init__(self, model: str | None = None) -> None:
        super().__init__(model)
        self._pieces: list[str] = []

    def thinking(self, text: object) -> None:
        """Reasoning is analysed as such, never as output."""

    def text(self, text: object) -> None:
        if isinstance(text, str) and text:
            self._pieces.append(text)

    def tool(self, name: object, arguments: object) -> None:
        tool_name = short_name(name)
        if tool_name is not None:
            self._pieces.append(f"{TOOL_CALL_PREFIX} {tool_name} {compact_arguments(arguments)}")

    def block(self) -> str:
        return clean_text("\n".join(self._pieces))


class Accumulator:
    """Per-API reader of one response, fed stream elements or the whole JSON document.

    Subclasses set ``terminal`` when the stream's final event arrives and write what they
    found into ``self.out`` in ``finish``. ``cut`` is given for a document repaired after
    a truncation, to tell which of its objects may be missing later fields.
    """

    def __init__(self, out: ExtractionBuilder) -> None:
        self.out = out
        self.terminal = False

    def chunk(self, doc: dict[str, Any], event: str, cut: Parsed | None = None) -> None:
        """One streamed element (an SSE event's JSON, or a JSON-array element)."""

    def done(self) -> None:
        """The ``data: [DONE]`` sentinel."""
        self.terminal = True

    def whole(self, doc: dict[str, Any], cut: Parsed | None = None) -> None:
        """A non-streaming response document."""

    def finish(self) -> None:
        """End of input: hand everything collected to ``self.out``."""


def is_event_stream(content_type: str, body: bytes) -> bool:
    """SSE by content type, or, when the type says nothing useful, by the body's start."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "text/event-stream":
        return True
    if media.endswith("json"):
        return False
    return looks_like_sse(body)


def feed(
    accumulator: Callable[[ExtractionBuilder], Accumulator],
    out: ExtractionBuilder,
    content_type: str,
    body: bytes,
) -> bool | None:
    """Drive an API's accumulator over an SSE stream, a JSON array stream or a JSON body,
    writing into ``out``. Returns whether the response was complete (its terminal event,
    or an uncut document), or None when the body holds nothing readable."""
    acc = accumulator(out)
    if is_event_stream(content_type, body):
        events = parse_sse(body)
        if events:
            for event in events:
                data = event.data
                if data.strip() == "[DONE]":
                    acc.done()
                    continue
                doc, cut = loads(data), None
                if doc is MISSING and not event.terminated:
                    cut = parse_partial_document(data)
                    doc = cut.value
                if isinstance(doc, dict):
                    acc.chunk(doc, event.event, cut)
            acc.finish()
            return acc.terminal
    parsed = parse_document(body)
    cut = None if parsed.exact else parsed
    if isinstance(parsed.value, list):
        for element in parsed.value:
            if isinstance(element, dict):
                acc.chunk(element, "", cut)
    elif isinstance(parsed.value, dict):
        acc.whole(parsed.value, cut)
    else:
        return None
    acc.finish()
    return parsed.exact


def run_extraction(
    accumulator: Callable[[ExtractionBuilder], Accumulator],
    info: RequestInfo,
    content_type: str,
    body: bytes,
    truncated: bool,
) -> Extraction:
    """What analysis and tracing need from one response (see ``feed``)."""
    out = ExtractionBuilder(info.model)
    complete = feed(accumulator, out, content_type, body)
    if complete is None:
        return Extraction.empty(info.model)
    return out.build(complete=complete and not truncated)


def extractor(accumulators: dict[str, Callable[[ExtractionBuilder], Accumulator]]) -> Any:
    """A provider's ``extract_response``: picks the accumulator for ``info.api``."""

    def fallback(
        info: RequestInfo, content_type: str, body: bytes, truncated: bool
    ) -> Extraction:
        model = getattr(info, "model", None)
        return Extraction.empty(model if isinstance(model, str) else None)

    @never_raises(fallback)
    def extract_response(
        info: RequestInfo, content_type: str, body: bytes, truncated: bool
    ) -> Extraction:
        """Thinking, tool calls, text excerpt and model from a captured response body."""
        make = accumulators.get(info.api or "")
        if make is None:
            return Extraction.empty(info.model, complete=not truncated)
        return run_extraction(make, info, content_type, body, truncated)

    return extract_response


def output_writer(accumulators: dict[str, Callable[[ExtractionBuilder], Accumulator]]) -> Any:
    """A provider's ``output_block``: the ``OutputBuilder`` block of a captured body, by
    the accumulator for ``info.api``; empty for an API it does not know.

    ``content_type`` may be left out: an SSE body is then told by its first bytes.
    """

    @never_raises(lambda *args, **kwargs: "")
    def output_block(info: RequestInfo, body: bytes, content_type: str = "") -> str:
        """Text blocks and ``[TOOL CALL]`` lines of a response body, in order."""
        make = accumulators.get(info.api or "")
        if make is None:
            return ""
        out = OutputBuilder(info.model)
        feed(make, out, content_type, body)
        return out.block()

    return output_block


def _decline(*args: Any, **kwargs: Any) -> None:
    return None


def injector(
    handlers: dict[str, Callable[..., dict[str, Any] | None]],
) -> Callable[..., dict[str, Any] | None]:
    """A provider's ``inject_*``: picks the handler for ``info.api``; None when unknown."""

    @never_raises(_decline)
    def inject(info: RequestInfo, body: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        handler = handlers.get(info.api or "")
        if handler is None or not isinstance(body, dict):
            return None
        return handler(info, body, *args, **kwargs)

    return inject


# --------------------------------------------------------------------------
# Content-Encoding.


def _inflate(data: bytes, wbits: int, limit: int) -> bytes | None:
    """Inflate possibly truncated, possibly multi-member data; None when corrupt."""
    out: list[bytes] = []
    size = 0
    try:
        while data and size < limit:
            inflater = zlib.decompressobj(wbits)
            chunk = inflater.decompress(data, limit - size)
            out.append(chunk)
            size += len(chunk)
            if not inflater.eof:
                break  # truncated input (or output limit reached): keep what we have
            data = inflater.unused_data
    except zlib.error:
        return None
    return b"".join(out)


def decode_body(
    raw: bytes, content_encoding: str | None, *, limit: int = MAX_DECODED_BYTES
) -> bytes | None:
    """The body without its Content-Encoding, or None when it cannot be decoded (``br``…).

    gzip and deflate (zlib-wrapped or raw, as servers disagree) are inflated, stopping
    quietly where a capped capture ends and never producing more than ``limit`` bytes.
    """
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    data = raw
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            decoded = _inflate(data, 16 + zlib.MAX_WBITS, limit)
        elif coding == "deflate":
            decoded = _inflate(data, zlib.MAX_WBITS, limit)
            if decoded is None:
                decoded = _inflate(data, -zlib.MAX_WBITS, limit)
        else:
            return None
        if decoded is None:
            return None
        data = decoded
    return data


# --------------------------------------------------------------------------
# Upstream refusals of an injected parameter.


def blames_injection(hints: tuple[str, ...] | None, status: int, body: bytes) -> bool:
    """Whether a 400 answer's error names one of ``hints``, the injected parameter's words.

    The injection rules are conservative but upstreams can still refuse (OpenAI answers 400
    to ``reasoning.summary`` for organisations that are not verified); the proxy can then
    resend the client's original body, so injection never costs the client a call.
    """
    if status != 400 or not hints or not isinstance(body, bytes | bytearray):
        return False
    doc = loads(decode_text(bytes(body[:65536])))
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return False
    words = " ".join(
        json.dumps(error.get(name)) for name in ("message", "param") if name in error
    ).lower()
    return any(hint in words for hint in hints)


# --------------------------------------------------------------------------
# The tools a request offers (tool policies).


def tool_label(value: object) -> str:
    """A tool name as policies see it: the string itself; anything else as JSON text."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True)[:MAX_NAME_CHARS]
    except (TypeError, ValueError):
        return type(value).__name__


class ToolNames:
    """Collects offered tool names up to ``MAX_OFFERED_TOOLS``."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.overflow = False

    def add(self, value: object) -> None:
        if len(self.names) >= MAX_OFFERED_TOOLS:
            self.overflow = True
            return
        self.names.append(tool_label(value))

    def result(self) -> OfferedTools:
        return OfferedTools(tuple(self.names), self.overflow)


def listed(body: Mapping[str, Any], key: str) -> list[Any]:
    """``body[key]`` when it is a list; a single object is a list of one (lenient upstream
    parsers accept both); anything else is none."""
    value = body.get(key)
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, dict) else []


def named_or_typed_tools(body: Mapping[str, Any]) -> ToolNames:
    """``tools[]`` by ``name``, else by ``type`` (built-in and server tools), else as
    given (the Messages and Responses APIs)."""
    out = ToolNames()
    for tool in listed(body, "tools"):
        if isinstance(tool, dict) and "name" in tool:
            out.add(tool["name"])
        elif isinstance(tool, dict) and "type" in tool:
            out.add(tool["type"])
        else:
            out.add(tool)
    return out


def anthropic_tools(body: Mapping[str, Any]) -> OfferedTools:
    """Messages API: ``tools[].name`` (server tools by ``name``, else ``type``), and the
    tool ``tool_choice`` names."""
    out = named_or_typed_tools(body)
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and "name" in choice:
        out.add(choice["name"])
    return out.result()


def chat_tools(body: Mapping[str, Any]) -> OfferedTools:
    """Chat Completions: ``tools[].function.name`` (``custom.name``, else the type), the
    older ``functions[].name``, and names in ``tool_choice`` / ``function_call``."""
    out = ToolNames()
    for tool in listed(body, "tools"):
        if not isinstance(tool, dict):
            out.add(tool)
            continue
        inner = tool.get("function") if isinstance(tool.get("function"), dict) else \
            tool.get("custom") if isinstance(tool.get("custom"), dict) else None
        if inner is not None and "name" in inner:
            out.add(inner["name"])
        elif "name" in tool:
            out.add(tool["name"])
        else:
            out.add(tool.get("type", tool))
    for function in listed(body, "functions"):
        out.add(function.get("name", function) if isinstance(function, dict) else function)
    for key in ("tool_choice", "function_call"):
        choice = body.get(key)
        if isinstance(choice, dict):
            inner = choice.get("function") if isinstance(choice.get("function"), dict) \
                else choice.get("custom") if isinstance(choice.get("custom"), dict) else choice
            if "name" in inner:
                out.add(inner["name"])
    return out.result()


def responses_tools(body: Mapping[str, Any]) -> OfferedTools:
    """Responses: ``tools[].name`` (function and custom tools), built-in tools by their
    ``type`` (``web_search``, ``file_search``, ``mcp``…), and what ``tool_choice`` names."""
    out = named_or_typed_tools(body)
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if "name" in choice:
            out.add(choice["name"])
        elif choice.get("type") not in (None, "function", "custom", "allowed_tools"):
            out.add(choice["type"])
        for allowed in listed(choice, "tools"):
            if isinstance(allowed, dict):
                out.add(allowed.get("name", allowed.get("type", allowed)))
    return out.result()


#: Gemini's built-in tools, by either spelling of their key.
_GEMINI_BUILTINS = {"googleSearch": "google_search", "google_search": "google_search",
                    "googleSearchRetrieval": "google_search_retrieval",
                    "google_search_retrieval": "google_search_retrieval",
                    "codeExecution": "code_execution", "code_execution": "code_execution",
                    "urlContext": "url_context", "url_context": "url_context",
                    "computerUse": "computer_use", "computer_use": "computer_use",
                    "fileSearch": "file_search", "file_search": "file_search",
                    "googleMaps": "google_maps", "google_maps": "google_maps"}


def gemini_tools(body: Mapping[str, Any]) -> OfferedTools:
    """generateContent: ``tools[].functionDeclarations[].name`` under either spelling the
    API accepts (``function_declarations``), built-in tools by name, and the names
    ``toolConfig.functionCallingConfig.allowedFunctionNames`` allows."""
    out = ToolNames()
    for tool in listed(body, "tools"):
        if not isinstance(tool, dict):
            out.add(tool)
            continue
        for key in tool:
            if key in ("functionDeclarations", "function_declarations"):
                for declaration in listed(tool, key):
                    out.add(declaration.get("name", declaration)
                            if isinstance(declaration, dict) else declaration)
            elif key in _GEMINI_BUILTINS:
                out.add(_GEMINI_BUILTINS[key])
            else:
                out.add(key)
    for config_key in ("toolConfig", "tool_config"):
        config = body.get(config_key)
        if not isinstance(config, dict):
            continue
        for calling_key in ("functionCallingConfig", "function_calling_config"):
            calling = config.get(calling_key)
            if not isinstance(calling, dict):
                continue
            for names_key in ("allowedFunctionNames", "allowed_function_names"):
                for name in listed(calling, names_key) if isinstance(
                        calling.get(names_key), list) else []:
                    out.add(name)
    return out.result()

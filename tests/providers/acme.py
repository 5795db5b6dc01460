"""Acme, a made-up LLM provider: everything the gateway needs to know about it, in one module.

It exists to show that adding a provider takes one module and a registration
(``tests/providers/test_registry.py``). Its wire format is its own:

- ``POST {base}/v1/generate`` with the key in ``x-acme-key``; the body names ``model``,
  ``system``, ``prompt``, ``stream`` and, to show its reasoning, ``show_reasoning: true``.
- JSON answer: ``{"model", "reasoning", "output", "calls": [{"tool", "args"}]}``.
- Streamed answer: SSE events ``reasoning`` and ``output`` carrying ``{"text": …}``, ``call``
  carrying ``{"tool", "args"}``, and a final ``done`` carrying ``{"model": …}``. A stream
  that fails says so with an ``error`` event carrying ``{"error": {"type", "message"}}``.

Registered with ``PROVIDERS.including(PROVIDER)`` and handed to ``make_service``, it is
served by the daemon itself (``tests/inprocess/test_fourth_provider.py``).
"""

from __future__ import annotations

from typing import Any

from twisted.web.http_headers import Headers

from mnemomd.providers.analysis import (
    AnalysisAPI,
    AnalysisCall,
    AnalysisTarget,
    model_text,
    versioned_url,
)
from mnemomd.providers.base import (
    OUTPUT,
    REASONING,
    Accumulator,
    ExtractionBuilder,
    Provider,
    RequestInfo,
    StreamError,
    StreamState,
    describe_json_api,
    extractor,
    first_header,
    injector,
    never_raises,
    prepend_text,
    route_path,
    sse_event,
    stream_dispatch,
)
from mnemomd.providers.jsonutil import Parsed
from mnemomd.providers.sse import SSEEvent

BASE_URL = "https://api.acme.test"
ACME_GENERATE = "acme.generate"


def find_api_key(headers: Headers, query: bytes) -> bytes | None:
    key = first_header(headers, b"x-acme-key")
    return key.strip() if key is not None and key.strip() else None


@never_raises(lambda *args: RequestInfo(None, None, False, None))
def describe_request(path: bytes, query: bytes, body: bytes) -> RequestInfo:
    """``…/generate`` is analysed; everything else is only forwarded."""
    api = ACME_GENERATE if route_path(path).endswith("/generate") else None
    return describe_json_api(api, body)


def _inject_thinking(info: RequestInfo, body: dict[str, Any],
                     budget_tokens: int = 1024) -> dict[str, Any] | None:
    if "show_reasoning" in body:
        return None
    return {**body, "show_reasoning": True}


def _inject_nudge(info: RequestInfo, body: dict[str, Any],
                  notice: str) -> dict[str, Any] | None:
    system = body.get("system")
    if system is None:
        return {**body, "system": notice}
    if isinstance(system, str):
        return {**body, "system": prepend_text(notice, system)}
    return None


class GenerateAccumulator(Accumulator):
    """The whole answer, or the ``reasoning`` / ``output`` / ``call`` / ``done`` events."""

    def __init__(self, out: ExtractionBuilder) -> None:
        super().__init__(out)
        self._reasoning: list[str] = []
        self._output: list[str] = []

    def whole(self, doc: dict[str, Any], cut: Parsed | None = None) -> None:
        self.out.set_model(doc.get("model"))
        self.out.thinking(doc.get("reasoning"))
        self.out.text(doc.get("output"))
        calls = doc.get("calls")
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                self.out.tool(call.get("tool"), call.get("args"))

    def chunk(self, doc: dict[str, Any], event: str, cut: Parsed | None = None) -> None:
        text = doc.get("text")
        if event == "reasoning" and isinstance(text, str):
            self._reasoning.append(text)
        elif event == "output" and isinstance(text, str):
            self._output.append(text)
        elif event == "call":
            self.out.tool(doc.get("tool"), doc.get("args"))
        elif event == "done":
            self.out.set_model(doc.get("model"))
            self.terminal = True

    def finish(self) -> None:
        self.out.thinking("".join(self._reasoning))
        self.out.text("".join(self._output))


def classify_generate_event(info: RequestInfo, event: SSEEvent) -> str:
    """``reasoning`` events are reasoning; ``output``, ``call``, ``done`` and anything
    unknown are output, where an enforced stream is held for its verdict."""
    return REASONING if event.event == "reasoning" else OUTPUT


def generate_error_event(info: RequestInfo, error: StreamError, state: StreamState) -> bytes:
    """Acme's own ``error`` event, so Acme's client raises with the gateway's fields."""
    return sse_event("error", {"error": {"type": error.type, "message": error.message,
                                         **error.fields()}})


classify_stream_event = stream_dispatch({ACME_GENERATE: classify_generate_event},
                                        lambda *args: OUTPUT)
stream_error_event = stream_dispatch({ACME_GENERATE: generate_error_event},
                                     generate_error_event)


def analysis_request(target: AnalysisTarget, system: str, user: str,
                     max_tokens: int) -> AnalysisCall:
    url = versioned_url(target.endpoint, ("/v1",), "/generate")
    body = {"model": target.model, "system": system, "prompt": user, "max_output": max_tokens}
    return AnalysisCall(url, {"x-acme-key": target.api_key or ""}, body)


def analysis_answer(answer: Any) -> str:
    """``output``; the analysis model's own ``reasoning`` is not the verdict."""
    return model_text(answer["output"])


ANALYSIS = AnalysisAPI(
    name="acme",
    build_request=analysis_request,
    parse_answer=analysis_answer,
    official_base_url=BASE_URL,
    key_setting="ACME_API_KEY",
)

PROVIDER = Provider(
    name="acme",
    title="Acme",
    base_url=BASE_URL,
    base_url_setting="ACME_BASE_URL",
    find_api_key=find_api_key,
    key_header="x-acme-key",
    describe_request=describe_request,
    inject_thinking=injector({ACME_GENERATE: _inject_thinking}),
    inject_nudge=injector({ACME_GENERATE: _inject_nudge}),
    extract_response=extractor({ACME_GENERATE: GenerateAccumulator}),
    injection_hints={ACME_GENERATE: ("show_reasoning",)},
    analysis=ANALYSIS,
    classify_stream_event=classify_stream_event,
    stream_error_event=stream_error_event,
)

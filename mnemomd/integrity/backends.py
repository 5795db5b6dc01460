"""Analysis backends: one small class per API, each turning (system, user) into text.

Every call goes through the shared outbound HTTP layer (``mnemomd.http.client``: a
persistent connection pool of its own, TLS verified by Twisted's browser-like policy), is
bounded in time on an injected clock and in size by a byte limit, and fails with a typed
:class:`AnalysisFailure` whose ``reason`` is a short code fit for a metric label. API keys
travel only in request headers: never in URLs, log events or exception messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from mnemomd import __version__
from mnemomd.config.analysis import AnalysisSettings
from mnemomd.http.client import ClientSettings, HTTPClient, Reply, is_success
from mnemomd.http.errors import failure_reason as outbound_reason

USER_AGENT = f"mnemomd/{__version__} (integrity analysis)".encode()
ANTHROPIC_VERSION = "2023-06-01"


class AnalysisFailure(Exception):
    """An analysis call that produced no usable text.

    ``reason`` is one of ``timeout``, ``unreachable``, ``tls``, ``http_<status>``,
    ``oversize``, ``malformed``, ``no_api_key``, ``circuit_open``, ``cancelled``,
    ``internal``. The message is the reason only, so it can never carry a key, a
    prompt or the analysis model's output.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AnalysisBackend(Protocol):
    """What the engine needs from a backend."""

    name: str
    model: str

    def complete(self, system: str, user: str, max_tokens: int) -> Deferred[str]:
        """The analysis model's text for this prompt, or an ``AnalysisFailure``."""
        ...


def failure_reason(failure: Failure) -> str:
    """The reason code for any failure of an analysis call."""
    if failure.check(AnalysisFailure):
        return str(failure.value.reason)
    reason = outbound_reason(failure)
    # Analysis URLs are validated with the settings: one that cannot be sent is ours.
    return "internal" if reason == "bad_url" else reason


class AnalysisHTTP:
    """POSTs JSON to analysis endpoints through the shared outbound layer.

    The analysis calls have their own pool, so they never wait behind the proxy's
    connections; ``clock`` bounds each call in time (a ``task.Clock`` in tests).
    """

    def __init__(self, reactor: IReactorTCP, clock: IReactorTime | None = None,
                 max_response_bytes: int = 1024 * 1024, max_per_host: int = 8,
                 idle_seconds: int = 30, connect_timeout: float = 10.0) -> None:
        self._limit = max_response_bytes
        self._client = HTTPClient(reactor, clock, ClientSettings(
            max_per_host=max_per_host, idle_seconds=idle_seconds,
            connect_timeout=connect_timeout))

    def post_json(self, url: str, headers: Mapping[str, str], body: Mapping[str, Any],
                  timeout: float) -> Deferred[Any]:
        """The decoded JSON of a 2xx answer, or an ``AnalysisFailure``."""
        try:
            request_headers = Headers({b"content-type": [b"application/json"],
                                       b"accept": [b"application/json"],
                                       b"user-agent": [USER_AGENT]})
            for name, value in headers.items():
                request_headers.setRawHeaders(name.encode("ascii"), [value.encode("latin-1")])
            payload = json.dumps(body).encode("ascii")
        except Exception:
            return fail(AnalysisFailure("internal"))
        # Only a 2xx body is kept: any other answer is its status, whatever it says.
        d = self._client.exchange(b"POST", url, request_headers, payload, timeout=timeout,
                                  max_body=self._limit, keep_body=is_success)
        return d.addCallbacks(_answer, _typed)

    def close(self) -> Deferred[None]:
        """Close the pooled connections (at shutdown, and in tests)."""
        return self._client.close()


def _answer(reply: Reply) -> Any:
    if not is_success(reply.code):
        raise AnalysisFailure(f"http_{reply.code}")
    return _decode_json(reply.body)


def _typed(failure: Failure) -> Failure:
    return Failure(AnalysisFailure(failure_reason(failure)))


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise AnalysisFailure("malformed") from None


def _text(value: Any) -> str:
    """The model text, or a malformed-output failure if there is none."""
    if not isinstance(value, str) or not value.strip():
        raise AnalysisFailure("malformed")
    return value


def _join_parts(parts: Any, kind_key: str | None = None, kind: str | None = None,
                skip_key: str | None = None) -> str:
    if not isinstance(parts, list):
        raise AnalysisFailure("malformed")
    texts = []
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            continue
        if kind_key is not None and part.get(kind_key) != kind:
            continue
        if skip_key is not None and part.get(skip_key):
            continue
        texts.append(part["text"])
    return _text("".join(texts))


def _path_join(base: str, versioned: tuple[str, ...], rest: str) -> str:
    """``base`` + ``rest``, adding the API version prefix unless ``base`` already has one."""
    path = urlsplit(base).path.rstrip("/")
    if path.endswith(versioned):
        return f"{base.rstrip('/')}{rest}"
    return f"{base.rstrip('/')}{versioned[0]}{rest}"


class _Backend:
    """Common parts: the HTTP client, the endpoint, the key and the timeout."""

    name = "backend"
    needs_key = True

    def __init__(self, http: AnalysisHTTP, settings: AnalysisSettings) -> None:
        self._http = http
        self.model = settings.model
        self._endpoint = settings.endpoint() or ""
        self._api_key = settings.api_key
        self._timeout = settings.timeout

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._endpoint} model={self.model}>"

    def complete(self, system: str, user: str, max_tokens: int) -> Deferred[str]:
        """The analysis model's text, or an ``AnalysisFailure``."""
        if self.needs_key and not self._api_key:
            return fail(AnalysisFailure("no_api_key"))
        try:
            url, headers, body = self._request(system, user, max_tokens)
        except Exception:
            return fail(AnalysisFailure("internal"))
        d = self._http.post_json(url, headers, body, self._timeout)
        d.addCallback(self._parse_json)
        return d

    def _parse_json(self, data: Any) -> str:
        try:
            return self._extract(data)
        except AnalysisFailure:
            raise
        except Exception:
            raise AnalysisFailure("malformed") from None

    def _request(self, system: str, user: str,
                 max_tokens: int) -> tuple[str, dict[str, str], dict[str, Any]]:
        raise NotImplementedError

    def _extract(self, data: Any) -> str:
        raise NotImplementedError


class AnthropicBackend(_Backend):
    """Anthropic Messages API: ``POST {base}/v1/messages`` with ``x-api-key``."""

    name = "anthropic"

    def _request(self, system: str, user: str,
                 max_tokens: int) -> tuple[str, dict[str, str], dict[str, Any]]:
        url = _path_join(self._endpoint, ("/v1",), "/messages")
        headers = {"x-api-key": self._api_key or "", "anthropic-version": ANTHROPIC_VERSION}
        body = {"model": self.model, "max_tokens": max_tokens, "system": system,
                "messages": [{"role": "user", "content": user}]}
        return url, headers, body

    def _extract(self, data: Any) -> str:
        return _join_parts(data["content"], kind_key="type", kind="text")


class OpenAIBackend(_Backend):
    """OpenAI Chat Completions: ``POST {base}/v1/chat/completions`` with a Bearer key.

    Also serves ``openai-compatible`` servers (vLLM, Ollama, llama.cpp), where the key
    is optional and the widely supported ``max_tokens`` is sent instead of OpenAI's
    ``max_completion_tokens`` (which its reasoning models require).
    """

    name = "openai"

    def __init__(self, http: AnalysisHTTP, settings: AnalysisSettings) -> None:
        super().__init__(http, settings)
        self._compatible = settings.provider == "openai-compatible"
        self.name = settings.provider
        self.needs_key = not self._compatible

    def _request(self, system: str, user: str,
                 max_tokens: int) -> tuple[str, dict[str, str], dict[str, Any]]:
        url = _path_join(self._endpoint, ("/v1",), "/chat/completions")
        headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        body: dict[str, Any] = {"model": self.model,
                                "messages": [{"role": "system", "content": system},
                                             {"role": "user", "content": user}]}
        body["max_tokens" if self._compatible else "max_completion_tokens"] = max_tokens
        return url, headers, body

    def _extract(self, data: Any) -> str:
        content = data["choices"][0]["message"]["content"]
        if isinstance(content, list):
            return _join_parts(content)
        return _text(content)


class GeminiBackend(_Backend):
    """Gemini ``generateContent``: model in the URL, ``x-goog-api-key``, system instruction."""

    name = "gemini"

    def _request(self, system: str, user: str,
                 max_tokens: int) -> tuple[str, dict[str, str], dict[str, Any]]:
        model = self.model.removeprefix("models/")
        url = _path_join(self._endpoint, ("/v1beta", "/v1"),
                         f"/models/{quote(model, safe='-._')}:generateContent")
        headers = {"x-goog-api-key": self._api_key or ""}
        body = {"systemInstruction": {"parts": [{"text": system}]},
                "contents": [{"role": "user", "parts": [{"text": user}]}],
                "generationConfig": {"maxOutputTokens": max_tokens,
                                     "responseMimeType": "application/json"}}
        return url, headers, body

    def _extract(self, data: Any) -> str:
        return _join_parts(data["candidates"][0]["content"]["parts"], skip_key="thought")


class MnemomBackend(_Backend):
    """The hosted Mnemom analysis service (hybrid mode).

    Contract. Request: ``POST MNEMOM_ANALYZE_URL`` with ``Authorization: Bearer
    MNEMOM_API_KEY`` and ``Content-Type: application/json``, body
    ``{"system": <conscience system prompt>, "user": <conscience user prompt>,
    "max_tokens": <int>}``. Response: 2xx with either ``{"text": <the analysis model's
    output>}`` or the verdict object itself (``{"verdict": …, "concerns": […], …}``, as
    the conscience prompt asks for). Anything else is malformed; non-2xx is a failure.
    """

    name = "mnemom"

    def _request(self, system: str, user: str,
                 max_tokens: int) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = {"authorization": f"Bearer {self._api_key}"}
        return self._endpoint, headers, {"system": system, "user": user,
                                         "max_tokens": max_tokens}

    def _extract(self, data: Any) -> str:
        if isinstance(data, dict) and isinstance(data.get("text"), str):
            return _text(data["text"])
        if isinstance(data, dict) and "verdict" in data:
            return json.dumps(data)
        raise AnalysisFailure("malformed")


BACKENDS: Mapping[str, type[_Backend]] = {
    "anthropic": AnthropicBackend,
    "openai": OpenAIBackend,
    "openai-compatible": OpenAIBackend,
    "gemini": GeminiBackend,
    "mnemom": MnemomBackend,
}


def build_backend(settings: AnalysisSettings, http: AnalysisHTTP) -> AnalysisBackend:
    """The backend ``settings.provider`` names, talking through ``http``."""
    return BACKENDS[settings.provider](http, settings)

"""Analysis backends: one small class per API, each turning (system, user) into text.

Every call goes through the Twisted HTTP client on the reactor (a persistent connection
pool, TLS verified by Twisted's browser-like policy), is bounded in time by ``addTimeout``
on an injected clock and in size by a byte limit, and fails with a typed
:class:`AnalysisFailure` whose ``reason`` is a short code fit for a metric label. API keys
travel only in request headers: never in URLs, log events or exception messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import (
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    DNSLookupError,
    TimeoutError,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseDone,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from mnemomd import __version__
from mnemomd.config.analysis import AnalysisSettings
from mnemomd.http.client import BytesProducer

USER_AGENT = f"mnemomd/{__version__} (integrity analysis)".encode()
ANTHROPIC_VERSION = "2023-06-01"

#: The network failures that mean "could not talk to the backend".
_UNREACHABLE = (ConnectError, DNSLookupError, ConnectionLost, ConnectionClosed,
                ResponseNeverReceived, RequestNotSent, RequestTransmissionFailed,
                ResponseFailed)


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


class _BoundedBody(TwistedProtocol):
    """Collects a response body, giving up (and closing the connection) past a limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.deferred: Deferred[bytes] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.deferred.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._chunks.clear()
            self.deferred.errback(AnalysisFailure("oversize"))
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]  # noqa: N802
        if self.deferred.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            # A close-delimited body may be complete; JSON parsing tells if it is not.
            self.deferred.callback(b"".join(self._chunks))
        else:
            self.deferred.errback(reason)


class _Discard(TwistedProtocol):
    """Refuses a body known to be too large by closing the connection at once."""

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.stopProducing()  # type: ignore[union-attr]


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" log line per analysis connection


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory


def _timed_out(result: Any, timeout: float) -> None:
    raise AnalysisFailure("timeout")


def _is_tls_error(failure: Failure) -> bool:
    reasons = getattr(failure.value, "reasons", None) or [failure]
    for reason in reasons:
        module = type(reason.value).__module__
        if module.startswith(("OpenSSL", "ssl")):
            return True
    return False


def failure_reason(failure: Failure) -> str:
    """The reason code for any failure of an analysis call."""
    if failure.check(AnalysisFailure):
        return str(failure.value.reason)
    if failure.check(TimeoutError):
        return "timeout"
    if failure.check(CancelledError):
        return "cancelled"
    if _is_tls_error(failure):
        return "tls"
    if failure.check(*_UNREACHABLE):
        return "unreachable"
    return "internal"


class AnalysisHTTP:
    """POSTs JSON to analysis endpoints over a shared persistent connection pool."""

    def __init__(self, reactor: Any, clock: IReactorTime | None = None,
                 max_response_bytes: int = 1024 * 1024, max_per_host: int = 8,
                 idle_seconds: int = 30, connect_timeout: float = 10.0) -> None:
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._limit = max_response_bytes
        self.pool = _QuietPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_per_host
        self.pool.cachedConnectionTimeout = idle_seconds
        self._agent = Agent(reactor, pool=self.pool, connectTimeout=connect_timeout)

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
            d = self._agent.request(b"POST", url.encode("ascii"), request_headers,
                                    BytesProducer(payload))
        except Exception:
            return fail(AnalysisFailure("internal"))
        d.addCallback(self._read)
        d.addTimeout(timeout, self._clock, onTimeoutCancel=_timed_out)
        d.addErrback(self._typed)
        return d

    def _read(self, response: IResponse) -> Deferred[Any]:
        ok = 200 <= response.code < 300
        if ok and response.length is not UNKNOWN_LENGTH and response.length > self._limit:
            response.deliverBody(_Discard())
            raise AnalysisFailure("oversize")
        reader = _BoundedBody(self._limit)
        response.deliverBody(reader)
        if not ok:
            status = f"http_{response.code}"

            def status_failure(_: Any) -> None:
                raise AnalysisFailure(status)
            reader.deferred.addBoth(status_failure)
            return reader.deferred
        reader.deferred.addCallback(_decode_json)
        return reader.deferred

    @staticmethod
    def _typed(failure: Failure) -> Failure:
        if failure.check(AnalysisFailure):
            return failure
        return Failure(AnalysisFailure(failure_reason(failure)))

    def close(self) -> Deferred[None]:
        """Close the pooled connections (at shutdown, and in tests)."""
        return self.pool.closeCachedConnections()


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

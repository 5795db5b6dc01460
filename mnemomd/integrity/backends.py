"""Analysis backends: an analysis API of ``mnemomd.providers`` over an HTTP client.

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

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from mnemomd import __version__
from mnemomd.config.analysis import AnalysisSettings
from mnemomd.http.client import ClientSettings, HTTPClient, Reply, is_success
from mnemomd.http.errors import failure_reason as outbound_reason
from mnemomd.providers import PROVIDERS, ProviderRegistry, mnemom
from mnemomd.providers.analysis import AnalysisAPI, AnalysisTarget

USER_AGENT = f"mnemomd/{__version__} (integrity analysis)".encode()


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
                 max_response_bytes: int = 1024 * 1024, max_per_host: int = 64,
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


class APIBackend:
    """An analysis API (its wire format from ``mnemomd.providers``) over ``AnalysisHTTP``.

    The provider module builds the request and finds the text in the answer; this class
    adds what every backend shares: the key check, the timeout, and turning anything the
    provider's code raises into a reason code.
    """

    def __init__(self, http: AnalysisHTTP, api: AnalysisAPI, target: AnalysisTarget,
                 timeout: float) -> None:
        self._http = http
        self._api = api
        self._target = target
        self._timeout = timeout
        self.name = api.name
        self.model = target.model

    def __repr__(self) -> str:
        return f"<APIBackend {self.name} {self._target.endpoint} model={self.model}>"

    def complete(self, system: str, user: str, max_tokens: int) -> Deferred[str]:
        """The analysis model's text, or an ``AnalysisFailure``."""
        if self._api.key_rule != "optional" and not self._target.api_key:
            return fail(AnalysisFailure("no_api_key"))
        try:
            call = self._api.build_request(self._target, system, user, max_tokens)
        except Exception:
            return fail(AnalysisFailure("internal"))
        d = self._http.post_json(call.url, call.headers, call.body, self._timeout)
        d.addCallback(self._parse)
        return d

    def _parse(self, answer: Any) -> str:
        try:
            text = self._api.parse_answer(answer)
        except Exception:
            raise AnalysisFailure("malformed") from None
        if not isinstance(text, str) or not text.strip():
            raise AnalysisFailure("malformed")
        return text


class HybridBackend:
    """Mnemom's analyze API (``mnemomd.providers.mnemom``): the thinking block and the
    card go out, a checkpoint comes back; no prompt is ever built for it."""

    def __init__(self, http: AnalysisHTTP, api: AnalysisAPI, target: AnalysisTarget,
                 timeout: float) -> None:
        self._http = http
        self._target = target
        self._timeout = timeout
        self.name = api.name
        self.model = "mnemom"

    def __repr__(self) -> str:
        return f"<HybridBackend {self.name} {self._target.endpoint}>"

    def complete(self, system: str, user: str, max_tokens: int) -> Deferred[str]:
        """Never used: the service takes no prompt."""
        return fail(AnalysisFailure("internal"))

    def checkpoint(self, body: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        """The service's checkpoint for ``body`` (``mnemom.analyze_body``), as
        ``mnemom.checkpoint_of`` keeps it, or an ``AnalysisFailure``."""
        if not self._target.api_key:
            return fail(AnalysisFailure("no_api_key"))
        call = mnemom.analyze_call(self._target, body)
        d = self._http.post_json(call.url, call.headers, call.body, self._timeout)
        d.addCallback(self._parse)
        return d

    @staticmethod
    def _parse(answer: Any) -> dict[str, Any]:
        try:
            return mnemom.checkpoint_of(answer)
        except Exception:
            raise AnalysisFailure("malformed") from None


def build_backend(settings: AnalysisSettings, http: AnalysisHTTP,
                  providers: ProviderRegistry = PROVIDERS) -> AnalysisBackend:
    """The backend ``settings.provider`` names in ``providers``, talking through ``http``."""
    api = providers.analysis[settings.provider]
    if api.hybrid:
        return HybridBackend(http, api, settings.target(providers), settings.timeout)
    return APIBackend(http, api, settings.target(providers), settings.timeout)

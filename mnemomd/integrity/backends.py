"""Analysis backends: an analysis API of ``mnemomd.providers`` over an HTTP client.

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
from mnemomd.providers import PROVIDERS, ProviderRegistry
from mnemomd.providers.analysis import AnalysisAPI, AnalysisTarget

USER_AGENT = f"mnemomd/{__version__} (integrity analysis)".encode()

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


def build_backend(settings: AnalysisSettings, http: AnalysisHTTP,
                  providers: ProviderRegistry = PROVIDERS) -> AnalysisBackend:
    """The backend ``settings.provider`` names in ``providers``, talking through ``http``."""
    return APIBackend(http, providers.analysis[settings.provider], settings.target(providers),
                      settings.timeout)

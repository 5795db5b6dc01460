"""The Twisted side of the management API: authenticate, route, validate, answer.

The gateway hands every ``/v1`` request here. Decisions are made by the pure functions
of ``auth`` and ``routes``; this layer only reads the request, runs the handler's
Deferred and writes JSON. The Authorization header is never logged, at any level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd.api.auth import (
    INDIRECT_HEADERS,
    ApiCredentials,
    AuthRefused,
    Principal,
    authenticate,
    authenticate_public,
    bearer_token,
    for_identity_provider,
)
from mnemomd.api.handlers import ApiCall, HandlerResult
from mnemomd.api.routes import (
    PUBLIC,
    ApiError,
    match,
    match_public,
    parse_body,
    parse_query,
)
from mnemomd.http.server import GatewayRequest
from mnemomd.ops.metrics import GatewayMetrics

log = Logger()

#: Writes a JSON answer: ``http.server.send_json``.
SendJSON = Callable[[GatewayRequest, int, dict[str, Any], list[tuple[bytes, bytes]]], None]


class TokenVerifier(Protocol):
    """Names the caller behind an identity provider's token (``api.oidc.OidcVerifier``)."""

    def principal(self, token: str) -> Deferred[Principal]: ...


class Dispatcher(Protocol):
    """Runs the operation a matched route names (``api.handlers.ApiHandlers``)."""

    def dispatch(self, call: ApiCall) -> HandlerResult: ...


def peer_host(request: GatewayRequest) -> str | None:
    """The client's IP address; None for a Unix socket peer (local by definition)."""
    address = request.getClientAddress()
    return getattr(address, "host", None)


def indirect(request: GatewayRequest) -> bool:
    """Whether a proxy relayed the request or a browser sent it (``INDIRECT_HEADERS``)."""
    return any(request.getHeader(name) is not None for name in INDIRECT_HEADERS)


class ManagementApi:
    """Serves ``/v1/…`` for the gateway (roles ``all`` and ``gateway``)."""

    def __init__(self, clock: IReactorTime, credentials: ApiCredentials,
                 handlers: Dispatcher, send_json: SendJSON, metrics: GatewayMetrics,
                 oidc: TokenVerifier | None = None) -> None:
        self._clock = clock
        self._credentials = credentials
        self._oidc = oidc
        self._handlers = handlers
        self._send_json = send_json
        self._metrics = metrics

    def handle(self, request: GatewayRequest, path: bytes, query: bytes) -> Deferred[None]:
        started = self._clock.seconds()
        method = request.method.decode("latin-1")
        text_path = path.decode("utf-8", "replace")
        principal: Principal | None = None

        public = match_public(method, text_path)

        def identify() -> Deferred[Principal]:
            if public is not None:  # no token needed, none checked
                return succeed(authenticate_public(self._credentials, peer_host(request),
                                                   indirect(request)))
            authorization = request.getHeader(b"authorization")
            token = bearer_token(authorization)
            if self._oidc is not None and for_identity_provider(self._credentials, token):
                return self._oidc.principal(token or "")
            return succeed(authenticate(self._credentials, authorization, peer_host(request),
                                        indirect(request)))

        def run(caller: Principal) -> Deferred[tuple[int, dict[str, Any]]]:
            nonlocal principal
            principal = caller
            route, params = public if public is not None else match(method, text_path)
            if route.role != PUBLIC and not principal.may(route.role):
                raise ApiError(403, f"{route.method} {route.path} needs the {route.role} role",
                               "permission_error")
            call = ApiCall(route, params, parse_query(route, query),
                           parse_body(route, request_body(request),
                                      (request.getHeader(b"content-type") or b"")
                                      .decode("latin-1")), principal,
                           int(started * 1000))
            result = self._handlers.dispatch(call)
            return result if isinstance(result, Deferred) else succeed(result)

        def answered(result: tuple[int, dict[str, Any]]) -> tuple[int, dict[str, Any], tuple]:
            status, payload = result
            return status, payload, ()

        def refused(failure: Failure) -> tuple[int, dict[str, Any], tuple]:
            if failure.check(AuthRefused):
                refusal: AuthRefused = failure.value  # type: ignore[assignment]
                kind = "authentication_error" if refusal.status == 401 else "permission_error"
                headers = ((b"www-authenticate", b'Bearer realm="mnemomd"'),) \
                    if refusal.status == 401 else ()
                return refusal.status, {"error": refusal.message, "type": kind}, headers
            if failure.check(ApiError):
                error: ApiError = failure.value  # type: ignore[assignment]
                return error.status, {"error": error.message, "type": error.error_type}, \
                    error.headers
            log.failure("Management API {method} {path} failed", failure, method=method,
                        path=text_path[:256], request_id=request.request_id)
            return 500, {"error": "Internal error", "type": "internal_error"}, ()

        def respond(outcome: tuple[int, dict[str, Any], tuple]) -> None:
            status, payload, headers = outcome
            self._send_json(request, status, payload, list(headers))
            self._metrics.requests.labels("api", str(status)).inc()
            log.info("{method} {path} {status}", method=method, path=text_path[:256],
                     status=status, request_id=request.request_id,
                     duration_ms=round((self._clock.seconds() - started) * 1000, 1),
                     role=principal.role if principal else None)

        return maybeDeferred(identify).addCallback(run).addCallbacks(answered, refused) \
            .addCallback(respond)


def request_body(request: GatewayRequest) -> bytes:
    """The body as received; an oversized one is refused before it is parsed."""
    content = request.content
    if getattr(content, "too_large", False):
        raise ApiError(413, "request body too large", "request_too_large")
    return content.getvalue() if content is not None else b""

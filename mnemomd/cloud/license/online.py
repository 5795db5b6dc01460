"""The online check with Mnemom's license service, and its HTTP client.

Contract (Mnemom's ``POST {MNEMOM_API_URL}/v1/license/validate``)::

    {"license": "<the license JWT>", "instance_id": "<the stable deployment id>",
     "instance_metadata": {"gateway_version": "<mnemomd version>"}}

A 2xx answer means valid. A 4xx answer is a rejection (400 malformed, 401 bad signature,
403 revoked, 409 ``max_activations`` exceeded, 410 expired); the service's ``error``
text, masked and bounded, becomes the reason. A 5xx answer (503 while its database is
away) and a network error are outages: the last good state holds for the grace period.
``instance_id`` is what the service counts activations by, so it is the deployment id
that survives restarts and upgrades (``MNEMOM_DATA_DIR/deployment-id``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from mnemomd import __version__
from mnemomd.cloud.license.state import LicenseState
from mnemomd.cloud.license.token import GRACE, GRACE_SECONDS, VALID, iso
from mnemomd.http.client import ClientSettings, HTTPClient, Reply
from mnemomd.http.errors import failure_reason

log = Logger(namespace="mnemomd.cloud.license")

#: The online check's timeout: an hourly background call, never on a request path.
ONLINE_TIMEOUT_SECONDS = 10.0


class LicenseServerError(Exception):
    """The license server gave no usable answer; ``reason`` is a short code for logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LicenseHTTPClient(Protocol):
    """What the validator needs from HTTP: one JSON POST, (status, decoded body or None)."""

    def post_json(self, url: str, body: Mapping[str, Any],
                  timeout: float) -> Deferred[tuple[int, Any]]: ...


class LicenseHTTP:
    """The default client: the shared outbound layer, bounded in time and size."""

    def __init__(self, reactor: IReactorTCP, clock: IReactorTime | None = None,
                 max_response_bytes: int = 64 * 1024) -> None:
        self._limit = max_response_bytes
        self._client = HTTPClient(reactor, clock, ClientSettings(
            idle_seconds=30, connect_timeout=ONLINE_TIMEOUT_SECONDS))

    def post_json(self, url: str, body: Mapping[str, Any],
                  timeout: float) -> Deferred[tuple[int, Any]]:
        headers = Headers({b"content-type": [b"application/json"],
                           b"accept": [b"application/json"],
                           b"user-agent": [f"mnemomd/{__version__} (license)".encode()]})
        try:
            payload = json.dumps(body).encode()
        except Exception:
            return fail(LicenseServerError("bad_url"))
        d = self._client.exchange(b"POST", url, headers, payload, timeout=timeout,
                                  max_body=self._limit)
        return d.addCallbacks(_decoded, _typed)

    def close(self) -> Deferred[None]:
        return self._client.close()


def _decoded(reply: Reply) -> tuple[int, Any]:
    try:
        return reply.code, json.loads(reply.body)
    except ValueError:
        return reply.code, None


def _typed(failure: Failure) -> Failure:
    return Failure(LicenseServerError(failure_reason(failure)))


@dataclass(frozen=True)
class OnlineVerdict:
    """One answer of the online check.

    ``outcome`` is ``valid`` (the service accepts the license), ``rejected`` (it answered
    4xx) or ``unavailable`` (no usable answer: the reason says why).
    """

    outcome: str
    reason: str | None
    checked_at: float


class OnlineValidator:
    """Confirms a license with the vendor's license server (SPEC §11).

    The server is asked hourly (``check``). A rejection makes the license invalid at once;
    an outage does not: the last good state holds for the grace period since the last
    successful validation, so a vendor outage never takes a gateway down, but a gateway
    cut off from the vendor for a week stops serving a license it can no longer confirm.
    """

    def __init__(self, reactor: IReactorTCP, clock: IReactorTime, api_url: str,
                 http_client: LicenseHTTPClient | None = None, *,
                 state: LicenseState | None = None, token: str | None = None,
                 instance_id: str = "", timeout: float = ONLINE_TIMEOUT_SECONDS,
                 last_good_at: float | None = None) -> None:
        self._clock = clock
        self.instance_id = instance_id
        self.url = f"{api_url.rstrip('/')}/v1/license/validate"
        self._owns_client = http_client is None
        self._http: LicenseHTTPClient = (
            http_client if http_client is not None else LicenseHTTP(reactor, clock))
        self._state = state
        self._token = token
        self._timeout = timeout
        #: When the server last accepted the license (persist it to survive restarts).
        self.last_good_at = last_good_at
        self.last_good: OnlineVerdict | None = None
        self.last_verdict: OnlineVerdict | None = None
        #: Where the grace window starts when no validation has succeeded yet.
        self._since = clock.seconds()
        self._in_flight: Deferred[None] | None = None

    def __repr__(self) -> str:
        return f"<OnlineValidator {self.url}>"  # never the token

    def body(self, token: str) -> dict[str, Any]:
        """The document sent: exactly the three fields of the contract."""
        return {"license": token, "instance_id": self.instance_id,
                "instance_metadata": {"gateway_version": __version__}}

    def validate(self, token: str) -> Deferred[OnlineVerdict]:
        """Ask the service about ``token``; always succeeds with an :class:`OnlineVerdict`."""
        d = self._http.post_json(self.url, self.body(token), self._timeout)

        def answered(result: tuple[int, Any]) -> OnlineVerdict:
            status, body = result
            return OnlineVerdict(*verdict_for(status, body, token),
                                 checked_at=self._clock.seconds())

        def failed(failure: Failure) -> OnlineVerdict:
            reason = (failure.value.reason if failure.check(LicenseServerError)
                      else type(failure.value).__name__)
            return OnlineVerdict("unavailable", reason, self._clock.seconds())

        def remember(verdict: OnlineVerdict) -> OnlineVerdict:
            self.last_verdict = verdict
            if verdict.outcome == "valid":
                self.last_good = verdict
                self.last_good_at = verdict.checked_at
            return verdict

        return d.addCallbacks(answered, failed).addCallback(remember)

    def check(self) -> Deferred[None]:
        """The hourly check: validate and update the LicenseState. Never fails."""
        state, token = self._state, self._token
        if self._in_flight is not None or state is None or token is None:
            return succeed(None)
        base = state.base
        if not base.verified or base.is_offline:
            return succeed(None)  # offline licenses, and ones no key verifies
        if base.at(self._clock.seconds()).status not in (VALID, GRACE):
            return succeed(None)  # expired or not yet valid: the server changes nothing

        def apply(verdict: OnlineVerdict) -> None:
            if verdict.outcome == "valid":
                state.set_online_rejection(None)
            elif verdict.outcome == "rejected":
                state.set_online_rejection(
                    f"license rejected by the license server: {verdict.reason}")
            else:
                self._outage(state, verdict)

        def unexpected(failure: Failure) -> None:
            log.failure("Online license check failed", failure)

        def done(result: None) -> None:
            self._in_flight = None

        d = self.validate(token).addCallback(apply)
        d.addErrback(unexpected).addBoth(done)
        if not d.called:
            self._in_flight = d
        return d

    def _outage(self, state: LicenseState, verdict: OnlineVerdict) -> None:
        since = self.last_good_at if self.last_good_at is not None else self._since
        deadline = since + GRACE_SECONDS
        if verdict.checked_at >= deadline:
            state.set_online_rejection("license could not be validated online for 7 days")
            return
        log.warn("License server unavailable ({reason}); keeping the last validated "
                 "license state until {deadline}", reason=verdict.reason,
                 deadline=iso(deadline))

    def close(self) -> Deferred[None]:
        """Close the HTTP client's connections if this validator created it."""
        closer: Callable[[], Deferred[None]] | None = getattr(self._http, "close", None)
        if self._owns_client and closer is not None:
            return closer()
        return succeed(None)


def verdict_for(status: int, body: Any, token: str) -> tuple[str, str | None]:
    """(outcome, reason) for the service's answer: 2xx valid, 4xx rejected, else an
    outage (``http_<status>``)."""
    if 200 <= status < 300:
        return "valid", None
    if 400 <= status < 500:
        error = body.get("error") if isinstance(body, dict) else None
        return "rejected", f"http_{status}: {_server_reason(error, token)}"
    return "unavailable", f"http_{status}"


def _server_reason(reason: Any, token: str) -> str:
    """The server's reason, bounded and with the token masked, fit for logs."""
    if not isinstance(reason, str) or not reason.strip():
        return "no reason given"
    text = reason.replace(token, "[token]") if token else reason
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:200] + "..."

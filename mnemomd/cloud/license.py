"""The license: offline JWT verification, its grace period, and the online check (SPEC §11).

A license is a JWT signed by the vendor. It is verified offline against trusted public
keys, so an air-gapped install works; licenses without ``is_offline`` are also confirmed
hourly with the license server. An expired license keeps serving for a 7-day grace period
(with a warning in logs, readiness and a metric) so a late renewal never takes production
down at once; a bad signature is invalid at once, because nothing about it can be trusted.

The token is a credential: it is never logged, never put in an exception message, a
readiness detail or a metric, and :class:`LicenseInfo` does not carry it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from mnemomd import __version__
from mnemomd.http.client import ClientSettings, HTTPClient, Reply
from mnemomd.http.errors import failure_reason
from mnemomd.ops.metrics import GatewayMetrics

log = Logger()

#: How long an expired license keeps working, and how long the online check may fail.
GRACE_SECONDS = 7 * 24 * 3600.0
#: Clock skew tolerated on ``nbf``: a license issued a moment ago must not be refused
#: because this host's clock is a few seconds behind the vendor's.
NBF_LEEWAY_SECONDS = 60.0
#: The online check's timeout: an hourly background call, never on a request path.
ONLINE_TIMEOUT_SECONDS = 10.0
#: RSA keys shorter than this are refused when loaded; they no longer protect anything.
MIN_RSA_BITS = 2048
#: Timestamps beyond year 9999 cannot be shown as dates and are no real expiry.
_MAX_TIMESTAMP = 253402300799

VALID = "valid"
GRACE = "grace"
EXPIRED = "expired"
INVALID = "invalid"
NOT_YET_VALID = "not_yet_valid"
UNLICENSED = "unlicensed"
#: Every status, in the order the ``gateway_license_state`` gauge lists them.
STATES = (VALID, GRACE, EXPIRED, INVALID, NOT_YET_VALID, UNLICENSED)
#: Statuses under which proxy calls are forwarded.
SERVING_STATES = frozenset({VALID, GRACE, UNLICENSED})
#: Statuses that change with the clock alone.
_TIMED_STATES = frozenset({VALID, GRACE, EXPIRED, NOT_YET_VALID})


class LicenseKeyError(ValueError):
    """A trusted-key file or directory that cannot be used; the message names the file."""


class LicenseRequired(Exception):
    """``LICENSE_REQUIRED`` is set but no license is configured: a startup error (exit 78)."""


# --------------------------------------------------------------------------- trusted keys


@dataclass(frozen=True)
class TrustedKey:
    """A public key and the one JWT algorithm it may verify.

    The algorithm follows from the key type, never from the token, so a token cannot
    choose how it is checked (no HS256-with-the-public-key, no ``none``).
    """

    kid: str | None
    algorithm: str
    key: Any
    source: str


def _algorithm_for(key: Any, source: str) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise LicenseKeyError(
                f"license key {source}: EC curve {key.curve.name} is not supported "
                "(use P-256 for ES256)")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise LicenseKeyError(
                f"license key {source}: RSA key of {key.key_size} bits is too short "
                f"(at least {MIN_RSA_BITS})")
        return "RS256"
    raise LicenseKeyError(
        f"license key {source}: {type(key).__name__} is not supported "
        "(use an Ed25519, EC P-256 or RSA public key)")


def _load_key_file(path: str, kid: str | None) -> TrustedKey:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise LicenseKeyError(
            f"license key {path} cannot be read: {exc.strerror or exc}") from None
    if b"PRIVATE KEY-----" in data:
        raise LicenseKeyError(
            f"license key {path} is a private key; give the vendor's public key")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise LicenseKeyError(f"license key {path} is not a PEM public key") from None
    return TrustedKey(kid=kid, algorithm=_algorithm_for(key, path), key=key, source=path)


def load_trusted_keys(path: str | None) -> dict[str | None, TrustedKey]:
    """The keys ``MNEMOM_LICENSE_PUBLIC_KEY`` names, by key id.

    A PEM file gives one key under ``None``: it verifies every token. A directory gives one
    key per ``<kid>.pem`` file, so the vendor can rotate keys and the ``kid`` of a token
    picks the one that signed it. No path means no trusted key: any token is then invalid.
    """
    if not path:
        return {}
    if os.path.isdir(path):
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise LicenseKeyError(
                f"license key directory {path} cannot be read: {exc.strerror or exc}"
            ) from None
        keys: dict[str | None, TrustedKey] = {}
        for name in names:
            if not name.endswith(".pem") or name.startswith("."):
                continue
            kid = name[:-len(".pem")]
            if not kid:
                continue
            keys[kid] = _load_key_file(os.path.join(path, name), kid)
        if not keys:
            raise LicenseKeyError(f"license key directory {path} holds no <kid>.pem file")
        return keys
    if not os.path.exists(path):
        raise LicenseKeyError(f"license key {path} does not exist")
    return {None: _load_key_file(path, None)}


# --------------------------------------------------------------------------- verification


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LicenseInfo:
    """What a license says and where it stands at one instant. Never holds the token."""

    status: str
    license_id: str | None = None
    plan_id: str | None = None
    expires_at: float | None = None
    is_offline: bool = False
    feature_flags: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    #: Human text for logs, readiness and ``check-config``.
    reason: str = ""
    seconds_to_expiry: float | None = None
    grace_ends_at: float | None = None
    #: ``nbf``; kept so a not-yet-valid license turns valid when its time comes.
    not_before: float | None = None
    #: True once the signature and claims checked out: only then does time matter.
    verified: bool = False

    @classmethod
    def unlicensed(cls) -> LicenseInfo:
        return cls(status=UNLICENSED, reason="no license configured: evaluation install")

    @classmethod
    def invalid(cls, reason: str) -> LicenseInfo:
        return cls(status=INVALID, reason=reason)

    @property
    def allows_traffic(self) -> bool:
        return self.status in SERVING_STATES

    def at(self, now: float) -> LicenseInfo:
        """The same license re-evaluated at ``now``: its time-based status moves on."""
        if not self.verified or self.expires_at is None:
            return self
        expires = self.expires_at
        grace_end = expires + GRACE_SECONDS
        if self.not_before is not None and now + NBF_LEEWAY_SECONDS < self.not_before:
            status = NOT_YET_VALID
            reason = f"license {self.license_id} is not valid before {_iso(self.not_before)}"
        elif now < expires:
            status = VALID
            reason = f"license {self.license_id} valid until {_iso(expires)}"
        elif now < grace_end:
            status = GRACE
            reason = (f"license {self.license_id} expired at {_iso(expires)}; grace period "
                      f"until {_iso(grace_end)}, then proxy calls are refused: renew it")
        else:
            status = EXPIRED
            reason = (f"license {self.license_id} expired at {_iso(expires)} and its grace "
                      f"period ended at {_iso(grace_end)}")
        return replace(self, status=status, reason=reason,
                       seconds_to_expiry=expires - now, grace_ends_at=grace_end)

    def next_change(self) -> float | None:
        """When the time-based status changes next, or None if it never will."""
        if not self.verified or self.expires_at is None:
            return None
        if self.status == NOT_YET_VALID and self.not_before is not None:
            return self.not_before - NBF_LEEWAY_SECONDS
        if self.status == VALID:
            return self.expires_at
        if self.status == GRACE:
            return self.expires_at + GRACE_SECONDS
        return None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description for ``/health/ready`` and ``check-config``."""
        out: dict[str, Any] = {"status": self.status}
        for name, value in (("license_id", self.license_id), ("plan_id", self.plan_id),
                            ("expires_at", _iso(self.expires_at)),
                            ("grace_ends_at", _iso(self.grace_ends_at))):
            if value is not None:
                out[name] = value
        if self.seconds_to_expiry is not None:
            out["seconds_to_expiry"] = round(self.seconds_to_expiry)
        if self.reason:
            out["reason"] = self.reason
        return out


def _timestamp(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or not 0 <= value <= _MAX_TIMESTAMP:
        return None
    return float(value)


def _claims_info(claims: Mapping[str, Any]) -> LicenseInfo:
    """The LicenseInfo of verified claims, or an invalid one naming the bad claim."""
    license_id = claims.get("license_id")
    if not isinstance(license_id, str) or not license_id:
        return LicenseInfo.invalid("license has no license_id claim")
    plan_id = claims.get("plan_id")
    if plan_id is not None and not isinstance(plan_id, str):
        return LicenseInfo.invalid("license claim plan_id is not a string")
    if "exp" not in claims:
        return LicenseInfo.invalid("license has no exp claim")
    expires = _timestamp(claims["exp"])
    if expires is None:
        return LicenseInfo.invalid("license claim exp is not a valid time")
    not_before = None
    if claims.get("nbf") is not None:
        not_before = _timestamp(claims["nbf"])
        if not_before is None:
            return LicenseInfo.invalid("license claim nbf is not a valid time")
    is_offline = claims.get("is_offline", False)
    if not isinstance(is_offline, bool):
        return LicenseInfo.invalid("license claim is_offline is not a boolean")
    flags = claims.get("feature_flags") or {}
    if isinstance(flags, list) and all(isinstance(f, str) for f in flags):
        flags = dict.fromkeys(flags, True)  # a list of names means "these are on"
    if not isinstance(flags, dict):
        return LicenseInfo.invalid("license claim feature_flags is not an object or a list")
    limits = claims.get("limits") or {}
    if not isinstance(limits, dict):
        return LicenseInfo.invalid("license claim limits is not an object")
    return LicenseInfo(status=VALID, license_id=license_id, plan_id=plan_id,
                       expires_at=expires, is_offline=is_offline, feature_flags=dict(flags),
                       limits=dict(limits), not_before=not_before, verified=True)


def _printable(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


#: Only these options: signature and the claims checked here, with PyJWT's own time checks
#: off because they read the wall clock, not the injected one, and know no grace period.
_DECODE_OPTIONS: Any = {
    "verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
    "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False,
}


def verify_license(token: str, keys: Mapping[str | None, TrustedKey],
                   now: float) -> LicenseInfo:
    """Verify ``token`` offline against ``keys`` and place it in time at ``now``.

    Pure: no I/O, no logging. Every failure is an ``invalid`` LicenseInfo whose reason
    says what was wrong without quoting the token.
    """
    token = token.strip() if isinstance(token, str) else ""
    if not token:
        return LicenseInfo.invalid("license token is empty")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return LicenseInfo.invalid("license token is malformed (not a signed JWT)")
    if not keys:
        return LicenseInfo.invalid(
            "no trusted license key is configured (MNEMOM_LICENSE_PUBLIC_KEY)")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        return LicenseInfo.invalid("license token kid header is not a string")
    trusted = keys.get(kid) if kid is not None else None
    if trusted is None:
        trusted = keys.get(None)
    if trusted is None:
        if kid is None:
            return LicenseInfo.invalid("license token has no kid header to select a key")
        return LicenseInfo.invalid(f"license token kid {_printable(kid)} is not a trusted key")
    alg = header.get("alg")
    if alg != trusted.algorithm:
        return LicenseInfo.invalid(
            f"license token algorithm {_printable(alg)} is not allowed; its key only "
            f"verifies {trusted.algorithm}")
    try:
        claims = jwt.decode(token, key=trusted.key, algorithms=[trusted.algorithm],
                            options=_DECODE_OPTIONS)
    except jwt.InvalidSignatureError:
        return LicenseInfo.invalid("license signature does not verify with the trusted key")
    except jwt.InvalidAlgorithmError:
        return LicenseInfo.invalid(
            f"license token algorithm is not allowed; its key only verifies "
            f"{trusted.algorithm}")
    except jwt.DecodeError:
        return LicenseInfo.invalid("license token is malformed (not a signed JWT)")
    except jwt.PyJWTError as exc:
        return LicenseInfo.invalid(f"license token rejected ({type(exc).__name__})")
    if not isinstance(claims, dict):
        return LicenseInfo.invalid("license token payload is not a JSON object")
    return _claims_info(claims).at(now)


# --------------------------------------------------------------------------- live state


class LicenseState:
    """The license as the gateway sees it now, kept current with the clock.

    The offline verdict moves with time by itself (valid, grace, expired) and a timer fires
    at each boundary so logs and metrics change when the license does, not at the next
    request. An online rejection overrides a serving status until the server accepts the
    license again. Each status is logged once, when it is entered.
    """

    def __init__(self, clock: IReactorTime, info: LicenseInfo,
                 metrics: GatewayMetrics | None = None) -> None:
        self._clock = clock
        self._metrics = metrics
        self._base = info
        self._online_rejection: str | None = None
        self._current: LicenseInfo | None = None
        self._next_change: float | None = None
        self._timer: IDelayedCall | None = None
        self._armed_for: float | None = None
        if metrics is not None:
            metrics.license_seconds_to_expiry.set_function(self._seconds_to_expiry)
        self._refresh()

    @classmethod
    def from_token(cls, token: str | None, keys: Mapping[str | None, TrustedKey], *,
                   required: bool, clock: IReactorTime,
                   metrics: GatewayMetrics | None = None) -> LicenseState:
        """The startup state: verified license, or unlicensed evaluation install.

        Raises :class:`LicenseRequired` when ``required`` and there is no token, so the
        daemon refuses to start rather than serve unlicensed.
        """
        if token is None or not token.strip():
            if required:
                raise LicenseRequired(
                    "LICENSE_REQUIRED is set but no license is configured "
                    "(MNEMOM_LICENSE_JWT)")
            return cls(clock, LicenseInfo.unlicensed(), metrics)
        return cls(clock, verify_license(token, keys, clock.seconds()), metrics)

    # -- reading

    @property
    def info(self) -> LicenseInfo:
        """The license now."""
        return self._refresh()

    @property
    def status(self) -> str:
        return self._refresh().status

    def allows_traffic(self) -> bool:
        """Whether proxy calls may be forwarded (else the 403 of SPEC §3.10).

        Called on every request: it re-evaluates only once a boundary has passed.
        """
        current = self._current
        if current is None or (self._next_change is not None
                               and self._clock.seconds() >= self._next_change):
            current = self._refresh()
        return current.allows_traffic

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ok, detail) for the ``license`` check of ``/health/ready``.

        The detail is :meth:`summary`, so the check reports ``{"status": "grace", …}``
        (SPEC §11) rather than a bare ok. Grace stays ready (traffic still flows) with the
        warning in the reason; expired, invalid and not-yet-valid fail, since every proxy
        call would be refused.
        """
        info = self._refresh()
        return info.allows_traffic, info.summary()

    def summary(self) -> dict[str, Any]:
        """``{"status": …}`` and the license's details, for health and ``check-config``."""
        return self._refresh().summary()

    # -- changing

    def update(self, info: LicenseInfo) -> None:
        """Replace the license (a new token was configured); forgets any online rejection."""
        self._base = info
        self._online_rejection = None
        self._refresh()

    def set_online_rejection(self, reason: str | None) -> None:
        """Record the online verdict: a reason makes the license invalid, None clears it."""
        self._online_rejection = reason
        self._refresh()

    @property
    def base(self) -> LicenseInfo:
        """The offline verdict alone, without the online one."""
        return self._base

    def stop(self) -> None:
        """Cancel the boundary timer (at shutdown)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._armed_for = None

    # -- internals

    def _evaluate(self, now: float) -> LicenseInfo:
        info = self._base.at(now)
        if self._online_rejection is not None and info.status in (VALID, GRACE):
            info = replace(info, status=INVALID, reason=self._online_rejection)
        return info

    def _refresh(self) -> LicenseInfo:
        now = self._clock.seconds()
        info = self._evaluate(now)
        previous = self._current
        self._current = info
        self._next_change = info.next_change()
        if previous is None or previous.status != info.status:
            self._entered(info, previous)
        if self._next_change != self._armed_for:
            self._arm(now)
        return info

    def _arm(self, now: float) -> None:
        self.stop()
        self._armed_for = self._next_change
        if self._next_change is not None:
            self._timer = self._clock.callLater(max(0.0, self._next_change - now),
                                                self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._armed_for = None  # re-armed by the refresh, even if it fired a little early
        self._refresh()

    def _seconds_to_expiry(self) -> float:
        expires = self._base.expires_at
        if expires is None or not self._base.verified:
            return math.nan
        return expires - self._clock.seconds()

    def _entered(self, info: LicenseInfo, previous: LicenseInfo | None) -> None:
        if self._metrics is not None:
            for state in STATES:
                self._metrics.license_state.labels(state).set(1 if state == info.status else 0)
        fields = {"license_id": info.license_id, "plan_id": info.plan_id,
                  "reason": info.reason}
        if info.status == VALID:
            verb = "valid again" if previous is not None else "valid"
            log.info("License {license_id} " + verb + " (plan {plan_id}): {reason}", **fields)
        elif info.status == GRACE:
            log.warn("License expired, grace period: {reason}", **fields)
        elif info.status == EXPIRED:
            log.warn("License expired, proxy calls are now refused: {reason}", **fields)
        elif info.status == NOT_YET_VALID:
            log.warn("License not valid yet, proxy calls are refused: {reason}", **fields)
        elif info.status == INVALID:
            log.error("License invalid, proxy calls are refused: {reason}", **fields)
        else:
            log.warn("No license configured: running as an unlicensed evaluation install")


# --------------------------------------------------------------------------- online check


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

    ``outcome`` is ``valid`` (the server accepts the license), ``rejected`` (it answered
    ``valid: false``) or ``unavailable`` (no usable answer: the reason says why).
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
                 timeout: float = ONLINE_TIMEOUT_SECONDS,
                 last_good_at: float | None = None) -> None:
        self._clock = clock
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

    def validate(self, token: str, license_id: str | None = None) -> Deferred[OnlineVerdict]:
        """Ask the server about ``token``; always succeeds with an :class:`OnlineVerdict`."""
        if license_id is None:
            license_id = _unverified_license_id(token)
        d = self._http.post_json(self.url, {"license_id": license_id, "token": token},
                                 self._timeout)

        def answered(result: tuple[int, Any]) -> OnlineVerdict:
            status, body = result
            now = self._clock.seconds()
            valid = body.get("valid") if isinstance(body, dict) else None
            if valid is True and 200 <= status < 300:
                return OnlineVerdict("valid", None, now)
            if valid is False and (200 <= status < 300 or 400 <= status < 500):
                return OnlineVerdict("rejected", _server_reason(body.get("reason"), token),
                                     now)
            code = "malformed" if 200 <= status < 300 else f"http_{status}"
            return OnlineVerdict("unavailable", code, now)

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

        d = self.validate(token, base.license_id).addCallback(apply)
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
                 deadline=_iso(deadline))

    def close(self) -> Deferred[None]:
        """Close the HTTP client's connections if this validator created it."""
        closer: Callable[[], Deferred[None]] | None = getattr(self._http, "close", None)
        if self._owns_client and closer is not None:
            return closer()
        return succeed(None)


def _unverified_license_id(token: str) -> str | None:
    """The license_id claim, read without verification: only to address the server."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    value = claims.get("license_id") if isinstance(claims, dict) else None
    return value if isinstance(value, str) else None


def _server_reason(reason: Any, token: str) -> str:
    """The server's reason, bounded and with the token masked, fit for logs."""
    if not isinstance(reason, str) or not reason.strip():
        return "no reason given"
    text = reason.replace(token, "[token]") if token else reason
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:200] + "..."

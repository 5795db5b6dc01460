"""Offline verification of a license token and what its claims say at a given time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import jwt

from mnemomd.cloud.license.keys import TrustedKey

#: How long an expired license keeps working, and how long the online check may fail.
GRACE_SECONDS = 7 * 24 * 3600.0
#: Clock skew tolerated on ``nbf``: a license issued a moment ago must not be refused
#: because this host's clock is a few seconds behind the vendor's.
NBF_LEEWAY_SECONDS = 60.0
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


def iso(timestamp: float | None) -> str | None:
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
            reason = f"license {self.license_id} is not valid before {iso(self.not_before)}"
        elif now < expires:
            status = VALID
            reason = f"license {self.license_id} valid until {iso(expires)}"
        elif now < grace_end:
            status = GRACE
            reason = (f"license {self.license_id} expired at {iso(expires)}; grace period "
                      f"until {iso(grace_end)}, then proxy calls are refused: renew it")
        else:
            status = EXPIRED
            reason = (f"license {self.license_id} expired at {iso(expires)} and its grace "
                      f"period ended at {iso(grace_end)}")
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
                            ("expires_at", iso(self.expires_at)),
                            ("grace_ends_at", iso(self.grace_ends_at))):
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

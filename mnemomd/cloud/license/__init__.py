"""The license: offline JWT verification, its grace period, and the online check (SPEC §11).

A license is a JWT signed by the vendor. It is verified offline against trusted public
keys, so an air-gapped install works; licenses without ``is_offline`` are also confirmed
hourly with the license server. An expired license keeps serving for a 7-day grace period
(with a warning in logs, readiness and a metric) so a late renewal never takes production
down at once; a bad signature is invalid at once, because nothing about it can be trusted.

The token is a credential: it is never logged, never put in an exception message, a
readiness detail or a metric, and :class:`LicenseInfo` does not carry it.
"""
from mnemomd.cloud.license.keys import (
    MIN_RSA_BITS,
    LicenseKeyError,
    TrustedKey,
    load_trusted_keys,
)
from mnemomd.cloud.license.online import (
    ONLINE_TIMEOUT_SECONDS,
    LicenseHTTP,
    LicenseHTTPClient,
    LicenseServerError,
    OnlineValidator,
    OnlineVerdict,
)
from mnemomd.cloud.license.state import LicenseRequired, LicenseState
from mnemomd.cloud.license.token import (
    EXPIRED,
    GRACE,
    GRACE_SECONDS,
    INVALID,
    NBF_LEEWAY_SECONDS,
    NOT_YET_VALID,
    SERVING_STATES,
    STATES,
    UNLICENSED,
    VALID,
    LicenseInfo,
    verify_license,
)

__all__ = [
    "EXPIRED",
    "GRACE",
    "GRACE_SECONDS",
    "INVALID",
    "LicenseHTTP",
    "LicenseHTTPClient",
    "LicenseInfo",
    "LicenseKeyError",
    "LicenseRequired",
    "LicenseServerError",
    "LicenseState",
    "MIN_RSA_BITS",
    "NBF_LEEWAY_SECONDS",
    "NOT_YET_VALID",
    "ONLINE_TIMEOUT_SECONDS",
    "OnlineValidator",
    "OnlineVerdict",
    "SERVING_STATES",
    "STATES",
    "TrustedKey",
    "UNLICENSED",
    "VALID",
    "load_trusted_keys",
    "verify_license",
]

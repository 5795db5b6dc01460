"""The license as the gateway sees it now, kept current with the clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mnemomd.cloud.license.keys import TrustedKey
from mnemomd.cloud.license.token import (
    EXPIRED,
    GRACE,
    INVALID,
    NOT_YET_VALID,
    STATES,
    VALID,
    LicenseInfo,
    verify_license,
)
from mnemomd.ops.metrics import GatewayMetrics

log = Logger(namespace="mnemomd.cloud.license")

class LicenseRequired(Exception):
    """``LICENSE_REQUIRED`` is set but no license is configured: a startup error (exit 78)."""


# --------------------------------------------------------------------------- trusted keys


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

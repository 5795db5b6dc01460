"""The deployment heartbeat (SPEC §11): "this licensed install is alive, this version".

Contract (Mnemom's ``POST HEARTBEAT_URL``, by default
``https://api.mnemom.ai/v1/deployments/heartbeat``), sent only when a license is
configured, once at start and then every ``OBSERVER_HEARTBEAT_INTERVAL_SECONDS`` (60 s),
each within 10 s, with ``Authorization: Bearer <license JWT>``::

    {"deployment_id": "…", "license_jwt": "<the license JWT>", "version": "0.1.0",
     "heartbeat_data": {"uptime_seconds": 3600, "health_status": "healthy",
                        "python_version": "3.12.3", "platform": "linux",
                        "memory_usage_mb": 84},
     "timestamp": "2025-01-01T00:00:00.000Z"}

and nothing else: no prompts, responses or thinking, no provider keys, no host name, no
check details (their error messages can name internal hosts). ``health_status`` is
``healthy`` (readiness ok), ``degraded`` (any other readiness status) or ``unknown`` (the
snapshot failed). ``python_version`` stands where Mnemom's Node runtime sends
``node_version``; ``memory_usage_mb`` is the process's peak resident memory. With
``MNEMOM_OFFLINE=true`` the job still ticks (and is counted) but makes no call; that
decision belongs to whoever builds the job.

A heartbeat that fails is of no consequence to serving: :meth:`Heartbeat.send` never
fails, and a failure streak is logged once at warn (then at debug) so an air-gapped host
that forgot ``MNEMOM_OFFLINE`` gets one clear line, not one per minute.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from mnemomd.http.client import ClientSettings, HTTPClient, Reply, is_success
from mnemomd.http.errors import OutboundError
from mnemomd.ops.health import HealthState
from mnemomd.ops.jobs import failure_summary

log = Logger()

DEFAULT_HEARTBEAT_URL = "https://api.mnemom.ai/v1/deployments/heartbeat"
HEARTBEAT_INTERVAL = 60.0
#: Whole exchange, connect to last byte: a hung receiver must not hold the job past its
#: next tick (the job would then count skipped ticks for a problem that is not ours).
HEARTBEAT_TIMEOUT = 10.0
DEPLOYMENT_ID_FILE = "deployment-id"

#: Statuses and check names are sent only when they look like identifiers ("ok",
#: "degraded", "unlicensed", "database"): such a token cannot carry a host name, a path,
#: a URL or a sentence of someone's data. Anything else is sent as "unknown" / dropped.
_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_CHECKS = 32
#: Bytes of a receiver's answer read (and thrown away) before the connection is closed.
_MAX_RESPONSE_BYTES = 64 * 1024

HealthSnapshot = Callable[[], "Deferred[dict[str, Any]] | dict[str, Any]"]


class HeartbeatFailed(Exception):
    """A heartbeat the receiver did not accept; the message is a short reason code."""


def _token(value: Any) -> str | None:
    return value if isinstance(value, str) and _TOKEN.fullmatch(value) else None


def sanitize_health(snapshot: Any) -> dict[str, Any]:
    """``{"status": token, "checks": {name: token}}`` from a readiness-like document.

    Accepts the body of ``/health/ready`` (checks as ``{"status": …, "latency_ms": …,
    "detail": …}``) or plain ``{name: status}``; keeps only the overall status and each
    check's status, and only when they are identifier-like tokens.
    """
    if not isinstance(snapshot, Mapping):
        return {"status": "unknown", "checks": {}}
    checks: dict[str, str] = {}
    raw_checks = snapshot.get("checks")
    if isinstance(raw_checks, Mapping):
        for name, check in raw_checks.items():
            if len(checks) >= _MAX_CHECKS:
                break
            if _token(name) is None:
                continue
            status = check.get("status") if isinstance(check, Mapping) else check
            checks[name] = _token(status) or "unknown"
    return {"status": _token(snapshot.get("status")) or "unknown", "checks": checks}


def health_status(snapshot: Any) -> str:
    """``healthy`` when readiness says ok, ``degraded`` for any other status it reports,
    ``unknown`` without a snapshot."""
    status = sanitize_health(snapshot)["status"]
    if status == "ok":
        return "healthy"
    return "unknown" if status == "unknown" else "degraded"


def memory_usage_mb() -> int:
    """The process's peak resident memory in MiB (a system call, no file read)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024)


def iso_timestamp(seconds: float) -> str:
    """``2025-01-01T00:00:00.000Z``: the form JavaScript's ``toISOString`` gives."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def readiness_snapshot(health: HealthState) -> HealthSnapshot:
    """A ``health_snapshot`` for :class:`Heartbeat` that runs the readiness checks."""

    def snapshot() -> Deferred[dict[str, Any]]:
        return health.readiness().addCallback(lambda result: result[1])

    return snapshot


def _accepted(reply: Reply) -> None:
    if not is_success(reply.code):
        raise HeartbeatFailed(f"http_{reply.code}")


def _failure_text(failure: Failure) -> str:
    """``http_<status>`` or ``timeout``, else the class name of what failed
    (``ConnectionRefusedError``): specific enough for an operator, never a URL."""
    if failure.check(HeartbeatFailed):
        return str(failure.value)
    if failure.check(OutboundError):
        error = failure.value
        return "timeout" if error.reason == "timeout" else error.cause
    return failure.type.__name__ if failure.type is not None else "unknown"


def _display_url(url: str) -> str:
    """Scheme, host and port only: enough to tell which receiver, never a query token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class Heartbeat:
    """Sends one heartbeat per :meth:`send`; schedule it with a ``PeriodicJob``.

    ``reactor`` makes connections, ``clock`` measures uptime and the timeout (a
    ``task.Clock`` in tests). ``http`` is an outbound client; by default the heartbeat has
    its own small pool, separate from the proxy's, so it can never take a connection slot
    from an LLM call.
    """

    def __init__(self, reactor: IReactorTCP, clock: IReactorTime, url: str,
                 deployment_id: str, version: str, started_at: float,
                 health_snapshot: HealthSnapshot, license_jwt: str,
                 http: HTTPClient | None = None,
                 timeout: float = HEARTBEAT_TIMEOUT) -> None:
        self._clock = clock
        self._license_jwt = license_jwt.strip()
        self.url = url
        self._display = _display_url(url)
        self.deployment_id = deployment_id
        self.version = version
        self.started_at = started_at
        self._health_snapshot = health_snapshot
        self._timeout = timeout
        self._owns_http = http is None
        if http is None:
            # Persistent only so close() can account for every socket; the idle timeout
            # is far below the 60 s interval, so each beat opens a fresh connection and
            # never races a receiver closing an idle one.
            http = HTTPClient(reactor, clock, ClientSettings(
                max_per_host=1, idle_seconds=5, connect_timeout=timeout))
        self._http = http
        self._user_agent = f"mnemomd/{version} (heartbeat)".encode("ascii", "replace")
        #: Consecutive failed heartbeats (0 after a success), for health and tests.
        self.consecutive_failures = 0
        #: Clock time of the last accepted heartbeat, or None.
        self.last_success_at: float | None = None

    def send(self) -> Deferred[None]:
        """Send one heartbeat. Always fires with None: failures are logged, never raised."""
        d: Deferred[Any] = maybeDeferred(self._health_snapshot)
        d.addErrback(self._snapshot_failed)
        d.addCallback(self._post)
        d.addCallbacks(self._succeeded, self._failed)
        return d

    def body(self, snapshot: Any) -> dict[str, Any]:
        """The document sent: exactly the fields of the contract, nothing else."""
        now = self._clock.seconds()
        return {
            "deployment_id": self.deployment_id,
            "license_jwt": self._license_jwt,
            "version": self.version,
            "heartbeat_data": {
                "uptime_seconds": max(0, int(now - self.started_at)),
                "health_status": health_status(snapshot),
                "python_version": platform.python_version(),
                "platform": sys.platform,
                "memory_usage_mb": memory_usage_mb(),
            },
            "timestamp": iso_timestamp(now),
        }

    def __repr__(self) -> str:
        return f"<Heartbeat {self._display}>"  # never the license

    def close(self) -> Deferred[None]:
        """Close the heartbeat's own connections (at shutdown, and in tests)."""
        if not self._owns_http:
            return succeed(None)
        return self._http.close()

    def _snapshot_failed(self, failure: Failure) -> None:
        # Still beat: "alive, health unknown" is worth more to the receiver than silence.
        error, where = failure_summary(failure)
        log.debug("Heartbeat health snapshot failed: {error} at {where}", error=error,
                  where=where)
        return None

    def _post(self, snapshot: Any) -> Deferred[None]:
        payload = json.dumps(self.body(snapshot), separators=(",", ":")).encode("ascii")
        headers = Headers({b"content-type": [b"application/json"],
                           b"authorization": [f"Bearer {self._license_jwt}".encode("ascii")],
                           b"user-agent": [self._user_agent]})
        # The status line is the whole answer: the body is read (up to a bound) and dropped.
        d = self._http.exchange(b"POST", self.url, headers, payload, timeout=self._timeout,
                                max_body=_MAX_RESPONSE_BYTES, keep_body=False)
        return d.addCallback(_accepted)

    def _succeeded(self, _: Any) -> None:
        if self.consecutive_failures:
            log.info("Heartbeat to {receiver} delivered again after {failures} failure(s)",
                     receiver=self._display, failures=self.consecutive_failures)
        self.consecutive_failures = 0
        self.last_success_at = self._clock.seconds()

    def _failed(self, failure: Failure) -> None:
        self.consecutive_failures += 1
        reason = _failure_text(failure)
        if self.consecutive_failures == 1:
            log.warn("Heartbeat to {receiver} failed ({reason}); serving is unaffected. "
                     "Further failures are logged at debug until one succeeds; set "
                     "MNEMOM_OFFLINE=true to turn the heartbeat off.",
                     receiver=self._display, reason=reason)
        else:
            log.debug("Heartbeat to {receiver} failed ({reason}), {failures} in a row",
                      receiver=self._display, reason=reason,
                      failures=self.consecutive_failures)


def load_or_create_deployment_id(data_dir: str | os.PathLike[str]) -> str:
    """The deployment's stable random id, from ``<data_dir>/deployment-id``.

    Created on first start (a random UUID, file mode 0600) and read on every later one,
    so the receiver sees one install across restarts and upgrades without the daemon
    sending anything about the host to tell them apart. Creation is atomic (written
    aside, then linked into place), so a gateway and a scheduler sharing the data
    directory and starting together agree on one id. A file whose content is not an id
    is replaced. Raises ``OSError`` when the data directory cannot be written.
    """
    directory = Path(data_dir)
    path = directory / DEPLOYMENT_ID_FILE
    existing = _read_id(path)
    if existing is not None:
        return existing
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    new_id = str(uuid.uuid4())
    fd, temporary = tempfile.mkstemp(prefix=".deployment-id.", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"{new_id}\n".encode("ascii"))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if path.exists():  # present but not an id: replace it
            log.warn("{path} did not hold a deployment id; writing a new one", path=str(path))
            os.replace(temporary, path)
            return new_id
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process won the race: use its id
            winner = _read_id(path)
            if winner is not None:
                return winner
            os.replace(temporary, path)
        return new_id
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(temporary):
            os.unlink(temporary)


def _read_id(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, ValueError):
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None

"""Webhook delivery: signing, the retry schedule and the dispatcher (SPEC §7).

Every event is a durable row (see ``webhooks/store.py``). The process that queued it
sends it at once and retries 1 s, 4 s and 16 s later; after that the scheduler's
``webhooks`` job keeps retrying due rows until 24 hours after the event, and picks up
anything a stopped process left behind. A 2xx is delivered; a 4xx other than 408/429 is
final; everything else (5xx, timeouts, refused connections) is retried. An endpoint is
disabled after 100 consecutive failed attempts.

Signature: ``X-AIP-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">`` keyed
with the endpoint's secret, where ``timestamp`` is ``X-AIP-Timestamp`` (Unix seconds).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from mnemomd import __version__
from mnemomd.http.client import ClientSettings, HTTPClient, Reply
from mnemomd.http.errors import as_outbound
from mnemomd.ops.dependency import DependencyState, log_failure
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.webhooks.store import AttemptResult, Delivery, Endpoint, WebhookStore

log = Logger()

SIGNATURE_VERSION = "1"
#: Seconds after the 1st, 2nd and 3rd failed attempt; the queuing process waits these.
QUICK_RETRIES = (1, 4, 16)
#: After the quick retries, the scheduler retries on this growing schedule (seconds).
LATER_RETRIES = (60, 300, 900, 1800, 3600)
GIVE_UP_AFTER_MS = 24 * 3600 * 1000
DISABLE_AFTER = 100
TIMEOUT_SECONDS = 10.0
#: A claimed row is someone else's to retry only once this has passed.
LEASE_MS = 60_000
RESPONSE_BODY_LIMIT = 64 * 1024
BATCH = 50
#: ``gateway_webhook_deliveries_total`` result of each attempt outcome.
METRIC_RESULTS = {"delivered": "delivered", "retry": "retried", "failed": "failed"}


def new_secret() -> str:
    """A fresh endpoint secret: 32 random bytes, as hex."""
    return secrets.token_hex(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signed_headers(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": f"mnemomd/{__version__}",
            "X-AIP-Signature": signature(secret, timestamp, body),
            "X-AIP-Timestamp": str(timestamp), "X-AIP-Version": SIGNATURE_VERSION}


def check_url(url: str, allow_http: bool) -> str | None:
    """Why ``url`` cannot be a webhook endpoint, or None when it can."""
    if not url.isascii():
        # Sending needs an ASCII URL: an IDN host goes in punycode, a path percent-encoded.
        return "must be ASCII (punycode for international host names)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an https:// URL"
    if parts.scheme == "http" and not allow_http:
        return "plain http:// is allowed only with allow_http (internal receivers)"
    if parts.username or parts.password:
        return "must not carry credentials"
    if port == 0 or len(url) > 2048 or any(c in url for c in "\r\n\t "):
        return "not a valid URL"
    return None


def classify(status: int | None) -> str:
    """``delivered``, ``final`` or ``retry`` for an HTTP status (None: no answer)."""
    if status is not None and 200 <= status < 300:
        return "delivered"
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return "final"
    return "retry"


def next_attempt_at(attempts: int, created_ms: int, now_ms: int) -> int | None:
    """When to try again after ``attempts`` failed attempts, or None to give up."""
    if attempts <= len(QUICK_RETRIES):
        delay = QUICK_RETRIES[attempts - 1]
    else:
        delay = LATER_RETRIES[min(attempts - len(QUICK_RETRIES) - 1, len(LATER_RETRIES) - 1)]
    at = now_ms + delay * 1000
    return at if at <= created_ms + GIVE_UP_AFTER_MS else None


def attempt_result(delivery: Delivery, status: int | None, error: str | None,
                   now_ms: int) -> AttemptResult:
    verdict = classify(status)
    if verdict == "delivered":
        return AttemptResult(delivery.id, delivery.endpoint_id, "delivered", status, None,
                             None, now_ms)
    if verdict == "final":
        return AttemptResult(delivery.id, delivery.endpoint_id, "failed", status,
                             error or f"HTTP {status}", None, now_ms)
    at = next_attempt_at(delivery.attempts + 1, delivery.created_at, now_ms)
    return AttemptResult(delivery.id, delivery.endpoint_id, "retry" if at else "failed",
                         status, error or f"HTTP {status}", at, now_ms)


@dataclass(frozen=True)
class SendResult:
    status: int | None
    error: str | None


class WebhookSender:
    """POSTs signed bodies; never raises, answers with a status or an error reason."""

    def __init__(self, reactor: IReactorTCP, clock: IReactorTime | None = None,
                 timeout: float = TIMEOUT_SECONDS) -> None:
        self._timeout = timeout
        # Idle connections are kept 240 s (Twisted's default): receivers are few and
        # events come in bursts.
        self._http = HTTPClient(reactor, clock, ClientSettings(
            max_per_host=4, idle_seconds=240, connect_timeout=timeout))

    def send(self, url: str, headers: dict[str, str], body: bytes) -> Deferred[SendResult]:
        try:
            request_headers = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
        except Exception as e:
            return succeed(SendResult(None, f"request failed: {type(e).__name__}"))
        # Only the status matters: a receiver's answer is read (up to a bound) and dropped.
        d = self._http.exchange(b"POST", url, request_headers, body, timeout=self._timeout,
                                max_body=RESPONSE_BODY_LIMIT, keep_body=False)
        return d.addCallbacks(_answered, self._failed)

    def _failed(self, failure: Failure) -> SendResult:
        error = as_outbound(failure).value
        if error.reason == "timeout":
            return SendResult(None, f"timed out after {self._timeout:g} s")
        if error.reason == "bad_url":
            return SendResult(None, f"request failed: {error.cause}")
        return SendResult(None, error.cause)

    def close(self) -> Deferred[None]:
        return self._http.close()


def _answered(reply: Reply) -> SendResult:
    return SendResult(reply.code, None)


class WebhookDispatcher:
    """Sends due deliveries: at once when told an event was queued, and whenever the
    scheduler's job asks. Each row is claimed first, so processes never race on it."""

    def __init__(self, clock: IReactorTime, store: WebhookStore,
                 send: Callable[[str, dict[str, str], bytes], Deferred[SendResult]],
                 owner: str, disable_after: int = DISABLE_AFTER,
                 lease_ms: int = LEASE_MS, metrics: GatewayMetrics | None = None,
                 outages: Sequence[DependencyState] = ()) -> None:
        """``outages``: the storage trackers whose known outage errors a failed kick
        leaves to them (the scheduler's job sends what a kick could not)."""
        self._outages = outages
        self._clock = clock
        self._metrics = metrics
        self._store = store
        self._send = send
        self._owner = owner
        self._disable_after = disable_after
        self._lease_ms = lease_ms
        self._kick_call: IDelayedCall | None = None
        self._retry_calls: dict[int, IDelayedCall] = {}
        self._retry_keys = itertools.count()
        self._running: Deferred[Any] | None = None
        self._again = False
        self._stopped = False

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def kick(self) -> None:
        """An event was queued: send what is due soon, without waiting for the job."""
        if self._stopped:
            return
        if self._running is not None:
            self._again = True
        elif self._kick_call is None:
            self._kick_call = self._clock.callLater(0, self._kicked)

    def _kicked(self) -> None:
        self._kick_call = None
        self.run_due().addErrback(
            lambda f: log_failure(log, "Sending due webhook deliveries failed; the "
                                  "webhooks job tries again", f, self._outages))

    def run_due(self) -> Deferred[dict[str, int]]:
        """Send every due delivery; fires with counts per outcome."""
        if self._running is not None:
            self._again = True
            return succeed({})
        self._running = d = self._run()

        def finished(result: Any) -> Any:
            self._running = None
            if self._again and not self._stopped:
                self._again = False
                self.kick()
            return result

        return d.addBoth(finished)

    @inlineCallbacks
    def _run(self) -> Any:
        counts: dict[str, int] = {}
        while True:
            claimed = yield self._store.claim_due(self._owner, self._now_ms(),
                                                  self._lease_ms, BATCH)
            if not claimed:
                break
            results = yield DeferredList([self._attempt(d, e) for d, e in claimed],
                                         consumeErrors=True)
            for ok, outcome in results:
                key = outcome if ok else "error"
                counts[key] = counts.get(key, 0) + 1
            if len(claimed) < BATCH:
                break
        return counts

    @inlineCallbacks
    def _attempt(self, delivery: Delivery, endpoint: Endpoint) -> Any:
        body = delivery.payload.encode()
        timestamp = int(self._clock.seconds())
        result = yield self._send(endpoint.url, signed_headers(endpoint.secret, timestamp,
                                                                body), body)
        outcome = attempt_result(delivery, result.status, result.error, self._now_ms())
        disabled = yield self._store.record_attempt(outcome, self._owner, self._disable_after)
        if self._metrics is not None:
            # Counted once recorded: an attempt the database did not take is tried again.
            self._metrics.webhook_deliveries.labels(METRIC_RESULTS[outcome.outcome]).inc()
            if disabled:
                self._metrics.webhook_deliveries.labels("disabled").inc()
        if disabled:
            log.warn("Webhook endpoint {endpoint_id} disabled after {count} consecutive "
                     "failures", endpoint_id=endpoint.id, count=self._disable_after)
        if outcome.outcome == "failed":
            log.warn("Webhook delivery {delivery_id} to {endpoint_id} failed for good: "
                     "{error}", delivery_id=delivery.id, endpoint_id=endpoint.id,
                     error=outcome.error)
        elif outcome.outcome == "retry" and outcome.next_attempt_at is not None:
            delay = (outcome.next_attempt_at - self._now_ms()) / 1000
            if delay <= QUICK_RETRIES[-1]:
                self._retry_later(max(delay, 0.0))
        return outcome.outcome

    def _retry_later(self, delay: float) -> None:
        if self._stopped:
            return
        key = next(self._retry_keys)

        def fire() -> None:
            self._retry_calls.pop(key, None)
            self.kick()

        self._retry_calls[key] = self._clock.callLater(delay, fire)

    def stop(self) -> Deferred[Any]:
        """No new sends; fires when the one in progress (if any) has finished. Rows left
        pending are sent by the scheduler later."""
        self._stopped = True
        for call in [self._kick_call, *self._retry_calls.values()]:
            if call is not None and call.active():
                call.cancel()
        self._kick_call = None
        self._retry_calls.clear()
        if self._running is None:
            return succeed(None)
        done: Deferred[Any] = Deferred()
        self._running.addBoth(lambda r: (done.callback(None), r)[1])
        return done

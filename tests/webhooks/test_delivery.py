"""Webhook signing, URL checks, the retry schedule, the dispatcher and the sender (SPEC §7).

The dispatcher runs on ``task.Clock`` with a fake ``send`` and the real store on a migrated
database of each engine: Clock time says when attempts happen, the database says what was
stored.
The sender talks to a real HTTP server on 127.0.0.1 in the test's reactor.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.webhooks.delivery import (
    DISABLE_AFTER,
    GIVE_UP_AFTER_MS,
    SendResult,
    WebhookDispatcher,
    WebhookSender,
    attempt_result,
    check_url,
    classify,
    next_attempt_at,
    signature,
    signed_headers,
)
from mnemomd.webhooks.store import Delivery, WebhookStore
from tests.fakes.local import Receiver, closed_port
from tests.storage.engines import MigratedDatabase

SECRET = "9f" * 32
T0 = 1_700_000_000.0

# -- pure functions ----------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = b'{"event_id":"evt-1","data":{"x":"\xc3\xa9"}}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body,
                        hashlib.sha256).hexdigest()
    assert signature(SECRET, 1700000000, body) == f"sha256={expected}"
    assert signature(SECRET, 1700000001, body) != signature(SECRET, 1700000000, body)
    assert signature("other", 1700000000, body) != signature(SECRET, 1700000000, body)


def test_signed_headers_carry_timestamp_version_and_signature():
    headers = signed_headers(SECRET, 1700000000, b"{}")
    assert headers["X-AIP-Timestamp"] == "1700000000"
    assert headers["X-AIP-Version"]
    assert headers["Content-Type"] == "application/json"
    digest = hmac.new(SECRET.encode(), b"1700000000.{}", hashlib.sha256).hexdigest()
    assert headers["X-AIP-Signature"] == f"sha256={digest}"


@pytest.mark.parametrize("url", ["https://hooks.example.com/x",
                                 "https://10.0.0.5:8443/aip?tenant=1"])
def test_https_urls_are_accepted(url):
    assert check_url(url, allow_http=False) is None


def test_plain_http_needs_allow_http():
    assert check_url("http://receiver.internal/hook", allow_http=False) is not None
    assert check_url("http://receiver.internal/hook", allow_http=True) is None


@pytest.mark.parametrize("url", [
    "https://user:pass@hooks.example.com/x",
    "https://token@hooks.example.com/x",
    "https://hooks.example.com/x\r\nX-Injected: 1",
    "https://hooks.example.com/x\n",
    "https://hooks.example.com/a b",
    "ftp://hooks.example.com/x",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "https:///no-host",
    "https://hooks.example.com:99999/x",
    "https://hooks.example.com:0/x",
    "hooks.example.com/x",
    "",
    # Not sendable as is (the sender needs ASCII): refused up front, not retried for 24 h.
    "https://exämple.com/hook",
    "https://hooks.example.com/caf\u00e9",
])
def test_bad_urls_are_refused(url):
    assert check_url(url, allow_http=True) is not None


@pytest.mark.parametrize(("status", "verdict"), [
    (200, "delivered"), (201, "delivered"), (204, "delivered"), (299, "delivered"),
    (400, "final"), (401, "final"), (404, "final"), (410, "final"), (499, "final"),
    (408, "retry"), (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry"),
    (None, "retry"), (301, "retry"),
])
def test_classify(status, verdict):
    assert classify(status) == verdict


def test_retry_schedule():
    created = 1_000_000
    assert [next_attempt_at(n, created, created) - created for n in (1, 2, 3)] == \
        [1000, 4000, 16000]
    later = [next_attempt_at(n, created, created) - created for n in range(4, 12)]
    assert later[0] > 16000
    assert later == sorted(later)  # never shrinking
    # Still retried just before 24 h, given up after.
    assert next_attempt_at(20, created, created + GIVE_UP_AFTER_MS - later[-1]) is not None
    assert next_attempt_at(20, created, created + GIVE_UP_AFTER_MS - later[-1] + 1) is None
    assert next_attempt_at(4, created, created + GIVE_UP_AFTER_MS) is None


def delivery(attempts: int, created_at: int = 0) -> Delivery:
    return Delivery("whd-1", "whk-1", "evt-1", "agent.paused", None, "{}", "pending",
                    attempts, created_at, None, None, created_at, None)


def test_attempt_result():
    ok = attempt_result(delivery(0), 200, None, 5)
    assert (ok.outcome, ok.status_code, ok.next_attempt_at, ok.error) == \
        ("delivered", 200, None, None)
    final = attempt_result(delivery(0), 404, None, 5)
    assert (final.outcome, final.next_attempt_at, final.error) == ("failed", None, "HTTP 404")
    retry = attempt_result(delivery(1), None, "timed out", 5)
    assert (retry.outcome, retry.next_attempt_at, retry.error) == ("retry", 4005, "timed out")
    late = attempt_result(delivery(9), 500, None, GIVE_UP_AFTER_MS)
    assert (late.outcome, late.next_attempt_at) == ("failed", None)


# -- the dispatcher on Clock time ----------------------------------------------------------


class FakeReceiver:
    """``send`` for the dispatcher: answers with ``statuses`` in order (then ``status``)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.statuses: list[int | None] = []
        self.status: int | None = 200
        self.calls: list[dict[str, Any]] = []

    def __call__(self, url: str, headers: dict[str, str], body: bytes) -> Deferred[SendResult]:
        status = self.statuses.pop(0) if self.statuses else self.status
        self.calls.append({"at": self.clock.seconds(), "url": url, "headers": headers,
                           "body": body, "status": status})
        if status is None:
            return succeed(SendResult(None, "ConnectionRefusedError"))
        return succeed(SendResult(status, None))

    def times(self) -> list[float]:
        return [c["at"] - T0 for c in self.calls]

    def accepted(self) -> list[bytes]:
        return [c["body"] for c in self.calls if c["status"] and 200 <= c["status"] < 300]


class DispatcherTests(MigratedDatabase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = WebhookStore(self.db)
        self.receiver = FakeReceiver(self.clock)
        self.dispatcher = WebhookDispatcher(self.clock, self.store, self.receiver, "me")
        self.endpoint = yield self.store.create_endpoint("https://hooks.example/x", ["*"],
                                                         SECRET, self.now_ms())

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    @inlineCallbacks
    def settle(self):
        """Fire what is due on the Clock now and wait for the runs it starts to finish."""
        while True:
            self.clock.advance(0)
            running = self.dispatcher._running
            if running is None:
                return
            done: Deferred[None] = Deferred()

            def finished(result, done=done):
                done.callback(None)
                return result

            running.addBoth(finished)
            yield done

    @inlineCallbacks
    def advance(self, seconds):
        self.clock.advance(seconds)
        yield self.settle()

    @inlineCallbacks
    def queue(self, event="agent.paused"):
        ids = yield self.store.emit(event, "agent-1", {"n": 1}, self.now_ms())
        return ids[0] if ids else None

    @inlineCallbacks
    def test_failing_twice_then_succeeding_delivers_once_after_1_and_4_seconds(self):
        self.receiver.statuses = [500, None, 200]
        delivery_id = yield self.queue()
        self.dispatcher.kick()
        yield self.settle()
        self.assertEqual(self.receiver.times(), [0])
        yield self.advance(0.5)
        self.assertEqual(self.receiver.times(), [0])
        yield self.advance(0.5)
        self.assertEqual(self.receiver.times(), [0, 1])
        yield self.advance(3.5)
        self.assertEqual(self.receiver.times(), [0, 1])
        yield self.advance(0.5)
        self.assertEqual(self.receiver.times(), [0, 1, 5])
        stored = yield self.store.delivery(delivery_id)
        self.assertEqual((stored.status, stored.attempts, stored.last_status_code),
                         ("delivered", 3, 200))
        self.assertEqual(stored.delivered_at, int((T0 + 5) * 1000))
        # Exactly once: nothing more, whatever the job does later.
        yield self.advance(3600)
        yield self.dispatcher.run_due()
        self.assertEqual(len(self.receiver.calls), 3)
        self.assertEqual(self.receiver.accepted(), [stored.payload.encode()])
        # Every attempt carried the same body, signed with the time it was sent.
        for call in self.receiver.calls:
            self.assertEqual(call["body"], stored.payload.encode())
            timestamp = int(call["headers"]["X-AIP-Timestamp"])
            self.assertEqual(timestamp, int(call["at"]))
            digest = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + call["body"],
                              hashlib.sha256).hexdigest()
            self.assertEqual(call["headers"]["X-AIP-Signature"], f"sha256={digest}")
        self.assertEqual(json.loads(self.receiver.calls[0]["body"])["event_id"],
                         stored.event_id)

    @inlineCallbacks
    def test_a_4xx_is_final_after_one_attempt(self):
        self.receiver.status = 404
        delivery_id = yield self.queue()
        self.dispatcher.kick()
        yield self.settle()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        yield self.advance(3600)
        yield self.dispatcher.run_due()
        self.assertEqual(self.receiver.times(), [0])
        stored = yield self.store.delivery(delivery_id)
        self.assertEqual((stored.status, stored.attempts, stored.last_status_code,
                          stored.next_attempt_at), ("failed", 1, 404, None))

    @inlineCallbacks
    def test_408_and_429_are_retried(self):
        self.receiver.statuses = [408, 429, 202]
        delivery_id = yield self.queue()
        self.dispatcher.kick()
        yield self.settle()
        yield self.advance(1)
        yield self.advance(4)
        self.assertEqual(self.receiver.times(), [0, 1, 5])
        stored = yield self.store.delivery(delivery_id)
        self.assertEqual((stored.status, stored.attempts), ("delivered", 3))

    @inlineCallbacks
    def test_after_the_quick_retries_the_job_takes_over(self):
        self.receiver.status = 503
        delivery_id = yield self.queue()
        self.dispatcher.kick()
        yield self.settle()
        for step in (1, 4, 16):
            yield self.advance(step)
        self.assertEqual(self.receiver.times(), [0, 1, 5, 21])
        # No fourth quick retry is scheduled: the next one is the scheduler's.
        yield self.advance(59)
        self.assertEqual(len(self.receiver.calls), 4)
        stored = yield self.store.delivery(delivery_id)
        self.assertEqual(stored.next_attempt_at - self.now_ms(), 1000)
        yield self.advance(1)
        self.assertEqual(len(self.receiver.calls), 4)
        yield self.dispatcher.run_due()
        self.assertEqual(self.receiver.times(), [0, 1, 5, 21, 81])

    @inlineCallbacks
    def test_endpoint_disabled_after_100_consecutive_failures_a_success_resets(self):
        self.receiver.status = 500
        for _ in range(DISABLE_AFTER - 1):
            yield self.queue()
        counts = yield self.dispatcher.run_due()
        self.assertEqual(counts, {"retry": DISABLE_AFTER - 1})
        endpoint = yield self.store.endpoint(self.endpoint.id)
        self.assertEqual((endpoint.enabled, endpoint.consecutive_failures),
                         (True, DISABLE_AFTER - 1))
        # One success (the 99 failed rows are not due again yet) resets the count.
        self.receiver.status = 200
        yield self.queue()
        self.assertEqual((yield self.dispatcher.run_due()), {"delivered": 1})
        self.assertEqual((yield self.store.endpoint(self.endpoint.id)).consecutive_failures, 0)
        # The 99 come back after 1 s and fail again: 99, still enabled.
        self.receiver.status = 500
        yield self.advance(1)
        self.assertEqual(len(self.receiver.calls), 2 * (DISABLE_AFTER - 1) + 1)
        endpoint = yield self.store.endpoint(self.endpoint.id)
        self.assertEqual((endpoint.enabled, endpoint.consecutive_failures),
                         (True, DISABLE_AFTER - 1))
        # The 100th consecutive failure disables it.
        yield self.queue()
        yield self.dispatcher.run_due()
        endpoint = yield self.store.endpoint(self.endpoint.id)
        self.assertEqual((endpoint.enabled, endpoint.consecutive_failures),
                         (False, DISABLE_AFTER))
        self.assertIn(str(DISABLE_AFTER), endpoint.disabled_reason)
        sent = len(self.receiver.calls)
        yield self.advance(4)
        yield self.advance(3600)
        yield self.dispatcher.run_due()
        self.assertEqual(len(self.receiver.calls), sent)

    @inlineCallbacks
    def test_each_recorded_attempt_counts_in_the_deliveries_metric_by_result(self):
        metrics = GatewayMetrics(process_collectors=False)
        self.dispatcher = WebhookDispatcher(self.clock, self.store, self.receiver, "me",
                                            disable_after=2, metrics=metrics)

        def count(result):
            return metrics.registry.get_sample_value("gateway_webhook_deliveries_total",
                                                     {"result": result}) or 0

        self.receiver.statuses = [200, 500, 404]
        for _ in range(3):
            yield self.queue()
            self.assertEqual(len((yield self.dispatcher.run_due())), 1)
        # 200: delivered; 500: retried; 404: failed for good, the 2nd failure in a row,
        # which disables the endpoint.
        self.assertEqual([count(r) for r in ("delivered", "retried", "failed", "disabled")],
                         [1, 1, 1, 1])
        self.assertFalse((yield self.store.endpoint(self.endpoint.id)).enabled)

    @inlineCallbacks
    def test_stop_cancels_scheduled_retries(self):
        self.receiver.status = 500
        delivery_id = yield self.queue()
        self.dispatcher.kick()
        yield self.settle()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        yield self.dispatcher.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.dispatcher.kick()
        yield self.advance(60)
        self.assertEqual(self.receiver.times(), [0])
        # The row stays pending for the scheduler (or the next start) to pick up.
        self.assertEqual((yield self.store.delivery(delivery_id)).status, "pending")

    @inlineCallbacks
    def test_stop_waits_for_the_send_in_progress(self):
        answer: Deferred[SendResult] = Deferred()
        sent = []
        self.dispatcher = WebhookDispatcher(self.clock, self.store,
                                            lambda *a: sent.append(a) or answer, "me")
        delivery_id = yield self.queue()
        self.dispatcher.kick()
        self.clock.advance(0)
        while not sent:  # the claim runs in the database thread first
            yield deferLater(reactor, 0, lambda: None)
        stopped = self.dispatcher.stop()
        self.assertFalse(stopped.called)
        answer.callback(SendResult(200, None))
        yield stopped
        self.assertEqual((yield self.store.delivery(delivery_id)).status, "delivered")

    @inlineCallbacks
    def test_another_owners_lease_is_respected(self):
        self.receiver.status = 200
        delivery_id = yield self.queue()
        claimed = yield self.store.claim_due("someone-else", self.now_ms(), 60_000)
        self.assertEqual(len(claimed), 1)
        yield self.dispatcher.run_due()
        self.assertEqual(self.receiver.calls, [])
        yield self.advance(61)
        yield self.dispatcher.run_due()
        self.assertEqual(len(self.receiver.calls), 1)
        self.assertEqual((yield self.store.delivery(delivery_id)).status, "delivered")


class SQLiteDispatcherTests(DispatcherTests, unittest.TestCase):
    engine = "sqlite"


class PostgresDispatcherTests(DispatcherTests, unittest.TestCase):
    engine = "postgresql"


# -- the sender against a real local server -------------------------------------------------


class SenderTests(unittest.TestCase):
    def make(self, **kwargs) -> WebhookSender:
        sender = WebhookSender(reactor, **kwargs)
        self.addCleanup(sender.close)
        return sender

    def receiver(self, status: int = 200, hang: bool = False,
                 stall_body: bool = False) -> Receiver:
        server = Receiver("/hook", status, b"thanks" * 100)
        server.hang, server.stall_body = hang, stall_body
        self.addCleanup(server.stop)
        return server

    @inlineCallbacks
    def test_posts_the_body_and_headers_unchanged_and_returns_the_status(self):
        server = self.receiver(status=202)
        sender = self.make()
        body = json.dumps({"event_id": "evt-1", "data": {"x": "é"}},
                          ensure_ascii=False).encode()
        headers = signed_headers(SECRET, 1700000000, body)
        result = yield sender.send(server.url, headers, body)
        self.assertEqual(result, SendResult(202, None))
        [got] = server.requests
        self.assertEqual(got["path"], "/hook")
        self.assertEqual(got["raw"], body)
        for name, value in headers.items():
            self.assertEqual(got["header_values"][name.lower()], [value], name)

    @inlineCallbacks
    def test_error_statuses_are_returned_not_raised(self):
        server = self.receiver(status=503)
        result = yield self.make().send(server.url, {}, b"{}")
        self.assertEqual(result, SendResult(503, None))

    @inlineCallbacks
    def test_a_receiver_that_never_answers_times_out_on_the_clock(self):
        server = self.receiver(hang=True)
        clock = Clock()
        sender = self.make(clock=clock, timeout=5)
        arrived = server.arrived()
        d = sender.send(server.url, {}, b"{}")
        results: list[SendResult] = []
        d.addCallback(results.append)
        yield arrived
        clock.advance(4.9)
        self.assertEqual(results, [])
        clock.advance(0.1)
        yield d
        [result] = results
        self.assertIsNone(result.status)
        self.assertIn("timed out", result.error)
        yield server.hanging[0]  # the connection was dropped

    @inlineCallbacks
    def test_a_receiver_stalling_its_body_times_out_and_is_disconnected(self):
        server = self.receiver(stall_body=True)
        clock = Clock()
        sender = self.make(clock=clock, timeout=5)
        arrived = server.arrived()
        d = sender.send(server.url, {}, b"{}")
        yield arrived
        clock.advance(5)
        result = yield d
        self.assertIsNone(result.status)
        self.assertIn("timed out", result.error)
        yield server.hanging[0]  # the sender dropped the connection itself

    @inlineCallbacks
    def test_connection_refused_is_an_error_result(self):
        result = yield self.make().send(f"http://127.0.0.1:{closed_port()}/hook", {}, b"{}")
        self.assertIsNone(result.status)
        self.assertIn("Refused", result.error)

    @inlineCallbacks
    def test_an_unusable_url_is_an_error_result(self):
        result = yield self.make().send("https://bad host/x", {}, b"{}")
        self.assertIsNone(result.status)
        self.assertTrue(result.error)

"""Pieces of the HTTP front door that need no sockets."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.http_headers import Headers

from mnemomd.http.server import BoundedBody, InFlight
from mnemomd.proxy.handler import describe_failure, has_body, is_streaming


def test_bounded_body_stops_storing_past_limit():
    body = BoundedBody(5)
    body.write(b"abc")
    assert not body.too_large
    body.write(b"def")
    assert body.too_large
    assert body.received == 6
    assert body.getvalue() == b"abc"


def test_in_flight_waits_for_all_work():
    tracker = InFlight()
    first, second = Deferred(), Deferred()
    tracker.track(first)
    tracker.track(second)
    idle = tracker.wait_idle()
    first.callback(None)
    assert not idle.called
    second.callback(None)
    assert idle.called and tracker.count == 0
    assert tracker.wait_idle().called


def test_streaming_is_decided_by_content_type():
    assert is_streaming(Headers({b"content-type": [b"text/event-stream; charset=utf-8"]}))
    assert not is_streaming(Headers({b"content-type": [b"application/json"]}))
    assert not is_streaming(Headers({}))


def test_body_presence_follows_framing_headers():
    assert has_body(Headers({b"content-length": [b"0"]}))
    assert has_body(Headers({b"transfer-encoding": [b"chunked"]}))
    assert not has_body(Headers({}))


def test_failure_description_is_short_and_plain():
    failure = Failure(ResponseNeverReceived([Failure(ConnectionRefusedError("x"))]))
    assert "refused" in describe_failure(failure).lower()

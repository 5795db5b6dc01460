"""The streaming relay: pass-through, flow control, idle timeout, disconnects."""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

from mnemomd.proxy.relay import ResponseCapture, StreamRelay


class ClientRequest:
    """The parts of a twisted.web request the relay uses, recorded."""

    def __init__(self):
        self._disconnected = False
        self.written: list[bytes] = []
        self.producer = None
        self.finished = False
        self.lost = False

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        assert not self.finished
        self.written.append(data)

    def finish(self):
        self.finished = True

    def loseConnection(self):
        self.lost = True


class UpstreamTransport:
    def __init__(self):
        self.paused = False
        self.stopped = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.stopped = True


def make_relay(capture_limit=1024, idle=30.0):
    clock = Clock()
    request = ClientRequest()
    relay = StreamRelay(request, clock, idle, ResponseCapture(capture_limit), "rid")
    transport = UpstreamTransport()
    relay.makeConnection(transport)
    outcomes = []
    relay.done.addCallback(outcomes.append)
    return relay, request, transport, clock, outcomes


def test_each_chunk_written_as_it_arrives():
    relay, request, _, _, outcomes = make_relay()
    relay.dataReceived(b"event: a\n")
    assert request.written == [b"event: a\n"]
    relay.dataReceived(b"data: {}\n\n")
    assert request.written == [b"event: a\n", b"data: {}\n\n"]
    relay.connectionLost(Failure(ResponseDone()))
    assert request.finished and request.producer is None
    assert outcomes[0].ending == "complete"
    assert outcomes[0].bytes_sent == 19


def test_close_delimited_body_is_complete():
    relay, request, _, _, outcomes = make_relay()
    relay.dataReceived(b"x")
    relay.connectionLost(Failure(PotentialDataLoss()))
    assert request.finished and outcomes[0].ending == "complete"


def test_slow_client_pauses_upstream():
    relay, request, transport, _, _ = make_relay()
    assert request.producer is relay
    relay.pauseProducing()
    assert transport.paused
    relay.resumeProducing()
    assert not transport.paused


def test_upstream_break_is_a_break_for_the_client():
    relay, request, _, _, outcomes = make_relay()
    relay.dataReceived(b"data: 1\n\n")
    relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
    assert request.lost and not request.finished
    assert outcomes[0].ending == "upstream_failed"


def test_idle_upstream_closes_both_sides():
    relay, request, transport, clock, outcomes = make_relay(idle=5.0)
    relay.dataReceived(b"data: 1\n\n")
    clock.advance(4.9)
    relay.dataReceived(b"data: 2\n\n")
    clock.advance(4.9)
    assert not transport.stopped
    clock.advance(0.2)
    assert transport.stopped
    relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
    assert request.lost and not request.finished
    assert outcomes[0].ending == "idle_timeout"


def test_silence_while_paused_by_the_client_is_not_idle():
    relay, _, transport, clock, _ = make_relay(idle=5.0)
    relay.pauseProducing()
    clock.advance(60)
    assert not transport.stopped
    relay.resumeProducing()
    clock.advance(5.1)
    assert transport.stopped


def test_client_gone_reading_continues_until_capture_full():
    relay, request, transport, _, outcomes = make_relay(capture_limit=10)
    relay.dataReceived(b"12345")
    relay.pauseProducing()
    relay.stopProducing()  # the client connection was lost
    assert not transport.paused, "upstream must be resumed to fill the capture"
    assert not transport.stopped
    relay.dataReceived(b"67890abc")
    assert transport.stopped
    assert request.written == [b"12345"]
    relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
    assert not request.finished and not request.lost
    assert outcomes[0].ending == "client_gone"
    assert outcomes[0].capture.getvalue() == b"1234567890"
    assert outcomes[0].capture.truncated


def test_client_gone_stream_ending_early_still_counts_as_client_gone():
    relay, request, _, _, outcomes = make_relay(capture_limit=100)
    relay.stopProducing()
    relay.dataReceived(b"tail")
    relay.connectionLost(Failure(ResponseDone()))
    assert not request.finished
    assert outcomes[0].ending == "client_gone"
    assert outcomes[0].capture.getvalue() == b"tail"


def test_capture_bounded():
    capture = ResponseCapture(4)
    capture.feed(b"ab")
    capture.feed(b"cdef")
    capture.feed(b"gh")
    assert capture.getvalue() == b"abcd"
    assert capture.full and capture.truncated


class _Request:
    def __init__(self, headers):
        from twisted.web.http_headers import Headers

        self.headers = Headers(headers)


def retry_rule(method, exception, body=None, headers=None):
    from mnemomd.http.client import BytesProducer
    from mnemomd.proxy.relay import _ReplayingClientProtocol

    protocol = _ReplayingClientProtocol.__new__(_ReplayingClientProtocol)
    protocol._has_idempotency_key = b"idempotency-key" in (headers or {})
    producer = BytesProducer(body) if body is not None else None
    return protocol._shouldRetry(method, exception, producer)


def test_reused_connection_retry_rule():
    from twisted.internet.defer import CancelledError
    from twisted.internet.error import ConnectionDone
    from twisted.web._newclient import RequestNotSent, ResponseNeverReceived

    closed = ResponseNeverReceived([Failure(ConnectionDone())])
    assert retry_rule(b"POST", RequestNotSent(), b"{}")
    assert not retry_rule(b"POST", closed, b"{}"), "a POST may have been processed"
    assert retry_rule(b"POST", closed, b"{}", {b"idempotency-key": [b"k1"]})
    assert retry_rule(b"GET", closed)
    assert not retry_rule(b"GET", ResponseNeverReceived([Failure(CancelledError())]))
    assert not retry_rule(b"GET", ValueError("other"))


def make_holding_relay(limit=100):
    clock = Clock()
    request = ClientRequest()
    full = []
    relay = StreamRelay(request, clock, 30.0, ResponseCapture(1024), "rid", hold_limit=limit,
                        on_hold_full=lambda: full.append(True))
    transport = UpstreamTransport()
    relay.makeConnection(transport)
    outcomes = []
    relay.done.addCallback(outcomes.append)
    return relay, request, full, outcomes, transport


def test_held_body_is_not_written_and_handed_over_whole():
    relay, request, full, outcomes, _ = make_holding_relay()
    assert request.producer is None
    relay.dataReceived(b'{"a":')
    relay.dataReceived(b"1}")
    relay.connectionLost(Failure(ResponseDone()))
    assert request.written == [] and not request.finished and not full
    assert outcomes[0].ending == "complete"
    assert outcomes[0].held_body == b'{"a":1}'


def test_body_outgrowing_the_hold_limit_pauses_the_upstream_and_writes_nothing():
    relay, request, full, outcomes, transport = make_holding_relay(limit=4)
    relay.dataReceived(b"abc")
    assert not full and not transport.paused
    relay.dataReceived(b"defg")
    assert full == [True] and transport.paused
    relay.dataReceived(b"h")  # in flight when the pause came: still held
    relay.connectionLost(Failure(ResponseDone()))
    assert request.written == [] and not request.finished and not outcomes
    assert relay.capture.getvalue() == b"abcdefgh"


def test_body_held_at_the_limit_released_by_the_verdict_streams_on():
    relay, request, _, outcomes, transport = make_holding_relay(limit=4)
    relay.dataReceived(b"abcdefg")
    heads = []
    relay.release_hold(lambda: heads.append(True))
    assert heads == [True] and request.written == [b"abcdefg"]
    assert request.producer is relay and not transport.paused
    relay.dataReceived(b"h")
    relay.connectionLost(Failure(ResponseDone()))
    assert request.finished
    assert outcomes[0].held_body is None and outcomes[0].bytes_sent == 8


def test_body_held_at_the_limit_that_ended_meanwhile_is_finished_on_release():
    relay, request, _, outcomes, _ = make_holding_relay(limit=4)
    relay.dataReceived(b"abcdefg")
    relay.connectionLost(Failure(ResponseDone()))
    relay.release_hold(lambda: None)
    assert request.written == [b"abcdefg"] and request.finished
    assert outcomes[0].ending == "complete"


def test_body_held_at_the_limit_refused_closes_the_upstream_and_writes_nothing():
    relay, request, _, outcomes, transport = make_holding_relay(limit=4)
    relay.dataReceived(b"abcdefg")
    relay.abandon()
    assert transport.stopped and not transport.paused
    relay.dataReceived(b"h")
    relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
    assert request.written == [] and not request.finished and not request.lost
    assert outcomes[0].ending == "complete" and outcomes[0].held_body is None


def test_held_body_broken_upstream_breaks_the_client_connection():
    relay, request, _, outcomes, _ = make_holding_relay()
    relay.dataReceived(b"{")
    relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
    assert request.lost
    assert outcomes[0].ending == "upstream_failed" and outcomes[0].held_body is None

"""Slow and greedy clients at the front door, on the harness clock: a deadline for the
whole request (not an idle timer each byte resets), and a cap on connections per address."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from tests.harness import InProcessDaemon
from tests.harness.client import RawClient

DEADLINE = 240  # under the 300 s idle timer of kept-alive connections
BODY = json.dumps({"model": "claude-x", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()
REQUEST = (b"POST /anthropic/v1/messages HTTP/1.1\r\nhost: gateway.test\r\n"
           b"x-api-key: sk-ant\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n" % len(BODY)) + BODY
STREAM_BODY = json.dumps({"model": "claude-x", "max_tokens": 64, "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()


#: These tests let minutes pass after calls; the traces job is kept out of the way (a
#: traces run over fresh outbox rows does not finish on the harness's memory reactor).
QUIET = {"OBSERVER_TRACES_INTERVAL_SECONDS": "86400"}


@pytest.fixture
def slow(make_daemon: Callable[..., InProcessDaemon]) -> InProcessDaemon:
    return make_daemon(REQUEST_TIMEOUT=str(DEADLINE), **QUIET)


def closed_metric(daemon: InProcessDaemon, reason: str) -> float:
    text = daemon.request("GET", "/metrics").body.decode()
    series = f'gateway_client_connections_closed_total{{reason="{reason}"}}'
    match = re.search("^" + re.escape(series) + r" (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def assert_timed_out(client: RawClient) -> None:
    assert client.status == 408
    assert client.json() == {"error": f"Request not received within {DEADLINE} seconds",
                             "type": "request_timeout"}
    assert b"connection: close" in client.received.lower()
    assert client.closed


def test_a_client_sending_one_byte_a_minute_gets_408_at_the_deadline(slow: InProcessDaemon):
    client = slow.open_raw()
    sent = 0
    for _ in range(DEADLINE // 60 - 1):  # one byte a minute: an idle timer would never fire
        client.send(REQUEST[sent:sent + 1])
        slow.flush()
        sent += 1
        slow.advance(60)
        assert client.received == b"" and not client.closed
    client.send(REQUEST[sent:sent + 1])
    slow.flush()
    slow.advance(59)
    assert client.received == b"" and not client.closed
    slow.advance(1)
    assert_timed_out(client)
    assert slow.upstream.requests == []
    assert closed_metric(slow, "request_timeout") == 1


def test_a_half_sent_request_idle_past_the_deadline_gets_408(slow: InProcessDaemon):
    client = slow.open_raw()
    client.send(REQUEST[:len(REQUEST) - 10])  # the head and most of the body
    slow.flush()
    slow.advance(DEADLINE - 1)
    assert client.received == b"" and not client.closed
    slow.advance(1)
    assert_timed_out(client)
    assert slow.upstream.requests == []


def test_a_connection_that_never_sends_gets_408_at_the_deadline(slow: InProcessDaemon):
    client = slow.open_raw()
    slow.advance(DEADLINE - 1)
    assert not client.closed
    slow.advance(1)
    assert_timed_out(client)


def test_a_request_received_in_time_is_answered_and_its_late_bytes_do_not_matter(
        slow: InProcessDaemon):
    client = slow.open_raw()
    client.send(REQUEST[:20])
    slow.flush()
    slow.advance(DEADLINE - 1)
    client.send(REQUEST[20:])
    slow.flush()
    assert client.status == 200
    assert not client.closed  # kept alive: the deadline ended with the body
    slow.advance(DEADLINE)
    assert not client.closed and client.received.count(b"HTTP/1.1 ") == 1


def test_each_request_on_a_kept_alive_connection_has_its_own_deadline(slow: InProcessDaemon):
    client = slow.open_raw()
    client.send(REQUEST)
    slow.flush()
    assert client.status == 200
    slow.advance(DEADLINE - 10)  # idle between requests: not the request deadline
    client.send(REQUEST[:30])  # the next request starts its clock with its first byte
    slow.flush()
    slow.advance(DEADLINE - 1)
    assert client.received.count(b"HTTP/1.1 ") == 1 and not client.closed
    slow.advance(1)
    assert client.received.count(b"HTTP/1.1 408 ") == 1
    assert client.closed


def test_a_streamed_response_longer_than_the_deadline_is_not_cut(slow: InProcessDaemon):
    started = slow.reactor.seconds()
    exchange = slow.request("POST", "/anthropic/v1/messages",
                            {"x-api-key": "sk-ant", "content-type": "application/json",
                             "x-fake-scenario": "gated:long"}, STREAM_BODY)
    assert exchange.status == 200
    events = slow.upstream.state.streams["long"]
    while not exchange.complete:
        slow.advance(DEADLINE / 2)  # the stream outlasts the deadline several times over
        assert exchange.failure is None
        slow.upstream.release("long")
        slow.flush()
    assert events.events_sent >= 3
    assert slow.reactor.seconds() - started >= DEADLINE
    assert closed_metric(slow, "request_timeout") == 0


def test_a_slow_client_does_not_hold_up_normal_clients(slow: InProcessDaemon):
    slowloris = [slow.open_raw("10.66.0.1") for _ in range(100)]
    for client in slowloris:
        client.send(b"POST /anthropic/v1/messages HTTP/1.1\r\n")
    slow.flush()
    exchange = slow.request("POST", "/anthropic/v1/messages",
                            {"x-api-key": "sk-ant", "content-type": "application/json"}, BODY)
    assert exchange.status == 200
    slow.advance(DEADLINE)
    assert all(client.status == 408 and client.closed for client in slowloris)
    assert closed_metric(slow, "request_timeout") == 100


# -- connections per client address --------------------------------------------------------


@pytest.fixture
def capped(make_daemon: Callable[..., InProcessDaemon]) -> InProcessDaemon:
    return make_daemon(MAX_CONNECTIONS_PER_CLIENT="100", REQUEST_TIMEOUT=str(DEADLINE), **QUIET)


def test_101_connections_from_one_address_the_cap_holds_and_others_are_served(
        capped: InProcessDaemon):
    held = [capped.open_raw("10.66.0.1") for _ in range(100)]
    assert not any(client.closed for client in held)
    over = capped.open_raw("10.66.0.1")
    assert over.status == 429
    assert over.json() == {"error": "Too many open connections from this address (limit 100)",
                           "type": "too_many_connections"}
    assert over.closed
    other = capped.open_raw("10.77.0.2")
    other.send(REQUEST)
    capped.flush()
    assert other.status == 200
    assert not any(client.closed for client in held)
    assert closed_metric(capped, "per_client_limit") == 1


def test_a_closed_connection_frees_its_place_under_the_cap(capped: InProcessDaemon):
    held = [capped.open_raw("10.66.0.1") for _ in range(100)]
    held[0].close()
    capped.flush()
    again = capped.open_raw("10.66.0.1")
    again.send(REQUEST)
    capped.flush()
    assert again.status == 200


def test_connections_closed_by_the_deadline_free_their_places(capped: InProcessDaemon):
    [capped.open_raw("10.66.0.1") for _ in range(100)]
    capped.advance(DEADLINE)
    late = capped.open_raw("10.66.0.1")
    late.send(REQUEST)
    capped.flush()
    assert late.status == 200


def test_no_cap_when_the_setting_is_zero(make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(MAX_CONNECTIONS_PER_CLIENT="0")
    clients = [daemon.open_raw("10.66.0.1") for _ in range(300)]
    assert not any(client.closed for client in clients)

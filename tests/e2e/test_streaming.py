"""Streaming through the daemon: no buffering, flow control, awkward upstreams."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.e2e.daemon import Daemon
from tests.fakes import canned
from tests.fakes.process import release, stream_status, wait_until
from tests.fakes.rawhttp import IncompleteBody, raw_request

ANTHROPIC_HEADERS = {"x-api-key": "sk-stream-test", "content-type": "application/json"}
MODEL = "claude-stream"


def stream_body(**extra: object) -> bytes:
    return json.dumps({"model": MODEL, "max_tokens": 1024, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


def expected_events() -> list[bytes]:
    events = canned.canned(canned.Api.ANTHROPIC_MESSAGES, True, MODEL)
    assert isinstance(events, list) and len(events) > 3
    return events


def test_each_event_forwarded_before_the_next_is_sent(daemon: Daemon, upstream: str):
    """The fake sends event k+1 only after the client has received event k through the
    gateway: any buffering in the gateway would stall this exchange."""
    stream_id = uuid.uuid4().hex
    events = expected_events()
    headers = ANTHROPIC_HEADERS | {"x-fake-scenario": f"gated:{stream_id}"}
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", stream_body(),
                     headers, timeout=10) as response:
        assert response.status == 200
        assert response.header("x-accel-buffering") == "no"
        received = []
        for index in range(len(events)):
            event = response.read_event()
            assert event == events[index]
            status = stream_status(upstream, stream_id)
            assert status["events_sent"] == index + 1, "fake sent ahead of the client"
            received.append(event)
            if index + 1 < len(events):
                release(upstream, stream_id)
        assert response.read_event() is None
        assert response.complete
    assert received == events


def test_slow_client_pauses_upstream_and_memory_stays_flat(daemon: Daemon, upstream: str):
    stream_id = uuid.uuid4().hex
    total = 2 * 1024**3
    headers = ANTHROPIC_HEADERS | {"x-fake-scenario": f"flood:{stream_id}:{total}"}
    # Warm the daemon up so the baseline includes its steady-state allocations.
    raw_request(daemon.base_url, "GET", "/health/live").close()
    baseline = daemon.rss_bytes()
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", stream_body(),
                     headers, timeout=30, recv_buffer=4096) as response:
        assert response.status == 200
        assert response.read_piece()
        # The client now stops reading. Upstream sending must come to a stop.
        readings: list[int] = []

        def upstream_stalled() -> bool:
            readings.append(stream_status(upstream, stream_id)["bytes_sent"])
            return len(readings) > 20 and len(set(readings[-20:])) == 1

        wait_until(upstream_stalled, timeout=60, interval=0.05, what="upstream to pause")
        sent = readings[-1]
        assert stream_status(upstream, stream_id)["paused"]
        assert sent < 64 * 1024**2, f"upstream sent {sent} bytes to a client that stopped"
        growth = daemon.rss_bytes() - baseline
        assert growth < 48 * 1024**2, f"daemon grew by {growth} bytes"
    # The client is gone: the daemon reads at most its analysis cap, then hangs up.
    wait_until(lambda: stream_status(upstream, stream_id)["client_gone"], timeout=30,
               what="daemon to close the upstream connection")
    assert stream_status(upstream, stream_id)["bytes_sent"] < sent + 8 * 1024**2


def test_events_and_characters_split_across_chunks_arrive_intact(daemon: Daemon):
    headers = ANTHROPIC_HEADERS | {"x-fake-scenario": "split"}
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", stream_body(),
                     headers, timeout=20) as response:
        body = response.read_body()
    assert body == b"".join(expected_events())
    assert canned.TEXT in "".join(
        json.loads(line[6:]).get("delta", {}).get("text", "")
        for line in body.decode("utf-8").splitlines() if line.startswith("data: "))


def test_split_json_response_arrives_intact(daemon: Daemon):
    body = json.dumps({"model": MODEL, "max_tokens": 1024,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = ANTHROPIC_HEADERS | {"x-fake-scenario": "split"}
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", body, headers,
                     timeout=20) as response:
        received = response.read_body()
    assert received == canned.canned(canned.Api.ANTHROPIC_MESSAGES, False, MODEL)
    assert json.loads(received)["content"][1]["text"] == canned.TEXT


def test_upstream_closing_mid_stream_is_seen_by_the_client(daemon: Daemon):
    headers = ANTHROPIC_HEADERS | {"x-fake-scenario": "abort_after:3"}
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", stream_body(),
                     headers, timeout=10) as response:
        assert response.status == 200
        body, complete = response.read_until_closed()
    assert not complete
    assert body == b"".join(expected_events()[:3])
    line = daemon.wait_for_line("Upstream closed the response before it was complete")
    assert json.loads(line)["level"] == "error"


def test_idle_upstream_mid_stream_closes_both_sides(start, upstream: str):
    daemon = start({"STREAM_IDLE_TIMEOUT": "0.5"})
    stream_id = uuid.uuid4().hex
    headers = ANTHROPIC_HEADERS | {"x-fake-scenario": f"gated:{stream_id}"}
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", stream_body(),
                     headers, timeout=10) as response:
        assert response.read_event() == expected_events()[0]
        with pytest.raises(IncompleteBody):
            response.read_body()
    wait_until(lambda: stream_status(upstream, stream_id)["client_gone"], timeout=10,
               what="upstream connection closed")
    assert json.loads(daemon.wait_for_line("was silent for"))["level"] == "warn"


def test_openai_stream_through_named_agent_route(daemon: Daemon):
    body = json.dumps({"model": "gpt-x", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"authorization": "Bearer sk-o", "content-type": "application/json"}
    with raw_request(daemon.base_url, "POST", "/agent/planner/openai/v1/chat/completions",
                     body, headers, timeout=10) as response:
        received = response.read_body()
    assert received == b"".join(canned.canned(canned.Api.OPENAI_CHAT, True, "gpt-x"))


def test_gemini_sse_stream(daemon: Daemon):
    body = json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode()
    path = "/gemini/v1beta/models/gemini-x:streamGenerateContent?alt=sse"
    with raw_request(daemon.base_url, "POST", path, body,
                     {"x-goog-api-key": "g-key", "content-type": "application/json"},
                     timeout=10) as response:
        assert response.header("content-type").startswith("text/event-stream")
        received = response.read_body()
    assert received == b"".join(canned.canned(canned.Api.GEMINI_GENERATE, True, "gemini-x"))

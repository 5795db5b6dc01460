"""Enforce-mode streams held at the end of the reasoning, in process: what the client has
at each step is read off the exchange while the fake analysis model holds its answer, so
"nothing after the reasoning before the verdict" is proven by cause, not by timing."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes import canned
from tests.fakes.canned import Api, CannedRequest
from tests.harness import InProcessDaemon
from tests.harness.client import Exchange
from tests.integrity.fakes import VERDICT_VIOLATION

TOOL = "send_to_pastebin"
JSON = {"content-type": "application/json"}
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class StreamCall:
    """One streaming API as a client calls it, and where its reasoning ends."""

    name: str
    headers: dict[str, str]
    path: str
    payload: dict[str, Any]
    canned: CannedRequest
    #: How many of the canned events come before the first output event (by the API's
    #: documentation: head and reasoning events).
    reasoning_events: int
    #: Keepalive bytes this API's SDKs ignore.
    keepalive: bytes

    def events(self) -> list[bytes]:
        return canned.stream_events(self.canned)

    def prefix(self) -> bytes:
        return b"".join(self.events()[: self.reasoning_events])

    def whole(self) -> bytes:
        return b"".join(self.events())

    def send(self, daemon: InProcessDaemon, scenario: str | None = None) -> Exchange:
        headers = self.headers | JSON
        if scenario is not None:
            headers = headers | {"x-fake-scenario": scenario}
        return daemon.request("POST", self.path, headers, json.dumps(self.payload).encode())


CALLS = [
    StreamCall(
        "anthropic", {"x-api-key": "sk-held-ant"}, "/anthropic/v1/messages",
        {"model": "claude-x", "max_tokens": 2048, "stream": True, "messages": MESSAGES,
         "tools": [{"name": TOOL, "input_schema": {"type": "object"}}]},
        CannedRequest(Api.ANTHROPIC_MESSAGES, "claude-x", True, TOOL), 8,
        b'event: ping\ndata: {"type": "ping"}\n\n'),
    StreamCall(
        "openai_chat", {"authorization": "Bearer sk-held-oai"}, "/openai/v1/chat/completions",
        {"model": "deepseek-reasoner", "stream": True, "messages": MESSAGES,
         "tools": [{"type": "function", "function": {"name": TOOL, "parameters": {}}}]},
        CannedRequest(Api.OPENAI_CHAT, "deepseek-reasoner", True, TOOL), 4, b": ping\n\n"),
    StreamCall(
        "openai_responses", {"authorization": "Bearer sk-held-oai"}, "/openai/v1/responses",
        {"model": "o4-mini", "input": "hi", "stream": True,
         "tools": [{"type": "function", "name": TOOL, "parameters": {}}]},
        CannedRequest(Api.OPENAI_RESPONSES, "o4-mini", True, TOOL), 10, b": ping\n\n"),
    StreamCall(
        "gemini", {"x-goog-api-key": "g-held"},
        "/gemini/v1beta/models/gemini-x:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
         "tools": [{"functionDeclarations": [{"name": TOOL}]}]},
        CannedRequest(Api.GEMINI_GENERATE, "gemini-x", True, TOOL), 3, b"\r\n"),
]
IDS = [c.name for c in CALLS]


def enforcing(make_daemon: Callable[..., InProcessDaemon], **settings: str) -> InProcessDaemon:
    return make_daemon(AIP_DEFAULT_ENFORCEMENT="enforce", **settings)


def assert_no_output(data: bytes) -> None:
    """None of the text or tool call the model produced after its reasoning."""
    for piece in canned.TEXT_PIECES:
        if piece not in canned.THINKING_TEXT:
            assert piece.encode() not in data
    assert TOOL.encode() not in data


def error_document(call: StreamCall, event: bytes) -> dict[str, Any]:
    """The error event's JSON, checked against each API's documented error shape."""
    if call.name in ("anthropic", "openai_responses"):
        assert event.startswith(b"event: error\ndata: ")
    else:
        assert event.startswith(b"data: {\"error\":")
    assert event.endswith(b"\r\n\r\n" if call.name == "gemini" else b"\n\n")
    document = json.loads(event.split(b"data: ", 1)[1])
    if call.name == "anthropic":
        assert document["type"] == "error"
        return document["error"]
    if call.name == "openai_responses":
        assert document["type"] == "error"
        assert document["code"] == document["error"]["type"]
        assert document["sequence_number"] == call.reasoning_events  # the next number
        return document["error"]
    error = document["error"]
    if call.name == "openai_chat":
        assert error["code"] == error["type"]
    else:
        assert (error["code"], error["status"]) == (403, "PERMISSION_DENIED")
        assert error["details"][0]["metadata"]["checkpoint_id"] == (error["checkpoint_id"] or "")
    return error


def seconds(daemon: InProcessDaemon, total: float, step: float = 0.1) -> None:
    """Let ``total`` seconds pass in small steps, as a running reactor would."""
    for _ in range(round(total / step)):
        daemon.advance(step)


def checkpoints(daemon: InProcessDaemon) -> list[tuple[str, str, bool]]:
    rows = daemon.rows("SELECT id, verdict, synthetic FROM integrity_checkpoints")
    return [(i, v, bool(s)) for i, v, s in rows]


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_clear_verdict_output_waits_for_it_then_the_upstream_bytes_exactly(
        make_daemon: Callable[..., InProcessDaemon], call: StreamCall):
    daemon = enforcing(make_daemon)
    daemon.analysis.script = ["hold"]
    exchange = call.send(daemon)
    assert exchange.status == 200
    assert exchange.header("x-aip-verdict") == "pending"
    assert exchange.header("x-aip-enforcement") == "enforce"
    assert exchange.header("content-length") is None
    # The upstream has sent its whole answer; the client has the reasoning and no more.
    assert len(daemon.analysis.held) == 1
    assert exchange.body == call.prefix()
    assert canned.THINKING_PIECES[-1].encode() in exchange.body
    assert_no_output(exchange.body)
    assert not exchange.complete
    daemon.release_analysis()
    assert exchange.complete and exchange.body == call.whole()
    [(_, verdict, _)] = checkpoints(daemon)
    assert verdict == "review_needed"


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_clear_verdict_with_bytes_cut_anywhere(make_daemon: Callable[..., InProcessDaemon],
                                               call: StreamCall):
    daemon = enforcing(make_daemon)
    daemon.analysis.script = ["hold"]
    exchange = call.send(daemon, "split")
    assert len(daemon.analysis.held) == 1
    assert exchange.body == call.prefix()
    daemon.release_analysis()
    assert exchange.complete and exchange.body == call.whole()


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_violation_ends_the_stream_with_the_providers_error_event(
        make_daemon: Callable[..., InProcessDaemon], call: StreamCall):
    daemon = enforcing(make_daemon)
    daemon.analysis.default = VERDICT_VIOLATION
    exchange = call.send(daemon)
    assert exchange.status == 200 and exchange.complete
    body = exchange.body
    assert body.startswith(call.prefix())
    assert_no_output(body)
    error = error_document(call, body[len(call.prefix()):])
    [(checkpoint_id, verdict, synthetic)] = checkpoints(daemon)
    assert (verdict, synthetic) == ("boundary_violation", False)
    assert error["type"] == "integrity_violation"
    assert error["checkpoint_id"] == checkpoint_id
    assert error["concerns"][0]["category"] == "prompt_injection"
    assert "reasoning crossed" in error["message"]


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_analysis_starts_when_the_reasoning_ends_not_when_the_stream_does(
        make_daemon: Callable[..., InProcessDaemon], call: StreamCall):
    daemon = enforcing(make_daemon)
    daemon.analysis.script = ["hold"]
    exchange = call.send(daemon, "gated:held")
    for _ in range(call.reasoning_events - 1):
        assert daemon.analysis.requests == []
        daemon.upstream.release("held")
        daemon.flush()
    assert daemon.analysis.requests == [] and exchange.body == call.prefix()
    daemon.upstream.release("held")  # the first output event
    daemon.flush()
    assert len(daemon.analysis.requests) == 1
    status = daemon.upstream.state.streams["held"]
    assert status.events_sent == call.reasoning_events + 1 and not status.finished
    assert exchange.body == call.prefix()


@pytest.mark.parametrize("mode", ["observe", "nudge"])
@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_observe_and_nudge_never_hold(make_daemon: Callable[..., InProcessDaemon],
                                      call: StreamCall, mode: str):
    daemon = make_daemon(AIP_DEFAULT_ENFORCEMENT=mode)
    daemon.analysis.script = ["hold"]
    exchange = call.send(daemon)
    assert exchange.complete and exchange.body == call.whole()
    assert len(daemon.analysis.held) == 1, "the analysis had not answered yet"
    daemon.release_analysis()


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_a_long_analysis_gets_keepalives_of_the_apis_own_form(
        make_daemon: Callable[..., InProcessDaemon], call: StreamCall):
    daemon = enforcing(make_daemon, AIP_ANALYSIS_TIMEOUT_MS="30000")
    daemon.analysis.script = ["hold"]
    exchange = call.send(daemon)
    assert exchange.body == call.prefix()
    seconds(daemon, 4.9)
    assert exchange.body == call.prefix(), "no keepalive before a full interval"
    seconds(daemon, 6.1)  # 11 s on hold
    assert exchange.body == call.prefix() + call.keepalive * 2
    daemon.release_analysis()
    assert exchange.complete
    assert exchange.body == call.prefix() + call.keepalive * 2 + call.whole()[
        len(call.prefix()):]


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_analysis_timeout_releases_under_fail_open(
        make_daemon: Callable[..., InProcessDaemon], call: StreamCall):
    daemon = enforcing(make_daemon, AIP_ANALYSIS_TIMEOUT_MS="1000")
    daemon.analysis.script = ["hold"]
    exchange = call.send(daemon)
    daemon.advance(0.9)
    assert exchange.body == call.prefix()
    daemon.advance(0.2)
    assert exchange.complete and exchange.body == call.whole()
    [(_, verdict, synthetic)] = checkpoints(daemon)
    assert (verdict, synthetic) == ("clear", True)
    daemon.release_analysis()


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_analysis_timeout_ends_with_the_error_event_under_fail_closed(
        make_daemon: Callable[..., InProcessDaemon], call: StreamCall):
    daemon = enforcing(make_daemon, AIP_ANALYSIS_TIMEOUT_MS="1000",
                       AIP_FAILURE_MODE="fail_closed")
    daemon.analysis.script = ["hold"]
    exchange = call.send(daemon)
    daemon.advance(1.1)
    assert exchange.complete
    assert_no_output(exchange.body)
    error = error_document(call, exchange.body[len(call.prefix()):])
    [(checkpoint_id, verdict, synthetic)] = checkpoints(daemon)
    assert (verdict, synthetic) == ("boundary_violation", True)
    assert error["type"] == "integrity_violation"
    assert (error["checkpoint_id"], error["synthetic"]) == (checkpoint_id, True)
    assert error["concerns"] == []
    daemon.release_analysis()


def test_a_stream_that_ends_while_held_ends_cleanly_after_the_verdict(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = enforcing(make_daemon)
    daemon.analysis.script = ["hold"]
    call = CALLS[0]
    exchange = call.send(daemon)
    assert daemon.upstream.state.requests and not exchange.complete
    daemon.release_analysis()
    assert exchange.complete and exchange.failure is None


def test_an_upstream_break_while_held_reaches_the_client_as_a_break(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = enforcing(make_daemon)
    daemon.analysis.script = ["hold"]
    call = CALLS[0]
    exchange = call.send(daemon, f"abort_after:{call.reasoning_events + 2}")
    assert exchange.body == call.prefix()
    daemon.release_analysis()
    assert not exchange.complete and exchange.failure is not None
    assert exchange.body == b"".join(call.events()[: call.reasoning_events + 2])
    assert any("before it was complete" in e for e in daemon.take_errors())


def test_a_stream_without_reasoning_is_not_held_by_default(
        make_daemon: Callable[..., InProcessDaemon]):
    """``without_reasoning: allow`` (the default): nothing to hold for, verdict skipped."""
    daemon = enforcing(make_daemon)
    daemon.analysis.script = ["hold"]
    payload = {"model": "gpt-x", "stream": True, "messages": MESSAGES}
    exchange = daemon.request("POST", "/openai/v1/chat/completions",
                              {"authorization": "Bearer sk-plain"} | JSON,
                              json.dumps(payload).encode())
    assert exchange.complete
    assert exchange.body == b"".join(canned.canned(Api.OPENAI_CHAT, True, "gpt-x"))
    assert daemon.analysis.requests == [] and checkpoints(daemon) == []


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
@pytest.mark.parametrize("violating", [True, False])
def test_a_stalled_database_neither_delays_nor_changes_a_held_streams_verdict(
        make_daemon: Callable[..., InProcessDaemon], mode: str, violating: bool):
    """The analysis answered, but the database stalls: the verdict decides at once, as
    it would with the database up (its checkpoint is written behind it), whatever the
    failure mode: a violation is blocked, any other verdict released."""
    daemon = enforcing(make_daemon, AIP_FAILURE_MODE=mode)
    daemon.analysis.script = ["hold"]
    call = CALLS[0]
    exchange = call.send(daemon)
    daemon.threads.stall()
    daemon.release_analysis(VERDICT_VIOLATION if violating else None)
    assert exchange.complete
    rest = exchange.body[len(call.prefix()):]
    if violating:
        assert_no_output(rest)
        error = error_document(call, rest)
        assert error["type"] == "integrity_violation" and error["checkpoint_id"]
    else:
        assert exchange.body == call.whole()
    daemon.threads.resume()
    daemon.flush()
    [(_, verdict, synthetic)] = checkpoints(daemon)
    assert (verdict == "boundary_violation", synthetic) == (violating, False)


BODY_CALL = {"model": "claude-x", "max_tokens": 2048, "messages": MESSAGES}


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_a_stalled_database_does_not_release_a_violating_held_body(
        make_daemon: Callable[..., InProcessDaemon], mode: str):
    daemon = enforcing(make_daemon, AIP_FAILURE_MODE=mode)
    daemon.analysis.script = ["hold"]
    exchange = daemon.request("POST", "/anthropic/v1/messages", {"x-api-key": "sk-b"} | JSON,
                              json.dumps(BODY_CALL).encode())
    daemon.threads.stall()
    daemon.release_analysis(VERDICT_VIOLATION)
    assert exchange.status == 403
    refusal = exchange.json()
    assert refusal["type"] == "integrity_violation" and refusal["checkpoint_id"]
    assert canned.TEXT.encode() not in exchange.body
    daemon.threads.resume()
    daemon.flush()


def test_a_check_still_running_when_the_hold_timed_out_is_not_made_twice(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = enforcing(make_daemon)
    daemon.analysis.script = ["hold"]
    call = CALLS[0]
    exchange = call.send(daemon)
    daemon.threads.stall()
    daemon.release_analysis()
    seconds(daemon, 12.1)
    assert exchange.complete  # released by the time limit (fail_open)
    daemon.threads.resume()
    daemon.flush()
    assert len(daemon.analysis.requests) == 1
    assert len(checkpoints(daemon)) == 1

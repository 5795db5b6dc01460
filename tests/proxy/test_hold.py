"""The held-stream relay and its gate, driven by hand: a clock, a recorded client request,
a recorded upstream transport and a gate whose answers the test gives."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed

from mnemomd.integrity.pipeline import HoldCheck
from mnemomd.providers import PROVIDERS
from mnemomd.providers.base import Extraction, RequestInfo, StreamError
from mnemomd.proxy.hold import (
    HOLD_TO_END,
    PASS,
    HeldStreamRelay,
    HoldSettings,
    PipelineGate,
    StreamFormat,
    within,
)
from mnemomd.proxy.relay import ResponseCapture
from tests.fakes import canned
from tests.fakes.canned import Api, CannedRequest
from tests.proxy.test_relay import ClientRequest, UpstreamTransport

INFO = RequestInfo("anthropic.messages", "claude-x", True, None)
EVENTS = canned.stream_events(CannedRequest(Api.ANTHROPIC_MESSAGES, "claude-x", True))
PREFIX = b"".join(EVENTS[:8])  # message_start, the thinking block and a ping
REST = b"".join(EVENTS[8:])
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
VIOLATION = StreamError("integrity_violation", "withheld", "ic-1")


class ScriptedGate:
    """Records what the relay asks; the test answers through the Deferreds."""

    def __init__(self) -> None:
        self.hold_points: list[tuple[bytes, bool]] = []
        self.ends: list[tuple[bytes, bool]] = []
        self.answers: list[Deferred[Any]] = []
        self.timeouts = 0
        self.overflows = 0
        self.on_timeout_answer: Any = PASS

    def at_hold_point(self, prefix: bytes, truncated: bool) -> Deferred[Any]:
        self.hold_points.append((prefix, truncated))
        self.answers.append(Deferred())
        return self.answers[-1]

    def at_end(self, body: bytes, truncated: bool) -> Deferred[Any]:
        self.ends.append((body, truncated))
        self.answers.append(Deferred())
        return self.answers[-1]

    def on_timeout(self) -> Any:
        self.timeouts += 1
        return self.on_timeout_answer

    def on_overflow(self) -> Any:
        self.overflows += 1
        return VIOLATION


class Setup:
    def __init__(self, buffer_bytes: int = 1 << 20, capture: int = 1 << 20,
                 idle: float = 300.0) -> None:
        self.clock = Clock()
        self.request = ClientRequest()
        self.transport = UpstreamTransport()
        self.gate = ScriptedGate()
        self.relay = HeldStreamRelay(
            self.request, self.clock, idle, ResponseCapture(capture), "rid",
            StreamFormat.of(PROVIDERS["anthropic"], INFO), self.gate,
            HoldSettings(buffer_bytes=buffer_bytes, keepalive_seconds=5.0,
                         timeout_seconds=12.0))
        self.relay.makeConnection(self.transport)
        self.outcomes: list[Any] = []
        self.relay.done.addCallback(self.outcomes.append)

    @property
    def written(self) -> bytes:
        return b"".join(self.request.written)

    def feed(self, data: bytes) -> None:
        self.relay.dataReceived(data)

    def end(self, clean: bool = True) -> None:
        reason = ResponseDone() if clean else ResponseFailed([Failure(ConnectionLost())])
        self.relay.connectionLost(Failure(reason))


def test_reasoning_is_relayed_event_by_event_and_a_partial_event_waits():
    s = Setup()
    first = EVENTS[0]
    s.feed(first[:10])
    assert s.written == b""
    s.feed(first[10:] + EVENTS[1][:-1])
    assert s.written == first
    s.feed(EVENTS[1][-1:])
    assert s.written == first + EVENTS[1]
    assert s.request.producer is s.relay


def test_the_first_output_event_is_held_and_the_gate_gets_the_reasoning():
    s = Setup()
    s.feed(PREFIX + REST)
    assert s.written == PREFIX
    assert s.gate.hold_points == [(PREFIX, False)]
    s.end()
    assert not s.request.finished and not s.outcomes, "nothing ends before the verdict"
    s.gate.answers[0].callback(PASS)
    assert s.written == PREFIX + REST and s.request.finished
    assert s.outcomes[0].ending == "complete"
    assert s.outcomes[0].bytes_sent == len(PREFIX + REST)


def test_after_release_the_stream_is_a_plain_relay():
    s = Setup()
    s.feed(PREFIX + EVENTS[8])
    s.gate.answers[0].callback(PASS)
    s.feed(b"event: x")  # not even a whole event: written as it comes
    assert s.request.written[-1] == b"event: x"


def test_a_violation_writes_the_error_event_and_closes_the_upstream():
    s = Setup()
    s.feed(PREFIX + EVENTS[8])
    s.gate.answers[0].callback(VIOLATION)
    assert s.written == PREFIX + (
        b'event: error\ndata: {"type":"error","error":{"type":"integrity_violation",'
        b'"message":"withheld","checkpoint_id":"ic-1","concerns":[]}}\n\n')
    assert s.request.finished and s.transport.stopped
    s.feed(REST[len(EVENTS[8]):])  # in flight: dropped
    assert canned.TEXT_PIECES[-1].encode() not in s.written
    s.end(clean=False)
    assert s.outcomes[0].ending == "complete" and s.relay.error is VIOLATION


def test_a_violation_after_the_upstream_ended_finishes_cleanly():
    s = Setup()
    s.feed(PREFIX + REST)
    s.end()
    s.gate.answers[0].callback(VIOLATION)
    assert s.request.finished and not s.transport.stopped
    assert s.outcomes[0].ending == "complete"


def test_release_after_a_broken_upstream_breaks_the_client_connection():
    s = Setup()
    s.feed(PREFIX + EVENTS[8])
    s.end(clean=False)
    s.gate.answers[0].callback(PASS)
    assert s.written == PREFIX + EVENTS[8]
    assert s.request.lost and not s.request.finished
    assert s.outcomes[0].ending == "upstream_failed"


def test_held_bytes_past_the_cap_pause_the_upstream_until_the_verdict():
    s = Setup(buffer_bytes=300, idle=1.0)
    s.feed(PREFIX + EVENTS[8])
    assert not s.transport.paused
    s.feed(REST[len(EVENTS[8]):])
    assert s.transport.paused
    s.clock.pump([1.0] * 5)  # the silence is ours: no idle timeout while paused
    assert not s.transport.stopped
    s.gate.answers[0].callback(PASS)
    assert not s.transport.paused and s.written == PREFIX + PING + REST


def test_a_partial_event_larger_than_the_cap_is_held_as_output():
    s = Setup(buffer_bytes=100)
    s.feed(PREFIX + b"event: content_block_delta\ndata: " + b"x" * 200)
    assert s.written == PREFIX and s.gate.hold_points == [(PREFIX, False)]


def test_client_pause_and_hold_pause_are_both_honoured():
    s = Setup(buffer_bytes=300)
    s.relay.pauseProducing()
    assert s.transport.paused
    s.relay.resumeProducing()
    assert not s.transport.paused
    s.feed(PREFIX + REST)
    assert s.transport.paused
    s.relay.pauseProducing()
    s.gate.answers[0].callback(PASS)
    assert s.transport.paused, "the client still wants a pause"
    s.relay.resumeProducing()
    assert not s.transport.paused


def test_keepalives_every_interval_while_holding_and_none_after():
    s = Setup()
    s.feed(PREFIX + EVENTS[8])
    s.clock.advance(4.9)
    assert s.written == PREFIX
    s.clock.advance(0.1)
    assert s.written == PREFIX + PING
    s.clock.advance(5.0)
    assert s.written == PREFIX + PING * 2
    s.gate.answers[0].callback(PASS)
    s.clock.advance(20.0)
    assert s.written == PREFIX + PING * 2 + EVENTS[8]


def test_no_answer_in_time_is_the_gates_timeout_answer_and_a_late_answer_is_ignored():
    s = Setup()
    s.gate.on_timeout_answer = VIOLATION
    s.feed(PREFIX + EVENTS[8])
    s.clock.pump([1.0] * 12)
    assert s.gate.timeouts == 1 and s.relay.error is VIOLATION
    s.gate.answers[0].callback(PASS)
    assert EVENTS[8] not in s.written


def test_a_failing_gate_counts_as_no_answer():
    s = Setup()
    s.feed(PREFIX + EVENTS[8])
    s.gate.answers[0].errback(Failure(RuntimeError("boom")))
    assert s.gate.timeouts == 1 and s.written == PREFIX + EVENTS[8]


def test_hold_to_end_asks_again_with_the_whole_stream():
    s = Setup()
    s.feed(PREFIX + EVENTS[8])
    s.gate.answers[0].callback(HOLD_TO_END)
    s.feed(REST[len(EVENTS[8]):])
    assert s.gate.ends == [] and s.written == PREFIX
    s.clock.pump([5.0] * 4)  # the time limit starts with the output analysis, at the end
    assert s.gate.timeouts == 0
    s.end()
    assert s.gate.ends == [(PREFIX + REST, False)]
    s.gate.answers[1].callback(PASS)
    assert s.written == PREFIX + PING * 4 + REST and s.request.finished


def test_hold_to_end_output_larger_than_the_cap_is_the_gates_overflow_answer():
    s = Setup(buffer_bytes=100)
    s.feed(PREFIX + EVENTS[8])
    s.gate.answers[0].callback(HOLD_TO_END)
    s.feed(REST[len(EVENTS[8]):])
    assert s.gate.overflows == 1 and s.relay.error is VIOLATION and s.transport.stopped


def test_a_stream_without_output_is_relayed_whole_and_never_held():
    s = Setup()
    s.feed(PREFIX)
    s.end()
    assert s.written == PREFIX and s.request.finished and s.gate.hold_points == []


def test_a_final_unterminated_output_event_is_still_held():
    s = Setup()
    s.feed(PREFIX + EVENTS[8][:-2])
    s.end()
    assert s.written == PREFIX and len(s.gate.hold_points) == 1
    s.gate.answers[0].callback(VIOLATION)
    assert s.request.finished and EVENTS[8] not in s.written


def test_the_client_leaving_while_held_drops_what_is_held_and_waits_for_the_verdict():
    s = Setup(buffer_bytes=100, capture=len(PREFIX) + 200)
    s.feed(PREFIX + REST)
    assert s.transport.paused
    s.relay.stopProducing()
    assert not s.transport.paused and s.transport.stopped  # the analysis copy is full
    s.end(clean=False)
    assert not s.outcomes
    s.gate.answers[0].callback(VIOLATION)
    assert s.written == PREFIX and not s.request.finished
    assert s.outcomes[0].ending == "client_gone"


def test_within_answers_late_without_cancelling():
    clock = Clock()
    slow: Deferred[str] = Deferred()
    got: list[str] = []
    within(slow, 2.0, clock, "late").addCallback(got.append)
    clock.advance(2.0)
    assert got == ["late"]
    slow.callback("done")  # not cancelled, and its result is not an error
    assert got == ["late"] and slow.called
    fast: list[str] = []
    within(succeed("now"), 2.0, clock, "late").addCallback(fast.append)
    assert fast == ["now"] and not clock.getDelayedCalls()


# -- the gate ---------------------------------------------------------------------------


class StubPipeline:
    def __init__(self, check: HoldCheck, output: Any = None,
                 extraction: Extraction | None = None) -> None:
        self._check = check
        self._output = output
        self._extraction = extraction or Extraction("I think", 1, False, [], "", None, False)
        self.extracted: list[bytes] = []

    def extract(self, provider, info, content_type, encoding, body, truncated):
        self.extracted.append(body)
        return succeed(self._extraction)

    def check_at_hold(self, provider, agent, session_id, info, extraction):
        return succeed(self._check)

    def analyse_output(self, provider, agent, session_id, info, content_type, encoding, body,
                       truncated):
        self.extracted.append(body)
        return succeed(self._output)


class Outcome:
    def __init__(self, verdict: str, synthetic: bool = False) -> None:
        self.verdict = verdict
        self.checkpoint_id = "ic-9"
        self.synthetic = synthetic
        self.concerns = [{"category": "prompt_injection", "severity": "high",
                          "description": "d", "evidence": "never shown"}]


def gate(check: HoldCheck, mode: str = "fail_open", **kwargs: Any) -> PipelineGate:
    return PipelineGate(StubPipeline(check, **kwargs), PROVIDERS["anthropic"], None,  # type: ignore[arg-type]
                        "s", INFO, "text/event-stream", mode)


def answer(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    return results[0]


def test_gate_clear_and_review_release():
    assert answer(gate(HoldCheck("clear", None)).at_hold_point(b"", False)) is PASS
    assert answer(gate(HoldCheck("review_needed", Outcome("review_needed"))).at_hold_point(
        b"", False)) is PASS


@pytest.mark.parametrize("synthetic", [False, True])
def test_gate_violation_refuses_with_the_checkpoint_and_public_concerns(synthetic):
    g = gate(HoldCheck("boundary_violation", Outcome("boundary_violation", synthetic)))
    error = answer(g.at_hold_point(b"prefix", False))
    assert isinstance(error, StreamError) and error.type == "integrity_violation"
    assert error.checkpoint_id == "ic-9" and error.synthetic is synthetic
    assert error.concerns == ({"category": "prompt_injection", "severity": "high",
                               "description": "d"},)
    assert g.checked_thinking == "I think"


def test_gate_refuse_without_reasoning_is_unverifiable():
    error = answer(gate(HoldCheck("unverifiable", None, "refuse", "redacted_reasoning"))
                   .at_hold_point(b"", False))
    assert (error.type, error.reason, error.checkpoint_id) == (
        "integrity_unverifiable", "redacted_reasoning", None)


@pytest.mark.parametrize("output, mode, expected", [
    (Outcome("clear"), "fail_closed", PASS),
    (Outcome("boundary_violation"), "fail_open", "integrity_violation"),
    (None, "fail_open", PASS),  # the output analysis itself failed: the failure mode
    (None, "fail_closed", "integrity_violation"),
])
def test_gate_analyse_output_holds_to_the_end_and_judges_the_output(output, mode, expected):
    g = gate(HoldCheck("pending", None, "analyse_output", "no_reasoning"), mode,
             output=output)
    assert answer(g.at_hold_point(b"", False)) is HOLD_TO_END
    result = answer(g.at_end(b"whole", False))
    assert result is PASS if expected is PASS else result.type == expected
    if output is not None and expected != PASS:
        assert result.checkpoint_id == "ic-9" and "output" in result.message
    assert g.output_analysed


@pytest.mark.parametrize("mode, refused", [("fail_open", False), ("fail_closed", True)])
def test_gate_timeout_and_overflow_follow_the_failure_mode(mode, refused):
    g = gate(HoldCheck("clear", None), mode)
    for release, reason in ((g.on_timeout(), "analysis_timeout"),
                            (g.on_overflow(), "output_exceeds_hold_buffer")):
        if refused:
            assert (release.type, release.synthetic, release.reason) == (
                "integrity_violation", True, reason)
        else:
            assert release is PASS

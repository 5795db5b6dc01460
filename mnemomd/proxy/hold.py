"""Streams held at the end of the reasoning (enforce mode, SPEC §6.2).

An enforce-mode stream is framed event by event. The response head and the reasoning are
relayed as they arrive (reasoning is not an action); the first event of output (text, a
tool call, the end of the message) is where the stream is held. From there every upstream
byte waits in memory while the reasoning is analysed; the verdict either releases the held
bytes unchanged and the stream goes on as a plain relay, or ends the stream with the
provider's own error event, so the application's SDK raises. Nothing after the reasoning
reaches the client before the verdict.

While holding, the client connection is kept alive with bytes every SDK of the API
ignores, the hold is bounded in time (the analysis timeout; then the failure mode decides)
and in memory: past ``buffer_bytes`` the upstream is paused, never released unanalysed.

The relay (``HeldStreamRelay``) only frames, holds, writes and times; what to do at the
hold point is a ``HoldGate``'s answer (``PipelineGate`` asks the integrity pipeline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss, Request
from zope.interface import implementer

from mnemomd.agents.identity import Agent
from mnemomd.integrity.engine import AnalysisOutcome
from mnemomd.integrity.pipeline import HoldCheck
from mnemomd.providers.base import (
    OUTPUT,
    Extraction,
    Provider,
    RequestInfo,
    StreamError,
    StreamState,
)
from mnemomd.providers.sse import SSEEvent, SSEParser
from mnemomd.proxy.relay import IdleTimer, RelayOutcome, ResponseCapture

log = Logger()


class Pass:
    """Release what is held; the stream goes on as a plain relay."""

    def __repr__(self) -> str:
        return "PASS"


class HoldToEnd:
    """Keep holding to the end of the stream, then ask the gate again (output analysis)."""

    def __repr__(self) -> str:
        return "HOLD_TO_END"


PASS = Pass()
HOLD_TO_END = HoldToEnd()
#: What a gate answers: release, refuse with this error, or hold to the end.
Release = Pass | HoldToEnd | StreamError

VIOLATION_MESSAGE = "The response was withheld: its reasoning crossed the agent's boundaries"
OUTPUT_VIOLATION_MESSAGE = "The response was withheld: its output crossed the agent's boundaries"
FAILED_MESSAGE = ("The response was withheld: integrity analysis did not produce a verdict "
                  "(AIP_FAILURE_MODE=fail_closed)")
UNVERIFIABLE_MESSAGE = "The response was withheld: it has no reasoning that can be verified"


def within(d: Deferred[Any], seconds: float, clock: IReactorTime,
           late: Any) -> Deferred[Any]:
    """``d``'s result, or ``late`` if ``seconds`` pass first. Unlike ``addTimeout`` ``d``
    is not cancelled (a cancelled analysis may never fire at all, and a finished one
    is still worth storing): the answer just stops waiting for it."""
    answer: Deferred[Any] = Deferred()
    timer = clock.callLater(seconds, lambda: answer.called or answer.callback(late))

    def settle(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if not answer.called:
            answer.callback(result)
        return None

    d.addBoth(settle)
    return answer


def observed(d: Deferred[Any]) -> Deferred[None]:
    """Fires when ``d`` does, leaving ``d``'s own result alone."""
    watch: Deferred[None] = Deferred()

    def seen(result: Any) -> Any:
        watch.callback(None)
        return result

    d.addBoth(seen)
    return watch


def public_concerns(outcome: AnalysisOutcome) -> tuple[dict[str, Any], ...]:
    """The concerns as the 403 shows them: category, severity, description."""
    return tuple({k: c.get(k) for k in ("category", "severity", "description")}
                 for c in outcome.concerns)


def release_for(verdict: str, outcome: AnalysisOutcome | None,
                message: str = VIOLATION_MESSAGE) -> Release:
    """A verdict's action on held output: a boundary violation (a synthetic one under
    ``fail_closed`` too) refuses, anything else releases."""
    if verdict != "boundary_violation" or outcome is None:
        return PASS
    return StreamError("integrity_violation", FAILED_MESSAGE if outcome.synthetic else message,
                       checkpoint_id=outcome.checkpoint_id, concerns=public_concerns(outcome),
                       synthetic=outcome.synthetic,
                       reason="analysis_failed" if outcome.synthetic else None)


def failure_release(failure_mode: str, reason: str) -> Release:
    """No verdict in time (or at all): ``fail_open`` releases, ``fail_closed`` refuses."""
    if failure_mode != "fail_closed":
        return PASS
    return StreamError("integrity_violation", FAILED_MESSAGE, synthetic=True, reason=reason)


def unverifiable(gap: str | None) -> StreamError:
    return StreamError("integrity_unverifiable", UNVERIFIABLE_MESSAGE,
                       reason=gap or "no_reasoning")


class HoldGate(Protocol):
    """Decides what becomes of a held stream; every Deferred fires with a ``Release``."""

    def at_hold_point(self, prefix: bytes, truncated: bool) -> Deferred[Release]:
        """The reasoning has ended; ``prefix`` is every byte relayed so far."""

    def at_end(self, body: bytes, truncated: bool) -> Deferred[Release]:
        """After ``HOLD_TO_END``: the whole stream is in (``body`` as captured)."""

    def on_timeout(self) -> Release:
        """No answer within the hold's time limit."""

    def on_overflow(self) -> Release:
        """After ``HOLD_TO_END``: the output outgrew the hold buffer before its end."""


@dataclass(frozen=True)
class StreamFormat:
    """The provider's stream functions, bound to one request."""

    classify: Callable[[SSEEvent], str]
    error_event: Callable[[StreamError, StreamState], bytes]
    keepalive: bytes

    @classmethod
    def of(cls, provider: Provider, info: RequestInfo) -> StreamFormat:
        return cls(classify=lambda event: provider.classify_stream_event(info, event),
                   error_event=lambda error, state: provider.stream_error_event(
                       info, error, state),
                   keepalive=provider.stream_keepalive(info))


@dataclass(frozen=True)
class HoldSettings:
    #: Held bytes above which the upstream is paused.
    buffer_bytes: int
    #: Seconds between keepalives while holding (the first after one full interval).
    keepalive_seconds: float
    #: Longest wait for the gate's answer once analysis has started.
    timeout_seconds: float


@implementer(IPushProducer)
class HeldStreamRelay(TwistedProtocol):
    """Relays an event stream up to the end of its reasoning and holds the rest.

    Phases: ``relay`` (complete reasoning and neutral events are written as they are
    framed; a partial event waits for its blank line), ``held`` (every byte is kept;
    keepalives only), ``to_end`` (``held`` until the upstream ends, for output analysis),
    ``pass`` (the held bytes written, then a plain relay) and ``error`` (one error event,
    the upstream connection closed). It is the client request's push producer throughout.
    """

    def __init__(self, request: Request, clock: IReactorTime, idle_timeout: float,
                 capture: ResponseCapture, request_id: str, stream: StreamFormat,
                 gate: HoldGate, settings: HoldSettings) -> None:
        self._request = request
        self._clock = clock
        self._idle = IdleTimer(clock, idle_timeout, self._idle_expired)
        self.capture = capture
        self._request_id = request_id
        self._stream = stream
        self._gate = gate
        self._settings = settings
        self.done: Deferred[RelayOutcome] = Deferred()
        self.bytes_sent = 0
        self.phase = "relay"
        #: Why the stream was refused, once it was.
        self.error: StreamError | None = None
        self._parser = SSEParser(framed=True)
        self._pending = bytearray()  # bytes received and not written
        self._relayed = 0  # stream offset up to which bytes were written
        self._last_event: SSEEvent | None = None
        self._client_connected = not request._disconnected
        self._client_paused = False
        self._hold_paused = False
        self._upstream_paused = False
        self._upstream_ending: str | None = None  # set once the upstream has ended
        self._closing: str | None = None  # why we closed the upstream ourselves
        self._hold_timer: IDelayedCall | None = None
        self._keepalive_call: IDelayedCall | None = None
        self._finished = False
        self._asked = 0
        self._waiting: int | None = None  # the gate answer waited for

    # -- upstream side (IProtocol) ------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        if self._client_connected:
            self._request.registerProducer(self, True)
        self._arm_idle()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._arm_idle()
        self.capture.feed(data)
        if self.phase == "relay":
            self._pending += data
            self._frame(self._parser.feed_framed(data))
            if self.phase == "relay" and len(self._pending) > self._settings.buffer_bytes:
                self._hold()  # a partial event larger than the cap: output, to be safe
        elif self.phase in ("held", "to_end"):
            if self._client_connected:
                self._pending += data
            self._check_buffer()
        elif self.phase == "pass":
            self._write(data)
        if not self._client_connected and self.capture.full:
            self._close_upstream("client_gone")

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # noqa: N802
        self._cancel_idle()
        clean = isinstance(reason, Failure) and reason.check(ResponseDone, PotentialDataLoss)
        self._upstream_ending = self._closing or ("complete" if clean else "upstream_failed")
        if self.phase == "relay":
            self._frame(self._parser.close_framed())
        if self.phase == "relay":
            self._write_pending(len(self._pending))
            self.phase = "pass"
        if self.phase == "to_end":
            self._analyse_whole()
        self._maybe_done()

    # -- framing and holding ------------------------------------------------------------

    def _frame(self, framed: list[tuple[SSEEvent, int]]) -> None:
        for event, end in framed:
            if self._stream.classify(event) == OUTPUT:
                self._hold()
                return
            self._write_pending(end - self._relayed)
            self._last_event = event

    def _write_pending(self, size: int) -> None:
        chunk = bytes(self._pending[:size])
        del self._pending[:size]
        self._relayed += size
        self._write(chunk)

    def _hold(self) -> None:
        """The first output event: hold from here and ask the gate."""
        self.phase = "held"
        self._check_buffer()
        self._arm_keepalive()
        prefix = self.capture.getvalue()[:self._relayed]
        self._ask(self._gate.at_hold_point(prefix, self.capture.size < self._relayed))

    def _analyse_whole(self) -> None:
        self._ask(self._gate.at_end(self.capture.getvalue(), self.capture.truncated))

    def _ask(self, answer: Deferred[Release]) -> None:
        """Wait for the gate's ``answer``, at most the hold's time limit."""
        self._asked += 1
        self._waiting = self._asked
        self._arm_hold_timer()
        answer.addCallbacks(self._answered, self._gate_failed, callbackArgs=(self._asked,),
                            errbackArgs=(self._asked,))

    def _gate_failed(self, failure: Failure, token: int) -> None:
        log.failure("Held stream gate failed", failure, request_id=self._request_id)
        self._answered(self._gate.on_timeout(), token)

    def _answered(self, release: Release, token: int) -> None:
        if token != self._waiting:
            return  # late: the time limit decided already
        self._waiting = None
        self._cancel_hold_timer()
        self._settle(release)

    def _settle(self, release: Release) -> None:
        if self.phase not in ("held", "to_end"):
            return
        if isinstance(release, HoldToEnd):
            if self.phase == "to_end":
                release = self._gate.on_timeout()  # asked twice: no verdict will come
            else:
                self.phase = "to_end"
                self._check_buffer()
                if self._upstream_ending is not None:
                    self._analyse_whole()
                return
        self._cancel_keepalive()
        if isinstance(release, StreamError):
            self._refuse(release)
        else:
            self._release()
        self._maybe_done()

    def _release(self) -> None:
        self.phase = "pass"
        self._write_pending(len(self._pending))
        self._set_hold_paused(False)

    def _refuse(self, error: StreamError) -> None:
        self.phase = "error"
        self.error = error
        self._pending.clear()
        if self._client_connected:
            self._write(self._stream.error_event(error, StreamState(self._last_event)))
            self._finished = True
            self._request.unregisterProducer()
            self._request.finish()  # a clean end: the error event is the last word
        self._set_hold_paused(False)
        if self._upstream_ending is None:
            self._close_upstream("refused")

    def _check_buffer(self) -> None:
        """Flow control while holding: past the cap the upstream waits for the verdict."""
        if len(self._pending) <= self._settings.buffer_bytes:
            return
        if self.phase == "to_end":
            # Output analysis needs the whole output, and it will not fit.
            self._settle(self._gate.on_overflow())
            return
        self._set_hold_paused(True)

    # -- timers -------------------------------------------------------------------------

    def _arm_hold_timer(self) -> None:
        self._cancel_hold_timer()
        self._hold_timer = self._clock.callLater(self._settings.timeout_seconds,
                                                 self._hold_expired)

    def _cancel_hold_timer(self) -> None:
        if self._hold_timer is not None and self._hold_timer.active():
            self._hold_timer.cancel()
        self._hold_timer = None

    def _hold_expired(self) -> None:
        self._hold_timer = None
        self._waiting = None
        log.warn("No verdict for a held stream within {seconds}s", request_id=self._request_id,
                 seconds=self._settings.timeout_seconds)
        self._settle(self._gate.on_timeout())

    def _arm_keepalive(self) -> None:
        self._keepalive_call = self._clock.callLater(self._settings.keepalive_seconds,
                                                     self._keepalive)

    def _cancel_keepalive(self) -> None:
        if self._keepalive_call is not None and self._keepalive_call.active():
            self._keepalive_call.cancel()
        self._keepalive_call = None

    def _keepalive(self) -> None:
        self._keepalive_call = None
        if self.phase in ("held", "to_end") and self._client_connected:
            self._request.write(self._stream.keepalive)
            self._arm_keepalive()

    # -- writing and ending -------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if data and self._client_connected:
            self._request.write(data)
            self.bytes_sent += len(data)

    def _maybe_done(self) -> None:
        """Once the upstream has ended and nothing waits for a verdict: end the response
        (cleanly, or as a break when the upstream broke) and report."""
        if self._upstream_ending is None or self.phase not in ("pass", "error") \
                or self.done.called:
            return
        ending = self._upstream_ending
        if self.phase == "error" and ending == "refused":
            ending = "complete"  # our own close after the error event
        if self._client_connected and not self._finished:
            self._finished = True
            self._request.unregisterProducer()
            if ending == "complete" or self.phase == "error":
                self._request.finish()
            else:
                self._request.loseConnection()
        if ending == "upstream_failed":
            log.error("Upstream closed the response before it was complete",
                      request_id=self._request_id, bytes_sent=self.bytes_sent)
        elif ending == "complete" and not self._client_connected:
            ending = "client_gone"
        self.done.callback(RelayOutcome(ending, self.bytes_sent, self.capture))

    # -- client side (IPushProducer) ----------------------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802
        if self._client_connected and not self._client_paused:
            self._client_paused = True
            self._update_upstream()

    def resumeProducing(self) -> None:  # noqa: N802
        if self._client_paused:
            self._client_paused = False
            self._update_upstream()

    def stopProducing(self) -> None:  # noqa: N802
        """The client connection is gone: nothing more is held; the verdict is still
        stored, and the upstream is read until the analysis copy is full."""
        if not self._client_connected:
            return
        self._client_connected = False
        self._client_paused = False
        self._pending.clear()
        self._cancel_keepalive()
        self._hold_paused = False
        self._update_upstream()
        if self.capture.full:
            self._close_upstream("client_gone")

    # -- upstream flow ------------------------------------------------------------------

    def _set_hold_paused(self, paused: bool) -> None:
        self._hold_paused = paused
        self._update_upstream()

    def _update_upstream(self) -> None:
        """The upstream reads while neither the client nor the hold cap stops it; silence
        while paused is ours, so the idle timer stops too."""
        want_paused = self._client_paused or self._hold_paused
        if want_paused == self._upstream_paused or self._upstream_ending is not None:
            return
        self._upstream_paused = want_paused
        if want_paused:
            self._cancel_idle()
            self.transport.pauseProducing()
        else:
            self._arm_idle()
            self.transport.resumeProducing()

    def _close_upstream(self, why: str) -> None:
        if self._closing is None and self._upstream_ending is None:
            self._closing = why
            if self._upstream_paused:
                self._upstream_paused = False
                self.transport.resumeProducing()
            self.transport.stopProducing()

    def _arm_idle(self) -> None:
        if self._closing is not None or self._upstream_paused \
                or self._upstream_ending is not None:
            return
        self._idle.arm()

    def _cancel_idle(self) -> None:
        self._idle.cancel()

    def _idle_expired(self) -> None:
        log.warn("Upstream was silent for {seconds}s mid-response; closing both sides",
                 seconds=self._idle.seconds, request_id=self._request_id)
        self._close_upstream("idle_timeout")


class HoldIntegrity(Protocol):
    """What a held stream's gate needs of the integrity pipeline
    (``integrity.pipeline.IntegrityPipeline``)."""

    def extract(self, provider: Provider, info: RequestInfo, content_type: str,
                content_encoding: str | None, body: bytes,
                truncated: bool) -> Deferred[Extraction | None]: ...

    def check_at_hold(self, provider: Provider, agent: Agent, session_id: str,
                      info: RequestInfo, extraction: Extraction) -> Deferred[HoldCheck]: ...

    def analyse_output(self, provider: Provider, agent: Agent, session_id: str,
                       info: RequestInfo, content_type: str, content_encoding: str | None,
                       body: bytes, truncated: bool) -> Deferred[AnalysisOutcome | None]: ...


class PipelineGate:
    """A held stream's gate for one call: the integrity pipeline's checks, the failure mode,
    the agent's ``without_reasoning`` policy. Keeps what the end of the call needs."""

    def __init__(self, pipeline: HoldIntegrity, provider: Provider, agent: Agent,
                 session_id: str, info: RequestInfo, content_type: str,
                 failure_mode: str) -> None:
        self._pipeline = pipeline
        self._provider = provider
        self._agent = agent
        self._session_id = session_id
        self._info = info
        self._content_type = content_type
        self._failure_mode = failure_mode
        #: The check at the hold point, once it is in.
        self.check: HoldCheck | None = None
        #: The thinking analysed at the hold point (a later, longer one is checked again).
        self.checked_thinking: str | None = None
        #: Whether the output was analysed at the end (which also traced the call).
        self.output_analysed = False
        self._running: list[Deferred[Any]] = []

    def settled(self) -> Deferred[None]:
        """Fires once every check the relay started is over, answered in time or not: the
        end of the call must not check again what is still being checked."""
        running, self._running = self._running, []
        return DeferredList([observed(d) for d in running]).addCallback(lambda _: None)

    def at_hold_point(self, prefix: bytes, truncated: bool) -> Deferred[Release]:
        d = self._at_hold_point(prefix, truncated)
        self._running.append(d)
        return d

    def at_end(self, body: bytes, truncated: bool) -> Deferred[Release]:
        d = self._at_end(body, truncated)
        self._running.append(d)
        return d

    @inlineCallbacks
    def _at_hold_point(self, prefix: bytes, truncated: bool) -> Any:
        extraction = yield self._pipeline.extract(self._provider, self._info,
                                                  self._content_type, None, prefix, truncated)
        if extraction is None:
            return failure_release(self._failure_mode, "extraction_failed")
        check = yield self._pipeline.check_at_hold(self._provider, self._agent,
                                                   self._session_id, self._info, extraction)
        self.check = check
        self.checked_thinking = extraction.thinking
        if check.without_reasoning == "refuse":
            return unverifiable(check.gap)
        if check.without_reasoning == "analyse_output":
            return HOLD_TO_END
        return release_for(check.verdict, check.outcome)

    @inlineCallbacks
    def _at_end(self, body: bytes, truncated: bool) -> Any:
        self.output_analysed = True
        outcome = yield self._pipeline.analyse_output(
            self._provider, self._agent, self._session_id, self._info, self._content_type,
            None, body, truncated)
        if outcome is None:
            return failure_release(self._failure_mode, "analysis_failed")
        return release_for(outcome.verdict, outcome, OUTPUT_VIOLATION_MESSAGE)

    def on_timeout(self) -> Release:
        return failure_release(self._failure_mode, "analysis_timeout")

    def on_overflow(self) -> Release:
        return failure_release(self._failure_mode, "output_exceeds_hold_buffer")

"""From a proxied call to a stored integrity checkpoint (SPEC §5).

The proxy calls in three places: before forwarding (describe the request, maybe ask the
model to show its reasoning), when the response head arrives (hold it for a verdict, or
say ``pending``), and when the body is complete (extract, analyse, store). Analysis is
off the response path unless the agent is in ``enforce`` mode; it never fails a call.

A stream held in ``enforce`` mode is checked in two steps: ``check_at_hold`` when its
reasoning ends (the verdict releases or refuses the output held behind it), ``trace`` (and
a late ``check`` of reasoning that came after output) when the stream ends.

A verdict, once the analysis has given it, stands whatever happens to the bookkeeping
after it (storing the checkpoint, the session window, nudges and auto-containment): a
failed step is logged and the verdict still releases or refuses the held response. The
card and conscience values analysed against come from the KV cache, the database, or,
when both fail, the last known ones in memory (``agents.memory.LastKnownState``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.internet.defer import (
    Deferred,
    gatherResults,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd.agents.identity import WITHOUT_REASONING_MODES, Agent
from mnemomd.agents.memory import LastKnownState
from mnemomd.agents.store import AgentStore
from mnemomd.config import IntegrityConfig
from mnemomd.http.server import error_payload
from mnemomd.integrity.attestation import (
    RecurringJson,
    SigningKey,
    attestation_row,
    input_commitments,
    iso_timestamp,
    link_head,
    next_link,
    window_context,
)
from mnemomd.integrity.checkpoints import (
    CHECKPOINT_WRITE,
    DRIFT_ALERT_WRITE,
    CheckpointRecord,
    checkpoint_write,
    drift_alert_write,
    write_checkpoints,
    write_drift_alerts,
)
from mnemomd.integrity.engine import AnalysisOutcome, AnalysisRequest, IntegrityAnalyzer
from mnemomd.integrity.output import reasoning_gap
from mnemomd.integrity.window import (
    session_record,
    session_window,
    streak_key,
    window_entries,
)
from mnemomd.kv import KVCache
from mnemomd.ops.dependency import DependencyState, log_failure
from mnemomd.ops.labels import LabelCache
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.providers.base import Extraction, Provider, RequestInfo, decode_body
from mnemomd.providers.jsonutil import dumps_request
from mnemomd.storage.traces import (
    OUTBOX_WRITE,
    OutboxRow,
    outbox_expiry_ms,
    outbox_write,
    write_outbox,
)
from mnemomd.storage.writes import WriteQueue

log = Logger()

#: Bodies above this are parsed or serialised on a thread, not on the reactor.
INLINE_JSON_LIMIT = 256 * 1024
THINKING_BUDGET_TOKENS = 1024
WINDOW_TTL = 3600.0
CARD_CACHE_TTL = 300.0
#: Excerpts of thinking and of the response kept in a trace outbox row (each).
OUTBOX_EXCERPT_CHARS = 2000
MAX_TRACED_TOOLS = 32
#: Sessions whose chain continues in memory while the KV store is down (the oldest are
#: forgotten first: their next checkpoint starts a new segment).
MAX_OUTAGE_CHAINS = 10_000


@dataclass(frozen=True)
class ResponsePlan:
    """What to do with a response whose head just arrived.

    ``hold``: the body is held whole for the verdict (enforce, not a stream).
    ``hold_stream``: the stream is relayed up to the end of its reasoning and held there
    for the verdict (enforce, an event stream).
    """

    analyse: bool
    hold: bool
    #: ``X-AIP-Verdict`` when the head goes out before a verdict exists.
    early_verdict: str
    hold_stream: bool = False


@dataclass(frozen=True)
class Unverifiable:
    """A response ``enforce`` refuses unanalysed (``without_reasoning: refuse``): it has no
    analysable reasoning, for ``reason`` (``no_reasoning``, ``redacted_reasoning`` or
    ``below_minimum_evidence``). No analysis call is made and no checkpoint stored."""

    reason: str


#: What ``analyse`` fires with: the verdict (``X-AIP-Verdict``, or ``unverifiable``) and
#: the checkpoint's outcome, the refusal, or None.
CheckResult = tuple[str, AnalysisOutcome | Unverifiable | None]


@dataclass(frozen=True)
class HoldCheck:
    """The check at a held stream's hold point.

    ``without_reasoning`` is the action taken when there was no analysable reasoning
    (``gap`` says why): ``allow`` (``verdict`` is today's ``skipped`` or synthetic clear),
    ``refuse`` (``outcome`` is the ``Unverifiable``), or ``analyse_output`` (hold to the
    end, then ``analyse_output``).
    """

    verdict: str
    outcome: AnalysisOutcome | Unverifiable | None
    without_reasoning: str | None = None
    gap: str | None = None


def refusal_payload(verdict: str,
                    outcome: AnalysisOutcome | Unverifiable | None) -> dict[str, Any] | None:
    """The body ``enforce`` answers instead of a held response (403), or None when the
    response goes out. A violation names its checkpoint and concerns (derived analysis
    only); a response without analysable reasoning under ``refuse`` says why."""
    if isinstance(outcome, Unverifiable):
        return error_payload(
            "The response was withheld: it has no reasoning that can be verified",
            "integrity_unverifiable", reason=outcome.reason)
    if verdict == "boundary_violation" and isinstance(outcome, AnalysisOutcome):
        what = "reasoning" if outcome.analysis_scope == "thinking_only" else "output"
        return error_payload(
            f"The response was withheld: its {what} crossed the agent's boundaries",
            "integrity_violation", checkpoint_id=outcome.checkpoint_id,
            concerns=[{k: c.get(k) for k in ("category", "severity", "description")}
                      for c in outcome.concerns])
    return None


def outbox_payload(info: RequestInfo, extraction: Extraction,
                   verdict: str) -> dict[str, Any]:
    """What trace-building needs from a call: tool names with argument keys (never the
    values) and excerpts capped to ``OUTBOX_EXCERPT_CHARS`` each."""
    return {
        "api": info.api,
        "tools": [{"name": t.name, "argument_keys": list(t.argument_keys)}
                  for t in extraction.tool_calls[:MAX_TRACED_TOOLS]],
        "thinking_visible": bool(extraction.thinking),
        "redacted_thinking": extraction.redacted_thinking,
        "thinking_excerpt": (extraction.thinking or "")[:OUTBOX_EXCERPT_CHARS],
        "response_excerpt": extraction.text_excerpt[:OUTBOX_EXCERPT_CHARS],
        "verdict": verdict,
        "complete": extraction.complete,
    }


def _run(func: Callable[..., Any], size: int, *args: object) -> Deferred[Any]:
    """Run ``func`` inline when the input is small, on a thread when it is large."""
    if size > INLINE_JSON_LIMIT:
        return deferToThread(func, *args)
    return maybeDeferred(func, *args)


def aip_headers(outcome: AnalysisOutcome | None, verdict: str,
                enforcement: str | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-aip-verdict", verdict.encode())]
    if outcome is not None:
        headers += [
            (b"x-aip-checkpoint-id", outcome.checkpoint_id.encode()),
            (b"x-aip-action", outcome.action.encode()),
            (b"x-aip-proceed", b"true" if outcome.proceed else b"false"),
            (b"x-aip-synthetic", b"true" if outcome.synthetic else b"false"),
        ]
    if enforcement:
        headers.append((b"x-aip-enforcement", enforcement.encode()))
    return headers


class OutcomeHook(Protocol):
    """Called after each stored checkpoint: enforcement's nudges and auto-containment.
    ``synthetic`` says the verdict was made up (a failed analysis): no finding."""

    def __call__(self, agent: Agent, session_id: str, verdict: str, checkpoint_id: str,
                 concerns: list[dict[str, Any]], synthetic: bool = False) -> Deferred[Any]: ...


class Sealer(Protocol):
    """Seals a trace outbox payload for its row before storage sees it (the outbox
    keyring's ``seal``): fires with the text to store."""

    def __call__(self, row_id: str, plaintext: bytes) -> Deferred[str]: ...


def outbox_plaintext(payload: dict[str, Any]) -> bytes:
    """The bytes of an outbox payload as they are sealed."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class IntegrityPipeline:
    """The integrity steps of one proxied call, for the proxy."""

    def __init__(self, config: IntegrityConfig, clock: IReactorTime,
                 analyzer: IntegrityAnalyzer, agents: AgentStore, writes: WriteQueue,
                 kv_cache: KVCache, session_state: KVCache, metrics: GatewayMetrics,
                 tracing: bool = True, *, outbox_ttl: float, seal: Sealer | None = None,
                 output_analysis: bool = True, memory: LastKnownState | None = None,
                 outages: Sequence[DependencyState] = (),
                 signing_key: SigningKey | None = None) -> None:
        """``writes`` takes the checkpoints, drift alerts and trace-outbox rows (this
        registers their kinds); ``tracing`` whether traced agents get an outbox row;
        ``outbox_ttl`` (seconds) is how long a queued trace row may live (SPEC §8.1);
        ``seal`` seals each outbox payload before it is queued (required with
        ``tracing``: the queue, the spool and the database only ever hold ciphertext);
        ``output_analysis`` whether the analysis backend may be sent a response's output
        (not the hybrid service). ``memory`` keeps the last known card and conscience
        values (shared with the agent directory, which refreshes them on change);
        ``outages`` the storage dependencies whose known outage errors their trackers
        log, so a call that meets one logs no traceback of its own. ``signing_key``
        signs every checkpoint's attestation (docs/attestation.md); None turns
        attestation off."""
        self._signing_key = signing_key
        self._recurring_json = RecurringJson()
        #: Chain heads of sessions whose head the KV store could not keep (an outage).
        self._outage_chains: dict[str, dict[str, Any]] = {}
        if tracing and writes is not None and seal is None:
            raise ValueError("trace outbox payloads are stored sealed: give seal")
        self._seal = seal
        self._memory = memory if memory is not None else LastKnownState()
        self._outages = outages
        self._config = config
        self._outbox_ttl = outbox_ttl
        self._output_analysis = output_analysis
        self._clock = clock
        self._analyzer = analyzer
        self._agents = agents
        self._writes = writes
        self._kv = kv_cache
        self._state = session_state
        self._metrics = metrics
        self._checks = LabelCache(metrics.aip_checks)
        self._tracing = tracing
        self._in_flight: set[Deferred[Any]] = set()
        #: Called after each stored checkpoint (enforcement: nudges, auto-containment).
        self.on_outcome: OutcomeHook | None = None
        #: Called when stored checkpoints queued webhook deliveries (send them now).
        self.on_events_queued: Callable[[], None] | None = None
        #: Called with (agent id, tool names) for the tools a response shows the model
        #: calling (tool policies record the ones first seen).
        self.on_tools_called: Callable[[str, list[str]], None] | None = None
        if writes is not None:
            writes.register(CHECKPOINT_WRITE, write_checkpoints, self._events_queued)
            writes.register(DRIFT_ALERT_WRITE, write_drift_alerts, self._drift_stored)
            writes.register(OUTBOX_WRITE, write_outbox)

    def _events_queued(self, deliveries: list[str]) -> None:
        if deliveries and self.on_events_queued is not None:
            self.on_events_queued()

    def _drift_stored(self, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            log.warn("Integrity drift detected for {agent_id}", agent_id=alert["agent_id"])
        if alerts and self.on_events_queued is not None:
            self.on_events_queued()

    # -- before forwarding ----------------------------------------------------------------

    def enabled_for(self, agent: Agent | None) -> bool:
        return self._config.aip_enabled and (agent is None or agent.aip_enabled)

    def prepare(self, provider: Provider, agent: Agent | None, path: bytes, query: bytes,
                body: bytes | None, notice: str | None = None,
                ) -> Deferred[tuple[bytes | None, RequestInfo, bool]]:
        """Describe the request; ask for visible reasoning where that is valid, and add
        the integrity notice of pending nudges. Fires with (body, info, notice added)."""
        inject = (self._config.thinking_injection == "auto" and self.enabled_for(agent))

        def work() -> tuple[bytes | None, RequestInfo, bool]:
            info = provider.describe_request(path, query, body or b"")
            if info.json_body is None or body is None:
                return body, info, False
            changed = None
            if inject:
                changed = provider.inject_thinking(info, info.json_body,
                                                   THINKING_BUDGET_TOKENS)
            nudged = None
            if notice:
                nudged = provider.inject_nudge(info, changed or info.json_body, notice)
            final = nudged or changed
            if final is None:
                return body, info, False
            encoded = dumps_request(final)
            if encoded is None:  # a number JSON cannot carry back (1e400): left untouched
                return body, info, False
            return encoded, info, nudged is not None

        return _run(work, len(body or b""))

    # -- when the response head arrives ---------------------------------------------------

    def plan(self, agent: Agent | None, info: RequestInfo | None, status: int,
             streaming: bool) -> ResponsePlan:
        checking = self.enabled_for(agent)
        if not checking and not self.tracing_for(agent):
            return ResponsePlan(False, False, "disabled")
        if info is None or info.api is None or not 200 <= status < 300:
            return ResponsePlan(False, False, "skipped" if checking else "disabled")
        if not checking:  # traced only: the body is captured, nothing is held
            return ResponsePlan(True, False, "disabled")
        enforce = agent is not None and agent.enforcement_mode == "enforce"
        return ResponsePlan(True, enforce and not streaming, "pending",
                            hold_stream=enforce and streaming)

    def tracing_for(self, agent: Agent | None) -> bool:
        return self._tracing and agent is not None and agent.aap_enabled

    # -- responses without analysable reasoning (SPEC §6.2) -------------------------------

    def without_reasoning(self, agent: Agent | None, info: RequestInfo | None = None) -> str:
        """What to do with a response of this agent that has no analysable reasoning:
        ``allow``, ``analyse_output`` or ``refuse``.

        Only ``enforce`` acts on it (with AIP on for the agent); elsewhere it is ``allow``,
        today's behaviour. ``analyse_output`` the analysis backend may not carry out acts
        as ``refuse``, never as ``allow``, and so does a value this build does not know.
        """
        if agent is None or agent.enforcement_mode != "enforce" or not self.enabled_for(agent):
            return "allow"
        mode = agent.without_reasoning
        if mode not in WITHOUT_REASONING_MODES:
            return "refuse"
        if mode == "analyse_output" and not self._output_analysis:
            return "refuse"
        return mode

    def reasoning_gap(self, extraction: Extraction) -> str | None:
        """Why ``extraction`` has no analysable reasoning, or None (see
        ``integrity.output.reasoning_gap``)."""
        return reasoning_gap(extraction, self._analyzer.settings.min_evidence_tokens)

    # -- when the body is complete --------------------------------------------------------

    @inlineCallbacks
    def analyse(self, provider: Provider, agent: Agent, session_id: str, info: RequestInfo,
                content_type: str, content_encoding: str | None, body: bytes,
                truncated: bool) -> Any:
        """Extract, analyse and record, and queue the call for tracing; fires with
        (verdict, outcome or None). Never fails."""
        extraction = yield self.extract(provider, info, content_type, content_encoding, body,
                                        truncated)
        if extraction is None:
            return "error", None
        self.tools_called(agent, extraction)
        result: CheckResult = ("disabled", None)
        if self.enabled_for(agent):
            mode = self.without_reasoning(agent, info)
            gap = self.reasoning_gap(extraction) if mode != "allow" else None
            if gap is None:
                result = yield self._check(provider, agent, session_id, info, extraction)
            elif mode == "refuse":
                result = self._unverifiable(agent, gap)
            else:
                result = yield self._check_output(
                    provider, agent, session_id, info, extraction, gap,
                    (content_type, content_encoding, body))
        if self.tracing_for(agent):
            yield self._queue_trace(agent, session_id, provider.name, info, extraction, *result)
        return result

    def tools_called(self, agent: Agent, extraction: Extraction) -> None:
        """Hand ``on_tools_called`` the names of the tools the model called (never fails)."""
        if self.on_tools_called is None or not extraction.tool_calls:
            return
        try:
            self.on_tools_called(agent.agent_id, [t.name for t in extraction.tool_calls])
        except Exception:
            log.failure("Recording the tools called failed")

    # -- held streams (enforce mode) ------------------------------------------------------

    @inlineCallbacks
    def extract(self, provider: Provider, info: RequestInfo, content_type: str,
                content_encoding: str | None, body: bytes, truncated: bool) -> Any:
        """The extraction of a captured body (on a thread when large); None on failure."""
        try:
            extraction: Extraction = yield _run(
                self._extract, len(body), provider, info, content_type, content_encoding,
                body, truncated)
        except Exception:
            log.failure("Response extraction failed", provider=provider.name)
            self._checks("error").inc()
            return None
        return extraction

    @inlineCallbacks
    def check_at_hold(self, provider: Provider, agent: Agent, session_id: str,
                      info: RequestInfo, extraction: Extraction) -> Any:
        """The check when a held stream's reasoning has ended; fires with a ``HoldCheck``.

        Without analysable reasoning the agent's ``without_reasoning`` decides: ``allow``
        checks as today (``skipped``, or a synthetic clear below the minimum evidence),
        ``refuse`` analyses nothing, ``analyse_output`` defers to the end of the stream.
        """
        mode = self.without_reasoning(agent, info)
        gap = self.reasoning_gap(extraction) if mode != "allow" else None
        if gap is None:
            verdict, outcome = yield self._check(provider, agent, session_id, info,
                                                 extraction)
            return HoldCheck(verdict, outcome)
        if mode == "refuse":
            verdict, refusal = self._unverifiable(agent, gap)
            return HoldCheck(verdict, refusal, "refuse", gap)
        return HoldCheck("pending", None, "analyse_output", gap)

    def check(self, provider: Provider, agent: Agent, session_id: str, info: RequestInfo,
              extraction: Extraction) -> Deferred[CheckResult]:
        """Analyse the extraction's thinking and record the checkpoint (a held stream's
        reasoning that came after its hold point). Never fails."""
        return self._check(provider, agent, session_id, info, extraction)

    def trace(self, agent: Agent, session_id: str, provider: str, info: RequestInfo,
              extraction: Extraction, verdict: str,
              outcome: AnalysisOutcome | Unverifiable | None) -> Deferred[None]:
        """The call's trace outbox row, when the agent is traced."""
        if not self.tracing_for(agent):
            return succeed(None)
        return self._queue_trace(agent, session_id, provider, info, extraction, verdict,
                                 outcome)

    def _unverifiable(self, agent: Agent, gap: str) -> CheckResult:
        self._checks("unverifiable").inc()
        log.info("Response without analysable reasoning ({reason}) refused for {agent_id}",
                 reason=gap, agent_id=agent.agent_id)
        return "unverifiable", Unverifiable(gap)

    @inlineCallbacks
    def analyse_output(self, provider: Provider, agent: Agent, session_id: str,
                       info: RequestInfo, content_type: str, content_encoding: str | None,
                       body: bytes, truncated: bool) -> Any:
        """Output analysis of a whole captured response (``analyse_output``, a stream held
        to its end): extract, analyse the text and tool calls with whatever reasoning there
        is, store the checkpoint, enforce, trace. Fires with the outcome, or None when the
        pipeline itself failed (logged; the caller applies the failure mode)."""
        extraction = yield self.extract(provider, info, content_type, content_encoding, body,
                                        truncated)
        if extraction is None:
            return None
        self.tools_called(agent, extraction)
        gap = self.reasoning_gap(extraction)
        result = yield self._check_output(provider, agent, session_id, info, extraction, gap,
                                          (content_type, content_encoding, body))
        if self.tracing_for(agent):
            yield self._queue_trace(agent, session_id, provider.name, info, extraction, *result)
        outcome = result[1]
        return outcome if isinstance(outcome, AnalysisOutcome) else None

    @inlineCallbacks
    def _check_output(self, provider: Provider, agent: Agent, session_id: str,
                      info: RequestInfo, extraction: Extraction, gap: str | None,
                      response: tuple[str, str | None, bytes]) -> Any:
        """Analyse the output instead of (or with) the reasoning; the verdict acts as for
        reasoning. The output block is sent to the analysis backend and nowhere else."""
        content_type, content_encoding, body = response
        try:
            block = yield _run(self._output_block, len(body), provider, info, content_type,
                               content_encoding, body)
            outcome = yield self._analyse(agent, session_id, info, extraction,
                                          output_block=block)
            del block
            outcome = replace(outcome, analysis_metadata={
                **outcome.analysis_metadata, "without_reasoning": "analyse_output",
                "reasoning_gap": gap})
            self._bookkeeping(agent, session_id, provider.name, info, outcome)
            return outcome.verdict, outcome
        except Exception:
            log_failure(log, "Output analysis pipeline failed", Failure(), self._outages,
                        agent_id=agent.agent_id)
            self._checks("error").inc()
            return "error", None

    def _bookkeeping(self, agent: Agent, session_id: str, provider: str, info: RequestInfo,
                     outcome: AnalysisOutcome) -> None:
        """Record the checkpoint, then nudge or contain, behind the verdict: the verdict
        (and so a held response's release or block) never waits for, or depends on, the
        database or the KV store. ``settled`` fires once all of it is done."""
        d = self._record(agent, session_id, provider, info, outcome)
        d.addCallback(lambda _: self._enforce(agent, session_id, outcome))

        def failed(failure: Failure) -> None:
            log_failure(log, "Enforcement bookkeeping of checkpoint {checkpoint_id} failed; "
                        "its verdict stands", failure, self._outages,
                        checkpoint_id=outcome.checkpoint_id, agent_id=agent.agent_id)

        d.addErrback(failed)
        self._in_flight.add(d)
        d.addBoth(lambda _: self._in_flight.discard(d))

    def settled(self) -> Deferred[Any]:
        """Fires once the bookkeeping of every verdict given so far is done."""
        return gatherResults(list(self._in_flight)) if self._in_flight else succeed(None)

    def _enforce(self, agent: Agent, session_id: str, outcome: AnalysisOutcome) -> Any:
        if self.on_outcome is None:
            return None
        return self.on_outcome(agent, session_id, outcome.verdict, outcome.checkpoint_id,
                               outcome.concerns, synthetic=outcome.synthetic)

    @staticmethod
    def _output_block(provider: Provider, info: RequestInfo, content_type: str,
                      content_encoding: str | None, body: bytes) -> str:
        decoded = decode_body(body, content_encoding)
        if decoded is None:
            return ""
        return provider.output_block(info, decoded, content_type)

    @inlineCallbacks
    def _check(self, provider: Provider, agent: Agent, session_id: str, info: RequestInfo,
               extraction: Extraction) -> Any:
        try:
            if not extraction.thinking:
                self._checks("skipped").inc()
                return "skipped", None
            outcome = yield self._analyse(agent, session_id, info, extraction)
            self._bookkeeping(agent, session_id, provider.name, info, outcome)
            return outcome.verdict, outcome
        except Exception:
            log_failure(log, "Integrity analysis pipeline failed", Failure(), self._outages,
                        agent_id=agent.agent_id)
            self._checks("error").inc()
            return "error", None

    @inlineCallbacks
    def _queue_trace(self, agent: Agent, session_id: str, provider: str, info: RequestInfo,
                     extraction: Extraction, verdict: str,
                     outcome: AnalysisOutcome | Unverifiable | None) -> Any:
        """One trace outbox row for the observer (SPEC §8.1), sealed, then through the
        write queue: a failure costs the trace, never the call."""
        assert self._seal is not None
        now_ms = int(self._clock.seconds() * 1000)
        row_id = f"ob-{uuid.uuid4().hex}"
        try:
            # Sealed before the queue, the spool or the database ever holds it.
            sealed = yield self._seal(row_id, outbox_plaintext(
                outbox_payload(info, extraction, verdict)))
        except Exception:
            log_failure(log, "Could not queue the call for tracing", Failure(), self._outages,
                        agent_id=agent.agent_id)
            return None
        row = OutboxRow(
            id=row_id, agent_id=agent.agent_id, session_id=session_id,
            provider=provider, model=info.model or extraction.model,
            checkpoint_id=(outcome.checkpoint_id if isinstance(outcome, AnalysisOutcome)
                           else None),
            payload=sealed, attempts=0,
            created_at=now_ms, expires_at=outbox_expiry_ms(now_ms, self._outbox_ttl))
        self._writes.submit(outbox_write(row))
        return None

    @staticmethod
    def _extract(provider: Provider, info: RequestInfo, content_type: str,
                 content_encoding: str | None, body: bytes, truncated: bool) -> Extraction:
        decoded = decode_body(body, content_encoding)
        if decoded is None:
            return Extraction.empty()
        return provider.extract_response(info, content_type, decoded, truncated)

    @inlineCallbacks
    def _analyse(self, agent: Agent, session_id: str, info: RequestInfo,
                 extraction: Extraction, output_block: str | None = None) -> Any:
        card: Any = None
        values: Any = None
        if self._analyzer.needs_context(extraction.thinking or "", output_block):
            card, values = yield self._context(agent.agent_id)
        state = yield self._state.get_json(self._session_key(agent.agent_id, session_id))
        window = session_window(state)
        now = self._clock.seconds()
        tools = ", ".join(t.name for t in extraction.tool_calls[:10])
        context = f"{info.api} call to {info.model or extraction.model or 'unknown model'}"
        if tools:
            context += f"; tools used: {tools}"
        request = AnalysisRequest(
            agent_id=agent.agent_id, session_id=session_id, provider=info.api or "",
            model=info.model or extraction.model or "unknown", thinking=extraction.thinking or "",
            card=card or {}, conscience_values=values or [],
            window_checkpoints=window_entries(window, now), task_context=context,
            output_block=output_block)
        outcome = yield self._analyzer.analyze(request)
        if self._signing_key is not None:
            model_version = str(outcome.analysis_metadata.get("analysis_model") or "")
            outcome = replace(outcome, input_commitments=input_commitments(
                outcome.thinking_block_hash, request.card, request.conscience_values,
                window_context(request.window_checkpoints), model_version,
                det=self._recurring_json))
        return outcome

    def _session_key(self, agent_id: str, session_id: str) -> str:
        """Window and drift state of one session, under one key so one atomic update
        changes both."""
        return f"session:{agent_id}:{session_id}"

    @inlineCallbacks
    def _context(self, agent_id: str) -> Any:
        """The agent's card and conscience values, both read from the KV cache in one
        round trip; each missing one from the database, or (both down) the last known."""
        card, values = yield self._kv.get_json_many(f"card:{agent_id}",
                                                    f"conscience:{agent_id}")
        if isinstance(card, dict):
            self._memory.remember_card(agent_id, card)
        else:
            card = yield self._stored_context(
                f"card:{agent_id}", self._agents.card(agent_id),
                self._memory.card(agent_id), self._memory.remember_card, agent_id)
        if isinstance(values, list):
            self._memory.remember_conscience(agent_id, values)
        else:
            values = yield self._stored_context(
                f"conscience:{agent_id}", self._agents.conscience_values(agent_id),
                self._memory.conscience(agent_id), self._memory.remember_conscience,
                agent_id)
        return card, values

    @inlineCallbacks
    def _stored_context(self, key: str, stored: Deferred[Any], remembered: Any,
                        remember: Callable[[str, Any], None], agent_id: str) -> Any:
        try:
            value = yield stored
        except Exception:
            if remembered is None:
                raise
            return remembered
        if value is not None:
            remember(agent_id, value)
            self._kv.set_json(key, value)
        return value

    @inlineCallbacks
    def _record_in_session(self, agent: Agent, session_id: str, outcome: AnalysisOutcome,
                           now: float) -> Any:
        """Add the checkpoint to the session's window and drift state, shared by replicas
        through the KV store, and store a drift alert if it completes a streak.

        The update is atomic (compare-and-set, re-run on the state another replica just
        wrote), so of two replicas racing on one session only the update that makes the
        streak reach the threshold alerts; the alert is also unique per streak in the
        database (``streak_key``), which covers an update that could not be stored.
        """
        entry = outcome.window_entry()
        state, alert = yield self._state.update_json(
            self._session_key(agent.agent_id, session_id),
            lambda current: self._session_step(current, entry, now, agent.agent_id))
        self._drift_alert(agent, session_id, outcome, now, state, alert)

    def _drift_alert(self, agent: Agent, session_id: str, outcome: AnalysisOutcome,
                     now: float, state: dict[str, Any], alert: dict[str, Any] | None) -> None:
        if alert is None:
            return
        key = streak_key(state.get("drift"), session_id) \
            or f"{session_id}:{outcome.checkpoint_id}"
        self._writes.submit(drift_alert_write(
            str(alert.get("alert_id") or alert.get("id")), agent.agent_id, session_id,
            alert.get("severity"), alert, key, int(now * 1000)))

    @staticmethod
    def _session_step(current: Any, entry: dict[str, Any], now: float, agent_id: str,
                      ) -> tuple[dict[str, Any], tuple[dict[str, Any], dict[str, Any] | None]]:
        state, alert = session_record(current, entry, now, agent_id=agent_id)
        if isinstance(current, dict) and "chain" in current:
            state["chain"] = current["chain"]
        return state, (state, alert)

    @staticmethod
    def _chained_step(current: Any, entry: dict[str, Any] | None, now: float, agent_id: str,
                      link_of: Callable[[Any], Any]) -> tuple[dict[str, Any], Any]:
        """One checkpoint's step of the session state: its window and drift (a real
        checkpoint: ``entry``) and its chain link, in one atomic update, so replicas
        writing one session concurrently build one chain (a lost race re-runs this on
        the head the winner wrote)."""
        state: dict[str, Any] = dict(current) if isinstance(current, dict) else {}
        alert = None
        if entry is not None:
            state, alert = session_record(current, entry, now, agent_id=agent_id)
        link = link_of(current.get("chain") if isinstance(current, dict) else None)
        state["chain"] = link_head(link)
        return state, (state, alert, link)

    @inlineCallbacks
    def _attest(self, agent: Agent, session_id: str, outcome: AnalysisOutcome,
                now: float, created_at: int) -> Any:
        """The session step with the checkpoint's chain link (``_chained_step``), then its
        attestation row: commitment, link, leaf and signature. With the KV store down the
        session's chain goes on in memory, as a new segment (docs/attestation.md)."""
        assert self._signing_key is not None and outcome.input_commitments is not None
        commitment = outcome.input_commitments["combined_commitment"]
        timestamp = iso_timestamp(created_at)

        def link_of(head: Any) -> Any:
            return next_link(head, outcome.checkpoint_id, outcome.verdict,
                             outcome.thinking_block_hash, commitment, timestamp)

        key = self._session_key(agent.agent_id, session_id)
        entry = None if outcome.synthetic else outcome.window_entry()
        (state, alert, link), stored = yield self._state.update_json_stored(
            key, lambda current: self._chained_step(current, entry, now, agent.agent_id,
                                                    link_of))
        if stored:
            self._outage_chains.pop(key, None)
        else:
            # The head could not be kept: the link just made may share its predecessor
            # with the next one. Go on from this process's own segment instead.
            link = link_of(self._outage_chains.pop(key, None))
            self._outage_chains[key] = link_head(link)
            while len(self._outage_chains) > MAX_OUTAGE_CHAINS:
                del self._outage_chains[next(iter(self._outage_chains))]
        if not outcome.synthetic:
            self._drift_alert(agent, session_id, outcome, now, state, alert)
        return attestation_row(
            self._signing_key, agent_id=agent.agent_id, session_id=session_id,
            checkpoint_id=outcome.checkpoint_id, verdict=outcome.verdict,
            thinking_block_hash=outcome.thinking_block_hash,
            commitments=outcome.input_commitments, link=link, created_at=created_at,
            card_id=outcome.card_id, metadata=outcome.analysis_metadata)

    @inlineCallbacks
    def _record(self, agent: Agent, session_id: str, provider: str, info: RequestInfo,
                outcome: AnalysisOutcome) -> Any:
        now = self._clock.seconds()
        created_at = int(now * 1000)
        attestation = None
        if self._signing_key is not None and outcome.input_commitments is not None:
            try:
                attestation = yield self._attest(agent, session_id, outcome, now,
                                                 created_at)
            except Exception:
                log_failure(log, "Could not attest checkpoint {checkpoint_id}", Failure(),
                            self._outages, checkpoint_id=outcome.checkpoint_id,
                            agent_id=agent.agent_id)
        elif not outcome.synthetic:
            try:
                yield self._record_in_session(agent, session_id, outcome, now)
            except Exception:
                # The KV store is down: the window misses this checkpoint, the checkpoint
                # itself is still recorded and the verdict stands.
                log_failure(log, "Could not record the session window of checkpoint "
                            "{checkpoint_id}", Failure(), self._outages,
                            checkpoint_id=outcome.checkpoint_id, agent_id=agent.agent_id)
        record = CheckpointRecord(
            id=outcome.checkpoint_id, agent_id=agent.agent_id, session_id=session_id,
            provider=provider, model=info.model or outcome.model, verdict=outcome.verdict,
            concerns=outcome.concerns, reasoning_summary=outcome.reasoning_summary,
            conscience_context=outcome.conscience_context,
            window_position=dict(outcome.window_position),
            analysis_metadata=outcome.analysis_metadata,
            thinking_block_hash=outcome.thinking_block_hash, synthetic=outcome.synthetic,
            synthetic_reason=outcome.synthetic_reason, created_at=created_at,
            output_block_hash=outcome.output_block_hash, attestation=attestation)
        # Never waited for, but by a violation: enforcement then counts the session's
        # stored violations, this one included.
        finding = outcome.verdict == "boundary_violation" and not outcome.synthetic
        stored = self._writes.submit(checkpoint_write(record), wait=finding)
        if stored is not None:
            yield stored

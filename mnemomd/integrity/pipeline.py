"""From a proxied call to a stored integrity checkpoint (SPEC §5).

The proxy calls in three places: before forwarding (describe the request, maybe ask the
model to show its reasoning), when the response head arrives (hold it for a verdict, or
say ``pending``), and when the body is complete (extract, analyse, store). Analysis is
off the response path unless the agent is in ``enforce`` mode; it never fails a call.

A stream held in ``enforce`` mode is checked in two steps: ``check_at_hold`` when its
reasoning ends (the verdict releases or refuses the output held behind it), ``trace`` (and
a late ``check`` of reasoning that came after output) when the stream ends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd.agents.identity import Agent
from mnemomd.agents.store import AgentStore
from mnemomd.config import IntegrityConfig
from mnemomd.integrity.checkpoints import CheckpointRecord, CheckpointStore
from mnemomd.integrity.engine import (
    AnalysisOutcome,
    AnalysisRequest,
    IntegrityAnalyzer,
    estimate_tokens,
)
from mnemomd.integrity.window import drift_update, window_add, window_entries
from mnemomd.kv import KVCache
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.providers.base import Extraction, Provider, RequestInfo, decode_body
from mnemomd.storage.traces import OutboxRow, OutboxStore, outbox_expiry_ms

log = Logger()

#: Bodies above this are parsed or serialised on a thread, not on the reactor.
INLINE_JSON_LIMIT = 256 * 1024
THINKING_BUDGET_TOKENS = 1024
WINDOW_TTL = 3600.0
CARD_CACHE_TTL = 300.0
#: Excerpts of thinking and of the response kept in a trace outbox row (each).
OUTBOX_EXCERPT_CHARS = 2000
MAX_TRACED_TOOLS = 32


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


#: What an enforce-mode agent's response without analysable reasoning gets (the
#: ``without_reasoning`` setting): delivered unverified, refused, or its output analysed.
WITHOUT_REASONING_ACTIONS = ("allow", "refuse", "analyse_output")


class WithoutReasoningPolicy(Protocol):
    """``(agent, request info) -> "allow" | "refuse" | "analyse_output"``."""

    def __call__(self, agent: Agent, info: RequestInfo) -> str: ...


class OutputAnalysis(Protocol):
    """Analyses a response's output instead of its reasoning; fires with (verdict,
    outcome or None) and records the checkpoint, as ``check`` does."""

    def __call__(self, agent: Agent, session_id: str, info: RequestInfo,
                 extraction: Extraction) -> Deferred[tuple[str, AnalysisOutcome | None]]: ...


def allow_without_reasoning(agent: Agent, info: RequestInfo) -> str:
    """Today's behaviour until an agent setting says otherwise: delivered, ``skipped``."""
    return "allow"


def reasoning_gap(extraction: Extraction, min_evidence_tokens: int) -> str | None:
    """Why there is no reasoning to analyse (``no_reasoning``, ``redacted_reasoning``,
    ``below_minimum_evidence``), or None when there is."""
    if not extraction.thinking or not extraction.thinking.strip():
        return "redacted_reasoning" if extraction.redacted_thinking else "no_reasoning"
    if estimate_tokens(extraction.thinking) < min_evidence_tokens:
        return "below_minimum_evidence"
    return None


@dataclass(frozen=True)
class HoldCheck:
    """The check at a held stream's hold point.

    ``without_reasoning`` is the action taken when there was no analysable reasoning
    (``gap`` says why): ``allow`` (``verdict`` is today's ``skipped`` or synthetic clear),
    ``refuse``, or ``analyse_output`` (hold to the end, then ``check_output``).
    """

    verdict: str
    outcome: AnalysisOutcome | None
    without_reasoning: str | None = None
    gap: str | None = None


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


#: Called after each stored checkpoint with (agent, session id, verdict, checkpoint id,
#: concerns): enforcement's nudges and auto-containment.
OutcomeHook = Callable[[Agent, str, str, str, list[dict[str, Any]]], Deferred[Any]]


class IntegrityPipeline:
    """The integrity steps of one proxied call, for the proxy."""

    def __init__(self, config: IntegrityConfig, clock: IReactorTime,
                 analyzer: IntegrityAnalyzer, agents: AgentStore, checkpoints: CheckpointStore,
                 kv_cache: KVCache, session_state: KVCache, metrics: GatewayMetrics,
                 outbox: OutboxStore | None = None, *, outbox_ttl: float,
                 min_evidence_tokens: int = 0,
                 without_reasoning: WithoutReasoningPolicy = allow_without_reasoning,
                 output_analysis: OutputAnalysis | None = None) -> None:
        """``outbox_ttl`` (seconds) is how long a queued trace row may live (SPEC §8.1);
        ``min_evidence_tokens`` is the least reasoning that counts as analysable at a held
        stream's hold point; ``without_reasoning`` decides what an enforce-mode response
        without analysable reasoning gets, ``output_analysis`` analyses its output."""
        self._config = config
        self._outbox_ttl = outbox_ttl
        self._min_evidence_tokens = min_evidence_tokens
        self._without_reasoning = without_reasoning
        self._output_analysis = output_analysis
        self._clock = clock
        self._analyzer = analyzer
        self._agents = agents
        self._checkpoints = checkpoints
        self._kv = kv_cache
        self._state = session_state
        self._metrics = metrics
        self._outbox = outbox
        #: Called after each stored checkpoint (enforcement: nudges, auto-containment).
        self.on_outcome: OutcomeHook | None = None
        #: Called when a stored checkpoint queued webhook deliveries (send them now).
        self.on_events_queued: Callable[[], None] | None = None

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
            try:
                encoded = json.dumps(final, ensure_ascii=False).encode()
            except UnicodeEncodeError:  # lone surrogates: only the escaped form is valid
                encoded = json.dumps(final).encode()
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
        return self._outbox is not None and agent is not None and agent.aap_enabled

    # -- when the body is complete --------------------------------------------------------

    @inlineCallbacks
    def analyse(self, provider: Provider, agent: Agent, session_id: str, info: RequestInfo,
                content_type: str, content_encoding: str | None, body: bytes,
                truncated: bool) -> Any:
        """Extract, analyse and record, and queue the call for tracing; fires with
        (verdict, outcome or None). Never fails."""
        extraction = yield self.extract(provider, info, content_type, content_encoding,
                                        body, truncated)
        if extraction is None:
            return "error", None
        result: tuple[str, AnalysisOutcome | None] = ("disabled", None)
        if self.enabled_for(agent):
            result = yield self.check(provider, agent, session_id, info, extraction)
        yield self.trace(agent, session_id, provider.name, info, extraction, *result)
        return result

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
            self._metrics.aip_checks.labels("error").inc()
            return None
        return extraction

    @inlineCallbacks
    def check_at_hold(self, provider: Provider, agent: Agent, session_id: str,
                      info: RequestInfo, extraction: Extraction) -> Any:
        """The check when a held stream's reasoning has ended; fires with a ``HoldCheck``.

        Without analysable reasoning the agent's ``without_reasoning`` policy decides:
        ``allow`` checks as today (``skipped``, or a synthetic clear below the minimum
        evidence), ``refuse`` analyses nothing, ``analyse_output`` defers to the end.
        """
        gap = reasoning_gap(extraction, self._min_evidence_tokens)
        if gap is None:
            verdict, outcome = yield self.check(provider, agent, session_id, info, extraction)
            return HoldCheck(verdict, outcome)
        try:
            action = self._without_reasoning(agent, info)
        except Exception:
            log.failure("without_reasoning policy failed", agent_id=agent.agent_id)
            action = "refuse"
        if action == "refuse":
            self._metrics.aip_checks.labels("unverifiable").inc()
            return HoldCheck("skipped", None, "refuse", gap)
        if action == "analyse_output":
            return HoldCheck("pending", None, "analyse_output", gap)
        verdict, outcome = yield self.check(provider, agent, session_id, info, extraction)
        return HoldCheck(verdict, outcome, "allow", gap)

    def check_output(self, agent: Agent, session_id: str, info: RequestInfo,
                     extraction: Extraction) -> Deferred[tuple[str, AnalysisOutcome | None]]:
        """``without_reasoning: analyse_output``: the output analysed instead; without an
        output analysis the answer is ``unverifiable`` (refused, never allowed)."""
        if self._output_analysis is None:
            return succeed(("unverifiable", None))
        return maybeDeferred(self._output_analysis, agent, session_id, info, extraction)

    @inlineCallbacks
    def check(self, provider: Provider, agent: Agent, session_id: str, info: RequestInfo,
              extraction: Extraction) -> Any:
        """Analyse the extraction's thinking and record the checkpoint; fires with
        (verdict, outcome or None). Never fails."""
        try:
            if not extraction.thinking:
                self._metrics.aip_checks.labels("skipped").inc()
                return "skipped", None
            outcome = yield self._analyse(agent, session_id, info, extraction)
            yield self._record(agent, session_id, provider.name, info, outcome)
            if self.on_outcome is not None:
                yield self.on_outcome(agent, session_id, outcome.verdict,
                                      outcome.checkpoint_id, outcome.concerns)
            return outcome.verdict, outcome
        except Exception:
            log.failure("Integrity analysis pipeline failed", agent_id=agent.agent_id)
            self._metrics.aip_checks.labels("error").inc()
            return "error", None

    @inlineCallbacks
    def trace(self, agent: Agent, session_id: str, provider: str, info: RequestInfo,
              extraction: Extraction, verdict: str, outcome: AnalysisOutcome | None) -> Any:
        """One trace outbox row for the observer (SPEC §8.1) when the agent is traced; a
        failure costs the trace, never the call."""
        if self._outbox is None or not self.tracing_for(agent):
            return None
        now_ms = int(self._clock.seconds() * 1000)
        row = OutboxRow(
            id=f"ob-{uuid.uuid4().hex}", agent_id=agent.agent_id, session_id=session_id,
            provider=provider, model=info.model or extraction.model,
            checkpoint_id=outcome.checkpoint_id if outcome is not None else None,
            payload=outbox_payload(info, extraction, verdict), attempts=0,
            created_at=now_ms, expires_at=outbox_expiry_ms(now_ms, self._outbox_ttl))
        try:
            yield self._outbox.add(row)
        except Exception:
            log.failure("Could not queue the call for tracing", agent_id=agent.agent_id)

    @staticmethod
    def _extract(provider: Provider, info: RequestInfo, content_type: str,
                 content_encoding: str | None, body: bytes, truncated: bool) -> Extraction:
        decoded = decode_body(body, content_encoding)
        if decoded is None:
            return Extraction.empty()
        return provider.extract_response(info, content_type, decoded, truncated)

    @inlineCallbacks
    def _analyse(self, agent: Agent, session_id: str, info: RequestInfo,
                 extraction: Extraction) -> Any:
        card = yield self._card(agent.agent_id)
        values = yield self._conscience(agent.agent_id)
        window = yield self._state.get_json(self._window_key(agent.agent_id, session_id))
        now = self._clock.seconds()
        tools = ", ".join(t.name for t in extraction.tool_calls[:10])
        context = f"{info.api} call to {info.model or extraction.model or 'unknown model'}"
        if tools:
            context += f"; tools used: {tools}"
        request = AnalysisRequest(
            agent_id=agent.agent_id, session_id=session_id, provider=info.api or "",
            model=info.model or extraction.model or "unknown", thinking=extraction.thinking,
            card=card or {}, conscience_values=values or [],
            window_checkpoints=window_entries(window, now), task_context=context)
        outcome = yield self._analyzer.analyze(request)
        return outcome

    def _window_key(self, agent_id: str, session_id: str) -> str:
        return f"window:{agent_id}:{session_id}"

    def _drift_key(self, agent_id: str, session_id: str) -> str:
        return f"drift:{agent_id}:{session_id}"

    @inlineCallbacks
    def _card(self, agent_id: str) -> Any:
        key = f"card:{agent_id}"
        cached = yield self._kv.get_json(key)
        if isinstance(cached, dict):
            return cached
        card = yield self._agents.card(agent_id)
        if card is not None:
            self._kv.set_json(key, card)
        return card

    @inlineCallbacks
    def _conscience(self, agent_id: str) -> Any:
        key = f"conscience:{agent_id}"
        cached = yield self._kv.get_json(key)
        if isinstance(cached, list):
            return cached
        values = yield self._agents.conscience_values(agent_id)
        if values is not None:
            self._kv.set_json(key, values)
        return values

    @inlineCallbacks
    def _record(self, agent: Agent, session_id: str, provider: str, info: RequestInfo,
                outcome: AnalysisOutcome) -> Any:
        now = self._clock.seconds()
        if not outcome.synthetic:
            # Window and drift state are shared through the KV store (replicas agree).
            window_key = self._window_key(agent.agent_id, session_id)
            window = yield self._state.get_json(window_key)
            window = window_add(window, outcome.window_entry(), now)
            self._state.set_json(window_key, window)
            drift_key = self._drift_key(agent.agent_id, session_id)
            drift = yield self._state.get_json(drift_key)
            drift, alert = drift_update(
                drift, outcome.verdict, now, checkpoint_id=outcome.checkpoint_id,
                categories=[c.get("category", "") for c in outcome.concerns],
                agent_id=agent.agent_id, session_id=session_id,
                window=window_entries(window, now))
            self._state.set_json(drift_key, drift)
            if alert is not None:
                stored = yield self._checkpoints.insert_drift_alert(
                    str(alert.get("alert_id") or alert.get("id")), agent.agent_id, session_id,
                    alert.get("severity"), alert, f"{session_id}:{outcome.checkpoint_id}",
                    int(now * 1000))
                if stored:
                    log.warn("Integrity drift detected for {agent_id}", agent_id=agent.agent_id)
        record = CheckpointRecord(
            id=outcome.checkpoint_id, agent_id=agent.agent_id, session_id=session_id,
            provider=provider, model=info.model or outcome.model, verdict=outcome.verdict,
            concerns=outcome.concerns, reasoning_summary=outcome.reasoning_summary,
            conscience_context=outcome.conscience_context,
            window_position=dict(outcome.window_position),
            analysis_metadata=outcome.analysis_metadata,
            thinking_block_hash=outcome.thinking_block_hash, synthetic=outcome.synthetic,
            synthetic_reason=outcome.synthetic_reason, created_at=int(now * 1000))
        try:
            queued = yield self._checkpoints.insert(record)
            if queued and self.on_events_queued is not None:
                self.on_events_queued()
        except Exception:
            log.failure("Could not store checkpoint {checkpoint_id}", Failure(),
                        checkpoint_id=outcome.checkpoint_id)

"""Integrity analysis of one thinking block (SPEC §5.2–5.5, §5.7).

The prompt and the verdict parsing are the AIP SDK's pure functions; this module adds
what a gateway needs around them: the minimum-evidence gate, the backend call through the
circuit breaker, tolerance of prose around the verdict JSON, the failure mode, evidence
capping, metrics, and an outcome that carries derived analysis only — never the
thinking text or the prompt.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aip.analysis.engine import (
    CheckIntegrityInput,
    ThinkingInput,
    check_integrity,
    hash_thinking_block,
    map_verdict_to_action,
    map_verdict_to_proceed,
)
from aip.analysis.prompt import PromptInput, build_conscience_prompt
from aip.constants import CHECKPOINT_ID_PREFIX, MAX_EVIDENCE_LENGTH
from aip.schemas.checkpoint import (
    AnalysisMetadata,
    IntegrityCheckpoint,
    WindowPosition,
)
from aip.schemas.concern import IntegrityConcern
from aip.schemas.config import (
    AlignmentCard,
    AlignmentCardValue,
    AutonomyEnvelope,
    EscalationTrigger,
)
from aip.schemas.conscience import ConscienceContext, ConscienceValue
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd.config.analysis import AnalysisSettings
from mnemomd.integrity.backends import (
    AnalysisBackend,
    AnalysisFailure,
    AnalysisHTTP,
    HybridBackend,
    build_backend,
    failure_reason,
)
from mnemomd.integrity.breaker import CircuitBreaker
from mnemomd.integrity.output import (
    NO_REASONING_THINKING,
    SCOPE_OUTPUT_ONLY,
    SCOPE_THINKING_AND_OUTPUT,
    SCOPE_THINKING_ONLY,
    OutputTruncation,
    output_hash,
    truncate_output,
    with_output,
)
from mnemomd.ops.labels import LabelCache
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.providers import PROVIDERS, ProviderRegistry, mnemom

log = Logger()

BELOW_MINIMUM_EVIDENCE = "below minimum evidence"
#: ``analysis_metadata.analysed_by`` of a checkpoint judged by Mnemom's hybrid service.
HYBRID_SERVICE = "mnemom_hybrid"
CONSCIENCE_TYPES = frozenset({"BOUNDARY", "FEAR", "COMMITMENT", "BELIEF", "HOPE"})
#: How many ``{`` positions are tried when looking for the verdict inside prose.
MAX_JSON_CANDIDATES = 32
#: The SDK's own clean-up of trailing commas before ``}`` or ``]``.
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


@dataclass(frozen=True)
class AnalysisRequest:
    """Everything one analysis needs. ``thinking`` is kept out of ``repr`` on purpose."""

    agent_id: str
    session_id: str
    provider: str
    model: str
    thinking: str = field(repr=False)
    #: The agent's AAP alignment card JSON (unified ``autonomy`` or legacy
    #: ``autonomy_envelope``; ``values`` as ``{declared, definitions}`` or a list).
    card: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: ``[{type, content, id}]``; the SDK puts only BOUNDARY and FEAR in the prompt.
    conscience_values: Sequence[Mapping[str, Any]] = ()
    #: The session window's recent checkpoints, oldest first: window entries
    #: (``{checkpoint_id, verdict, reasoning_summary, …}``) or SDK checkpoints.
    window_checkpoints: Sequence[Mapping[str, Any] | IntegrityCheckpoint] = ()
    task_context: str = field(default="", repr=False)
    #: How sure the provider adapter is that this is the model's reasoning (0..1).
    extraction_confidence: float = 1.0
    linked_trace_id: str | None = None
    #: Set for output analysis (``without_reasoning: analyse_output``): the response's
    #: text and tool calls, analysed with ``thinking`` (the short or empty reasoning).
    output_block: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AnalysisOutcome:
    """An integrity checkpoint (SPEC §5.7) and how to act on it; derived data only."""

    checkpoint_id: str
    agent_id: str
    card_id: str
    session_id: str
    provider: str
    model: str
    timestamp: str
    verdict: str
    concerns: list[dict[str, Any]]
    reasoning_summary: str
    conscience_context: dict[str, Any]
    window_position: dict[str, int]
    analysis_metadata: dict[str, Any]
    #: None when no reasoning was analysed (output analysis without any).
    thinking_block_hash: str | None
    synthetic: bool
    synthetic_reason: str | None
    action: str
    proceed: bool
    linked_trace_id: str | None = None
    cross_validation_warnings: list[str] = field(default_factory=list)
    #: SHA-256 of the output block, for output analysis only.
    output_block_hash: str | None = None
    #: What the analysis saw, as hashes (``attestation.input_commitments``); set by the
    #: pipeline when attestation is on.
    input_commitments: dict[str, str] | None = None

    @property
    def analysis_scope(self) -> str:
        """``thinking_only``, ``output_only`` or ``thinking_and_output``."""
        return str(self.analysis_metadata.get("analysis_scope") or SCOPE_THINKING_ONLY)

    @property
    def failure_reason(self) -> str | None:
        reason = self.analysis_metadata.get("failure_reason")
        return str(reason) if reason is not None else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, for the checkpoint store and the API."""
        return asdict(self)

    def window_entry(self) -> dict[str, Any]:
        """What the session window keeps of this checkpoint (see ``window.window_add``)."""
        return {
            "checkpoint_id": self.checkpoint_id,
            "session_id": self.session_id,
            "verdict": self.verdict,
            "reasoning_summary": self.reasoning_summary,
            "concern_categories": [c["category"] for c in self.concerns],
            "analysis_duration_ms": self.analysis_metadata.get("analysis_duration_ms", 0.0),
        }


def thinking_hash(thinking: str) -> str:
    """SHA-256 hex of the UTF-8 thinking text, as the SDK's ``hash_thinking_block``.

    Text holding lone surrogates (undecodable bytes kept by ``surrogateescape``) cannot
    be UTF-8 encoded; it is hashed with ``surrogatepass`` rather than failing.
    """
    try:
        return hash_thinking_block(thinking)
    except UnicodeEncodeError:
        return hashlib.sha256(thinking.encode("utf-8", "surrogatepass")).hexdigest()


def estimate_tokens(text: str) -> int:
    """The SDK's estimate: ``ceil(len(text) / 4)``."""
    return math.ceil(len(text) / 4)


# ---------------------------------------------------------------------------
# Inputs for the SDK
# ---------------------------------------------------------------------------


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def below_minimum_evidence(thinking: str, min_tokens: int, tokens: int | None = None) -> bool:
    """Whether ``thinking`` is too little to analyse: blank, or fewer than ``min_tokens``
    estimated tokens (``tokens`` when the caller has already estimated them)."""
    if not thinking.strip():
        return True
    return (estimate_tokens(thinking) if tokens is None else tokens) < min_tokens


def _card_id(card: Any) -> str:
    value = card.get("card_id") if isinstance(card, Mapping) else None
    return value if isinstance(value, str) and value else "unknown"


def _window_size(entries: Any) -> int:
    return len(entries) if isinstance(entries, Sequence) else 0


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]


def _card_values(values: Any) -> list[AlignmentCardValue]:
    """Card values in priority order (SDK: ascending ``priority``, 1 = most important)."""
    if isinstance(values, list):  # the AIP shape: [{name, priority, description}]
        result = []
        for i, v in enumerate(values):
            if isinstance(v, dict) and isinstance(v.get("name"), str):
                priority = v.get("priority")
                result.append(AlignmentCardValue(
                    name=v["name"],
                    priority=priority if isinstance(priority, int) else i + 1,
                    description=v.get("description") if isinstance(v.get("description"),
                                                                   str) else None))
        return result
    if not isinstance(values, dict):
        return []
    definitions = values.get("definitions")
    definitions = definitions if isinstance(definitions, dict) else {}
    declared = _str_list(values.get("declared"))

    def weight(item: tuple[int, str]) -> tuple[float, int]:
        # AAP: higher priority = more important; ties keep the declared order.
        definition = definitions.get(item[1])
        priority = definition.get("priority", 0) if isinstance(definition, dict) else 0
        return (-float(priority) if isinstance(priority, int | float) else 0.0, item[0])

    result = []
    for rank, (_, name) in enumerate(sorted(enumerate(declared), key=weight), start=1):
        definition = definitions.get(name)
        description = definition.get("description") if isinstance(definition, dict) else None
        result.append(AlignmentCardValue(name=name, priority=rank,
                                         description=_str(description) or None))
    return result


def card_from_dict(card: Mapping[str, Any] | None) -> AlignmentCard:
    """The SDK's card from AAP card JSON; missing or ill-typed parts become empty.

    Principal, audit and extensions are not read: the SDK must omit them from the
    prompt (PII risk), so they never need to be converted.
    """
    if not isinstance(card, Mapping):
        card = {}
    autonomy = card.get("autonomy") or card.get("autonomy_envelope") or {}
    autonomy = autonomy if isinstance(autonomy, dict) else {}
    triggers = []
    raw_triggers = autonomy.get("escalation_triggers")
    for t in raw_triggers if isinstance(raw_triggers, list) else []:
        if isinstance(t, dict) and isinstance(t.get("condition"), str):
            triggers.append(EscalationTrigger(condition=t["condition"],
                                              action=_str(t.get("action"), "escalate"),
                                              reason=_str(t.get("reason")) or None))
    description = card.get("agent_description") or card.get("description")
    return AlignmentCard(
        card_id=_card_id(card),
        values=_card_values(card.get("values")),
        autonomy_envelope=AutonomyEnvelope(
            bounded_actions=_str_list(autonomy.get("bounded_actions")),
            forbidden_actions=_str_list(autonomy.get("forbidden_actions")),
            escalation_triggers=triggers),
        agent_description=_str(description) or None,
    )


def conscience_values_from_dicts(values: Sequence[Mapping[str, Any]]) -> list[ConscienceValue]:
    """The SDK's conscience values; entries of an unknown type or without content dropped."""
    result: list[ConscienceValue] = []
    for v in values:
        if isinstance(v, ConscienceValue):
            result.append(v)
        elif (isinstance(v, Mapping) and v.get("type") in CONSCIENCE_TYPES
              and isinstance(v.get("content"), str) and v["content"]):
            result.append(ConscienceValue(type=v["type"], content=v["content"],
                                          id=_str(v.get("id")) or None))
    return result


def sdk_checkpoint(entry: Mapping[str, Any]) -> IntegrityCheckpoint:
    """An SDK checkpoint standing for a window entry.

    The SDK's prompt builder reads only its verdict and reasoning summary; drift
    detection its id, verdict, agent, session and concern categories.
    """
    return IntegrityCheckpoint(
        checkpoint_id=_str(entry.get("checkpoint_id")), agent_id="", card_id="",
        session_id=_str(entry.get("session_id")), timestamp="", thinking_block_hash="",
        provider="", model="", verdict=entry.get("verdict", "clear"),
        concerns=[], reasoning_summary=_str(entry.get("reasoning_summary")),
        conscience_context=ConscienceContext(),
        window_position=WindowPosition(index=0, window_size=0),
        analysis_metadata=AnalysisMetadata(
            analysis_model="", analysis_duration_ms=0.0, thinking_tokens_original=0,
            thinking_tokens_analyzed=0, truncated=False, extraction_confidence=0.0))


def window_for_prompt(
        entries: Sequence[Mapping[str, Any] | IntegrityCheckpoint]) -> list[IntegrityCheckpoint]:
    return [e if isinstance(e, IntegrityCheckpoint) else sdk_checkpoint(e)
            for e in entries if isinstance(e, IntegrityCheckpoint | Mapping)]


# ---------------------------------------------------------------------------
# Verdict parsing
# ---------------------------------------------------------------------------


def json_candidates(text: str) -> Iterator[str]:
    """The text itself, then each top-level JSON object in it, in order.

    The SDK's parser strips code fences and trailing commas but rejects any prose
    around the JSON, which models add despite being told not to. Objects are found
    with the C decoder (after the SDK's own trailing-comma clean-up), so a huge or
    hostile answer costs little reactor time.
    """
    yield text
    cleaned = _TRAILING_COMMA.sub(r"\1", text)
    decoder = json.JSONDecoder()
    start = cleaned.find("{")
    tried = 0
    while start != -1 and tried < MAX_JSON_CANDIDATES:
        tried += 1
        try:
            value, end = decoder.raw_decode(cleaned, start)
        except ValueError:
            start = cleaned.find("{", start + 1)
            continue
        if isinstance(value, dict):
            yield cleaned[start:end]
        start = cleaned.find("{", end)


def parse_verdict(text: str, make_input: Any) -> IntegrityCheckpoint:
    """The first candidate the SDK's ``check_integrity`` accepts.

    ``make_input(candidate)`` builds the ``CheckIntegrityInput``. Raises
    ``AnalysisFailure("malformed")`` — never the SDK's ``ValueError``, whose message
    quotes the model's output.
    """
    for candidate in json_candidates(text):
        try:
            return check_integrity(make_input(candidate))
        except (ValueError, TypeError, AttributeError, KeyError):
            continue
    raise AnalysisFailure("malformed")


# ---------------------------------------------------------------------------
# The analyzer
# ---------------------------------------------------------------------------


class IntegrityAnalyzer:
    """Analyses thinking blocks; ``analyze`` always produces an outcome, never an error."""

    def __init__(self, settings: AnalysisSettings, clock: IReactorTime,
                 backend: AnalysisBackend, breaker: CircuitBreaker | None = None,
                 metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self._clock = clock
        self.backend = backend
        self.breaker = breaker if breaker is not None else CircuitBreaker(
            clock, settings.breaker_failures, settings.breaker_cooldown,
            name=backend.name)
        self._metrics = metrics
        self._checks = LabelCache(metrics.aip_checks) if metrics is not None else None

    def needs_context(self, thinking: str, output_block: str | None = None) -> bool:
        """Whether analysing this needs the agent's card and conscience values: False when
        the outcome is decided without the model (thinking below the minimum evidence
        and no output to analyse), so the caller may skip looking them up."""
        if output_block is not None:
            return True
        return not below_minimum_evidence(thinking, self.settings.min_evidence_tokens)

    def analyze(self, request: AnalysisRequest) -> Deferred[AnalysisOutcome]:
        """The outcome of analysing ``request.thinking`` (and ``request.output_block``
        when set); fires with a synthetic outcome (by the failure mode) whenever analysis
        cannot produce a verdict."""
        started = self._clock.seconds()
        output = None
        if request.output_block is not None:
            output = truncate_output(request.output_block, self.settings.output_token_budget)
        d: Deferred[Any] = maybeDeferred(self._analyze, request, started, output)
        d.addErrback(self._internal_error, request, started)
        if output is not None:
            d.addCallback(self._output_scoped, request, output)
        d.addCallback(self._counted)
        return d

    # -- the pipeline ------------------------------------------------------

    def _analyze(self, request: AnalysisRequest, started: float,
                 output: OutputTruncation | None = None) -> Deferred[Any] | AnalysisOutcome:
        thinking = request.thinking if request.thinking.strip() else ""
        digest = thinking_hash(request.thinking)
        tokens = estimate_tokens(request.thinking)
        if output is None and below_minimum_evidence(thinking, self.settings.min_evidence_tokens,
                                                     tokens):
            summary = (f"Thinking below minimum evidence ({tokens} < "
                       f"{self.settings.min_evidence_tokens} tokens); not analyzed.")
            return self._synthetic(request, "clear", BELOW_MINIMUM_EVIDENCE, summary, digest,
                                   tokens, started, failure=None)
        if isinstance(self.backend, HybridBackend):
            return self._analyze_hybrid(self.backend, request, thinking, digest, tokens,
                                        started)
        # Output has no minimum evidence: a one-line tool call is what must be analysed.
        prompt = build_conscience_prompt(PromptInput(
            card=card_from_dict(request.card),
            conscience_values=conscience_values_from_dicts(request.conscience_values),
            window_context=window_for_prompt(request.window_checkpoints),
            thinking_block=thinking or NO_REASONING_THINKING,
            task_context=request.task_context or None,
            token_budget=self.settings.thinking_token_budget))
        system, user = prompt.system, prompt.user
        if output is not None:
            system, user = with_output(system, user, output)
        stats = (prompt.original_tokens, prompt.analyzed_tokens, prompt.truncated)
        if not thinking:
            stats = (0, 0, False)  # the placeholder is not the agent's reasoning
        del prompt  # nothing below may keep the prompt
        if not self.breaker.allow():
            return self._failed(request, "circuit_open", digest, tokens, started)
        d: Deferred[Any] = maybeDeferred(self.backend.complete, system, user,
                                         self.settings.max_tokens)
        del system, user
        d.addCallbacks(self._answered, self._backend_failed,
                       callbackArgs=(request, digest, stats, started),
                       errbackArgs=(request, digest, tokens, started))
        return d

    def _analyze_hybrid(self, backend: HybridBackend, request: AnalysisRequest,
                        thinking: str, digest: str, tokens: int,
                        started: float) -> Deferred[Any] | AnalysisOutcome:
        """The hybrid service judges the thinking block itself: the gateway sends the
        block, the card's values, the conscience values, the window's summaries and its
        own one-line description of the call, never a prompt or the user's messages."""
        card = card_from_dict(request.card)
        body = mnemom.analyze_body(
            thinking=thinking, provider=request.provider, model=request.model,
            agent_id=request.agent_id, session_id=request.session_id,
            card_id=card.card_id, card_values=[asdict(v) for v in card.values],
            conscience_values=[asdict(v) for v in
                               conscience_values_from_dicts(request.conscience_values)],
            window=[e for e in request.window_checkpoints if isinstance(e, Mapping)],
            task_context=request.task_context,
            store_checkpoint=self.settings.store_checkpoint)
        if not self.breaker.allow():
            return self._failed(request, "circuit_open", digest, tokens, started)
        d: Deferred[Any] = maybeDeferred(backend.checkpoint, body)
        del body
        d.addCallbacks(self._judged, self._backend_failed,
                       callbackArgs=(request, digest, tokens, started),
                       errbackArgs=(request, digest, tokens, started))
        return d

    def _judged(self, judged: dict[str, Any], request: AnalysisRequest, digest: str,
                tokens: int, started: float) -> AnalysisOutcome:
        """The service's checkpoint as ours: its verdict, concerns and summary, our id,
        hash and window position, marked as analysed by the hybrid service."""
        self.breaker.record_success()
        concerns = [c if self.settings.store_evidence
                    else {k: v for k, v in c.items() if k != "evidence"}
                    for c in judged["concerns"]]
        window_size = _window_size(request.window_checkpoints)
        verdict = judged["verdict"]
        sdk_concerns = [IntegrityConcern(
            category=c["category"], severity=c["severity"], description=c["description"],
            evidence=c.get("evidence", ""), relevant_card_field=c["relevant_card_field"],
            relevant_conscience_value=c["relevant_conscience_value"])
            for c in judged["concerns"]]
        return AnalysisOutcome(
            checkpoint_id=f"{CHECKPOINT_ID_PREFIX}{uuid.uuid4()}",
            agent_id=request.agent_id, card_id=_card_id(request.card),
            session_id=request.session_id, provider=request.provider, model=request.model,
            timestamp=self._timestamp(), verdict=verdict, concerns=concerns,
            reasoning_summary=judged["reasoning_summary"],
            conscience_context=asdict(ConscienceContext(consultation_depth="standard")),
            window_position={"index": window_size, "window_size": window_size + 1},
            analysis_metadata={
                "analysis_model": judged["analysis_model"],
                "analysis_duration_ms": self._elapsed_ms(started),
                "thinking_tokens_original": tokens, "thinking_tokens_analyzed": tokens,
                "truncated": False, "extraction_confidence": request.extraction_confidence,
                "backend": self.backend.name, "analysed_by": HYBRID_SERVICE,
                "hybrid_checkpoint_id": judged["remote_checkpoint_id"],
                "synthetic": False, "failure_reason": None,
                "analysis_scope": SCOPE_THINKING_ONLY},
            thinking_block_hash=digest, synthetic=False, synthetic_reason=None,
            action=map_verdict_to_action(verdict, sdk_concerns),
            proceed=map_verdict_to_proceed(verdict),
            linked_trace_id=request.linked_trace_id)

    @staticmethod
    def _output_scoped(outcome: AnalysisOutcome, request: AnalysisRequest,
                       output: OutputTruncation) -> AnalysisOutcome:
        """An output analysis' outcome says so: the output block's hash, no thinking hash
        without thinking, and the TypeScript SDK's output metadata."""
        assert request.output_block is not None
        with_thinking = bool(request.thinking.strip())
        metadata = {
            **outcome.analysis_metadata,
            "analysis_scope": SCOPE_THINKING_AND_OUTPUT if with_thinking else SCOPE_OUTPUT_ONLY,
            "output_tokens_original": output.original_tokens,
            "output_tokens_analyzed": 0 if outcome.synthetic else output.analyzed_tokens,
            "output_truncated": output.truncated,
        }
        return replace(
            outcome, analysis_metadata=metadata,
            output_block_hash=output_hash(request.output_block),
            thinking_block_hash=outcome.thinking_block_hash if with_thinking else None)

    def _answered(self, text: str, request: AnalysisRequest, digest: str,
                  stats: tuple[int, int, bool], started: float) -> AnalysisOutcome:
        duration_ms = self._elapsed_ms(started)
        original, analyzed, truncated = stats
        card_id = _card_id(request.card)
        window_size = _window_size(request.window_checkpoints)

        def make_input(candidate: str) -> CheckIntegrityInput:
            return CheckIntegrityInput(
                analysis_response=candidate,
                thinking=ThinkingInput(hash=digest, provider=request.provider,
                                       model=request.model, tokens_original=original,
                                       tokens_analyzed=analyzed, truncated=truncated,
                                       confidence=request.extraction_confidence),
                agent_id=request.agent_id, card_id=card_id, session_id=request.session_id,
                window_position=WindowPosition(index=window_size,
                                               window_size=window_size + 1),
                analysis_model=self.backend.model, analysis_duration_ms=duration_ms,
                linked_trace_id=request.linked_trace_id)

        try:
            checkpoint = parse_verdict(text if isinstance(text, str) else "", make_input)
        except AnalysisFailure:
            self.breaker.record_failure()
            return self._failed(request, "malformed", digest, original, started)
        except Exception:
            self.breaker.record_failure()  # never leave a half-open trial claimed
            return self._failed(request, "internal", digest, original, started)
        self.breaker.record_success()
        return self._from_checkpoint(checkpoint)

    def _backend_failed(self, failure: Failure, request: AnalysisRequest, digest: str,
                        tokens: int, started: float) -> AnalysisOutcome:
        reason = failure_reason(failure)
        if reason == "cancelled":
            self.breaker.record_abandoned()
        else:
            self.breaker.record_failure()
        return self._failed(request, reason, digest, tokens, started)

    def _internal_error(self, failure: Failure, request: AnalysisRequest,
                        started: float) -> AnalysisOutcome:
        # Only the type is logged: SDK error messages may quote the model's output.
        log.error("Integrity analysis error ({reason}) for agent {agent_id}",
                  reason=failure.type.__name__, agent_id=request.agent_id)
        thinking = request.thinking if isinstance(request.thinking, str) else ""
        return self._failed(request, "internal", thinking_hash(thinking),
                            estimate_tokens(thinking), started)

    def _counted(self, outcome: AnalysisOutcome) -> AnalysisOutcome:
        if self._checks is not None:
            self._checks(outcome.verdict).inc()
            if outcome.failure_reason is not None:
                self._metrics.aip_analysis_failures.labels(
                    self.backend.name, outcome.failure_reason).inc()
        return outcome

    # -- outcomes ------------------------------------------------------------

    def _elapsed_ms(self, started: float) -> float:
        return max(0.0, (self._clock.seconds() - started) * 1000.0)

    def _timestamp(self) -> str:
        return datetime.fromtimestamp(self._clock.seconds(), UTC).isoformat()

    def _concern(self, concern: Any) -> dict[str, Any]:
        entry = {"category": concern.category, "severity": concern.severity,
                 "description": concern.description,
                 "relevant_card_field": concern.relevant_card_field,
                 "relevant_conscience_value": concern.relevant_conscience_value}
        if self.settings.store_evidence:
            entry["evidence"] = _str(concern.evidence)[:MAX_EVIDENCE_LENGTH]
        return entry

    def _from_checkpoint(self, cp: IntegrityCheckpoint) -> AnalysisOutcome:
        metadata = asdict(cp.analysis_metadata)
        metadata.update(backend=self.backend.name, synthetic=False, failure_reason=None,
                        analysis_scope=SCOPE_THINKING_ONLY)
        return AnalysisOutcome(
            checkpoint_id=cp.checkpoint_id, agent_id=cp.agent_id, card_id=cp.card_id,
            session_id=cp.session_id, provider=cp.provider, model=cp.model,
            timestamp=self._timestamp(), verdict=cp.verdict,
            concerns=[self._concern(c) for c in cp.concerns],
            reasoning_summary=cp.reasoning_summary,
            conscience_context=asdict(cp.conscience_context),
            window_position=asdict(cp.window_position), analysis_metadata=metadata,
            thinking_block_hash=cp.thinking_block_hash, synthetic=False,
            synthetic_reason=None,
            action=map_verdict_to_action(cp.verdict, cp.concerns),
            proceed=map_verdict_to_proceed(cp.verdict),
            linked_trace_id=cp.linked_trace_id,
            cross_validation_warnings=list(cp.cross_validation_warnings or []))

    def _failed(self, request: AnalysisRequest, reason: str, digest: str, tokens: int,
                started: float) -> AnalysisOutcome:
        # With the breaker open every call fails at once; the breaker logs that once.
        emit = log.debug if reason == "circuit_open" else log.warn
        emit("Integrity analysis failed ({reason}) for agent {agent_id}, {provider} backend",
             reason=reason, agent_id=request.agent_id, provider=self.backend.name)
        if self.settings.failure_mode == "fail_closed":
            verdict = "boundary_violation"
            summary = (f"Integrity analysis failed ({reason}); fail-closed: treated as a "
                       "boundary violation.")
        else:
            verdict = "clear"
            summary = f"Integrity analysis failed ({reason}); fail-open: treated as clear."
        return self._synthetic(request, verdict, f"analysis failed: {reason}", summary,
                               digest, tokens, started, failure=reason)

    def _synthetic(self, request: AnalysisRequest, verdict: str, synthetic_reason: str,
                   summary: str, digest: str, tokens: int, started: float,
                   failure: str | None) -> AnalysisOutcome:
        window_size = _window_size(request.window_checkpoints)
        card_id = _card_id(request.card)
        return AnalysisOutcome(
            checkpoint_id=f"{CHECKPOINT_ID_PREFIX}{uuid.uuid4()}",
            agent_id=request.agent_id, card_id=card_id, session_id=request.session_id,
            provider=request.provider, model=request.model, timestamp=self._timestamp(),
            verdict=verdict, concerns=[], reasoning_summary=summary,
            conscience_context=asdict(ConscienceContext(consultation_depth="surface")),
            window_position={"index": window_size, "window_size": window_size + 1},
            analysis_metadata={
                "analysis_model": self.backend.model if failure else "none",
                "analysis_duration_ms": self._elapsed_ms(started),
                "thinking_tokens_original": tokens, "thinking_tokens_analyzed": 0,
                "truncated": False, "extraction_confidence": request.extraction_confidence,
                "backend": self.backend.name, "synthetic": True, "failure_reason": failure,
                "analysis_scope": SCOPE_THINKING_ONLY},
            thinking_block_hash=digest, synthetic=True, synthetic_reason=synthetic_reason,
            # The SDK's synthetic signals: proceed only when clear, otherwise escalate.
            action="continue" if verdict == "clear" else "deny_and_escalate",
            proceed=verdict == "clear",
            linked_trace_id=request.linked_trace_id)


def build_analyzer(settings: AnalysisSettings, reactor: Any,
                   metrics: GatewayMetrics | None = None,
                   clock: IReactorTime | None = None,
                   providers: ProviderRegistry = PROVIDERS,
                   ) -> tuple[IntegrityAnalyzer, AnalysisHTTP]:
    """An analyzer wired to the backend ``settings.provider`` names in ``providers``; also
    returns the HTTP client to close."""
    clock = clock if clock is not None else reactor
    http = AnalysisHTTP(reactor, clock=clock, max_response_bytes=settings.max_response_bytes)
    backend = build_backend(settings, http, providers)
    breaker = CircuitBreaker(clock, settings.breaker_failures, settings.breaker_cooldown,
                             name=backend.name)
    return IntegrityAnalyzer(settings, clock, backend, breaker, metrics), http



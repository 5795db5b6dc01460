"""The ``traces`` job: each outbox row becomes one AP-trace (SPEC §8.1, §8.2).

A trace records the call as an AAP decision: what the model could have done (the
alternatives), what it did (the selected option: a tool call or a plain answer), why, and
which of the card's values applied. The analysis backend can produce that decision from
the excerpts; without one, the heuristic below builds it from the tool names alone. The
trace is validated with the AAP SDK's ``APTrace`` model, verified against the agent's card
with ``verify_trace``, stored once per outbox row and linked to its checkpoint.

Heuristic (no backend, or the backend failed):
- alternatives: one per tool the model called (``tool:<name>``) plus ``respond``;
- selected: a forbidden tool if one was called, else the first tool, else ``respond``;
- the action is named after the selected tool (``inference`` for a plain answer), its
  category ``forbidden`` when the card forbids it, else ``bounded``;
- values applied: ``helpfulness`` when the card declares it, and ``transparency`` when
  the model's reasoning was readable and the card declares it;
- the reasoning is a sentence built from tool names; no model text enters a trace.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aap import APTrace, verify_trace
from aap.verification.api import action_matches_list
from pydantic import ValidationError
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    gatherResults,
    inlineCallbacks,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from mnemomd.agents.store import AgentStore
from mnemomd.integrity.backends import AnalysisBackend
from mnemomd.kv.keyring import OutboxKeyring, SealError, open_with, sealed_key_id
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.storage.traces import (
    OutboxDepth,
    OutboxFailure,
    OutboxRow,
    OutboxStore,
    TraceRecord,
)

log = Logger()

#: Rows claimed, built and stored per batch (one claim statement, one hop to a worker
#: thread, one finishing transaction), and batches in flight at once.
BATCH = 100
CONCURRENCY = 2
#: The share of the time a run's batches may take when the job runs in the proxy's own
#: process (role ``all``): after each batch it waits three times as long as the batch
#: took, with one batch in flight. Building traces
#: holds the GIL on a worker thread; a backlog drained flat out starved the proxy beside
#: it (throughput down by two thirds, p99 x8 for ~40 s a minute under saturation). Once
#: a row has lived half its TTL the job is behind and drains at full speed instead
#: (docs/observer.md).
SHARED_DUTY = 0.25
#: Missed checkpoint links kept for the next run (beyond this the oldest are dropped).
MAX_UNLINKED = 10_000
#: Decision analyses in flight at once, when a backend decides (each is a model call).
DECISION_CONCURRENCY = 4
DECISION_MAX_TOKENS = 600
RESPOND = "respond"

DECISION_SYSTEM = (
    "You review one decision an AI agent made in a single model call. Reply with one JSON "
    "object and nothing else, with the keys: alternatives (a list of objects with "
    "option_id, description and score between 0 and 1: the options the agent had), "
    "selected (the option_id it chose), selection_reasoning (one or two sentences, in "
    "your own words, never quoting the agent), values_applied (a list taken only from "
    "the declared values given), confidence (0 to 1).")


class TraceBuildError(Exception):
    """An outbox row that cannot become a valid trace."""


@dataclass(frozen=True)
class OpenedRow:
    """A claimed outbox row with its payload opened: what a trace is built from. It
    exists only in memory, for the length of a batch."""

    row: OutboxRow
    payload: dict[str, Any]


def open_row(row: OutboxRow, key: bytes) -> OpenedRow | str:
    """The row opened under ``key``, or why it could not be (a payload altered or moved
    to another row, or not a JSON object once opened)."""
    try:
        payload = json.loads(open_with(key, row.id, row.payload))
    except SealError as e:
        return str(e)
    except ValueError:
        return "the opened payload is not JSON"
    if not isinstance(payload, dict):
        return "the opened payload is not an object"
    return OpenedRow(row, payload)


def open_batch(items: list[tuple[OutboxRow, bytes]]) -> list[OpenedRow | str]:
    """``open_row`` for a batch, in one hop to a worker thread."""
    return [open_row(row, key) for row, key in items]


def _tools(payload: dict[str, Any]) -> list[dict[str, Any]]:
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return []
    found = []
    for tool in tools:
        if isinstance(tool, dict) and isinstance(tool.get("name"), str) and tool["name"]:
            keys = tool.get("argument_keys")
            found.append({"name": tool["name"][:200],
                          "argument_keys": [str(k)[:100] for k in keys[:50]]
                          if isinstance(keys, list) else []})
    return found


def card_lists(card: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(declared values, bounded actions, forbidden actions) of a card, tolerating the
    legacy ``autonomy_envelope`` section."""
    autonomy = card.get("autonomy") or card.get("autonomy_envelope") or {}
    declared = (card.get("values") or {}).get("declared") or []
    return (list(declared), list(autonomy.get("bounded_actions") or []),
            list(autonomy.get("forbidden_actions") or []))


def selected_tool(tools: list[dict[str, Any]], forbidden: list[str]) -> str | None:
    names = [t["name"] for t in tools]
    for name in names:
        if forbidden and action_matches_list(name, forbidden):
            return name
    return names[0] if names else None


def heuristic_decision(payload: dict[str, Any], card: dict[str, Any]) -> dict[str, Any]:
    declared, _, forbidden = card_lists(card)
    tools = _tools(payload)
    alternatives = [{"option_id": f"tool:{t['name']}",
                     "description": f"Call {t['name']}"
                     + (f" with {', '.join(t['argument_keys'])}" if t["argument_keys"] else "")}
                    for t in tools]
    alternatives.append({"option_id": RESPOND, "description": "Answer without calling a tool"})
    chosen = selected_tool(tools, forbidden)
    if chosen is None:
        selected, reasoning = RESPOND, "The model answered without calling a tool."
    else:
        selected = f"tool:{chosen}"
        reasoning = f"The model chose to call {chosen}"
        others = [t["name"] for t in tools if t["name"] != chosen]
        reasoning += f" (also called: {', '.join(others)})." if others else "."
    values = [v for v in ("helpfulness",) if v in declared]
    if payload.get("thinking_visible") and "transparency" in declared:
        values.append("transparency")
    return {"alternatives_considered": alternatives, "selected": selected,
            "selection_reasoning": reasoning, "values_applied": values}


def decision_prompt(payload: dict[str, Any], card: dict[str, Any]) -> str:
    declared, bounded, forbidden = card_lists(card)
    return json.dumps({
        "declared_values": declared, "bounded_actions": bounded,
        "forbidden_actions": forbidden, "tools_called": _tools(payload),
        "reasoning_excerpt": payload.get("thinking_excerpt") or "",
        "response_excerpt": payload.get("response_excerpt") or "",
    }, ensure_ascii=False)


def parse_decision(text: str, payload: dict[str, Any],
                   card: dict[str, Any]) -> dict[str, Any]:
    """The backend's decision, checked and confined to what the card declares; raises
    ``TraceBuildError`` on anything unusable (the caller falls back to the heuristic)."""
    match = re.search(r"\{.*\}", text or "", re.DOTALL)
    if not match:
        raise TraceBuildError("no JSON object in the decision analysis")
    try:
        data = json.loads(match.group(0))
    except ValueError as e:
        raise TraceBuildError("decision analysis is not valid JSON") from e
    if not isinstance(data, dict):
        raise TraceBuildError("decision analysis is not an object")
    declared, _, _ = card_lists(card)
    alternatives = []
    for alt in data.get("alternatives") or []:
        if isinstance(alt, dict) and alt.get("option_id"):
            score = alt.get("score")
            alternatives.append({
                "option_id": str(alt["option_id"])[:100],
                "description": str(alt.get("description") or alt["option_id"])[:300],
                **({"score": float(score)} if isinstance(score, int | float)
                   and not isinstance(score, bool) and 0 <= score <= 1 else {})})
    selected = str(data.get("selected") or "")
    if not alternatives or selected not in {a["option_id"] for a in alternatives}:
        raise TraceBuildError("decision analysis has no valid selected alternative")
    values = [v for v in data.get("values_applied") or [] if v in declared]
    decision: dict[str, Any] = {
        "alternatives_considered": alternatives, "selected": selected,
        "selection_reasoning": str(data.get("selection_reasoning") or "")[:500]
        or "No reasoning given.", "values_applied": values}
    confidence = data.get("confidence")
    if isinstance(confidence, int | float) and not isinstance(confidence, bool) \
            and 0 <= confidence <= 1:
        decision["confidence"] = float(confidence)
    return decision


def build_trace(opened: OpenedRow, card: dict[str, Any], decision: dict[str, Any],
                source: str, trace_id: str, now_ms: int) -> dict[str, Any]:
    """The AP-trace of an opened row as a plain dict, validated by the AAP ``APTrace``
    model."""
    row, payload = opened.row, opened.payload
    _, _, forbidden = card_lists(card)
    tools = _tools(payload)
    chosen = selected_tool(tools, forbidden)
    name = chosen or "inference"
    category = "forbidden" if forbidden and action_matches_list(name, forbidden) \
        else "bounded"
    parameters: dict[str, Any] = {"tools": [t["name"] for t in tools]}
    if chosen is not None:
        parameters["argument_keys"] = next(t["argument_keys"] for t in tools
                                           if t["name"] == chosen)
    trace = {
        "trace_id": trace_id, "agent_id": row.agent_id,
        "card_id": str(card.get("card_id") or ""),
        "timestamp": datetime.fromtimestamp(row.created_at / 1000, UTC).isoformat(),
        "action": {"type": "execute", "name": name, "category": category,
                   "parameters": parameters},
        "decision": decision,
        "escalation": {"evaluated": False, "required": False,
                       "reason": "The gateway observes calls; it does not escalate them."},
        "context": {"session_id": row.session_id, "metadata": {
            "provider": row.provider, "model": row.model, "api": payload.get("api"),
            "checkpoint_id": row.checkpoint_id, "verdict": payload.get("verdict"),
            "decision_source": source, "built_at": now_ms}},
    }
    try:
        return APTrace.model_validate(trace).model_dump(mode="json", exclude_none=True)
    except ValidationError as e:
        # Where it failed, not the values (they may hold text from the analysis model).
        fields = sorted({".".join(str(p) for p in err["loc"]) for err in e.errors()})
        raise TraceBuildError(f"trace failed AP-Trace validation at {', '.join(fields)}"
                              ) from None


def verify(trace: dict[str, Any], card: dict[str, Any]) -> dict[str, Any]:
    result = verify_trace(trace, card)
    data = result.model_dump(mode="json")
    # The per-trace similarity details are large and say nothing the score does not.
    (data.get("verification_metadata") or {}).pop("similarity_details", None)
    return data


#: One built trace and its verification, or why the row could not become one.
Built = tuple[dict[str, Any], dict[str, Any]] | str


def build_one(row: OpenedRow, card: dict[str, Any], decision: dict[str, Any] | None,
              source: str, trace_id: str, now_ms: int) -> Built:
    """The trace of one row and its verification, or the reason it failed: a row that
    cannot be built must not take the other rows of its batch down with it."""
    try:
        if decision is None:
            decision = heuristic_decision(row.payload, card)
        trace = build_trace(row, card, decision, source, trace_id, now_ms)
        return trace, verify(trace, card)
    except TraceBuildError as e:
        return str(e)
    except Exception as e:
        # The type only: a message could quote the row's payload.
        return f"could not build the trace ({type(e).__name__})"


BuildItem = tuple[OpenedRow, dict[str, Any], dict[str, Any] | None, str, str, int]


def build_batch(items: list[BuildItem]) -> list[Built]:
    """``build_one`` for a whole batch: one hop to a worker thread per batch, not per
    row (AP-Trace validation and verification are the CPU-heavy part)."""
    return [build_one(*item) for item in items]


def _at_risk(rows: list[OutboxRow], now_ms: int) -> bool:
    """True when a row of the batch has lived half its TTL: the job is behind, and
    pacing would let rows expire unbuilt, so it drains at full speed until caught up."""
    return any(2 * (now_ms - r.created_at) > r.expires_at - r.created_at for r in rows)


def record_depth(metrics: GatewayMetrics, depth: OutboxDepth, now_ms: int) -> None:
    """``gateway_outbox_depth`` and the age of the oldest ready row (0 when none is
    ready), so an alert can fire long before rows reach their TTL."""
    metrics.outbox_depth.labels("ready").set(depth.ready)
    metrics.outbox_depth.labels("parked").set(depth.parked)
    age = 0.0 if depth.oldest_ready_at is None else max(0, now_ms - depth.oldest_ready_at) / 1000
    metrics.outbox_oldest_ready_age.set(age)


@inlineCallbacks
def sweep_outbox(clock: IReactorTime, outbox: OutboxStore,
                 metrics: GatewayMetrics | None = None) -> Any:
    """The outbox TTL sweep every role runs: expired rows deleted, then the depth gauge
    refreshed (the sweep runs where no traces job does). Fires with the rows deleted."""
    now_ms = int(clock.seconds() * 1000)
    purged = yield outbox.purge_expired(now_ms)
    if metrics is not None:
        depth = yield outbox.depth()
        record_depth(metrics, depth, int(clock.seconds() * 1000))
    return purged


class TraceBuilder:
    """One run of the ``traces`` job: claim rows in batches, build, verify, store.

    Up to ``concurrency`` batches are in flight at once, and a run keeps claiming while
    rows are ready, so a backlog drains in one run instead of one batch per interval.
    A run ends when the outbox has nothing ready, when ``max_run_seconds`` have passed
    (the caller's job then scrubs the log and starts the next run on its schedule), or
    after ``stop()``; the batches in flight are always finished. With ``duty`` below 1
    each batch is followed by a pause, so batches take at most about that share of the
    time (``SHARED_DUTY``).
    """

    def __init__(self, clock: IReactorTime, outbox: OutboxStore, agents: AgentStore,
                 owner: str, keyring: OutboxKeyring, backend: AnalysisBackend | None = None,
                 metrics: GatewayMetrics | None = None,
                 to_thread: Callable[..., Deferred[Any]] = deferToThread,
                 lease_seconds: float = 120.0, batch_size: int = BATCH,
                 concurrency: int = CONCURRENCY,
                 max_run_seconds: float | None = None, duty: float = 1.0) -> None:
        if not 0 < duty <= 1:
            raise ValueError("duty must be in (0, 1]")
        self._clock = clock
        self._outbox = outbox
        self._agents = agents
        self._owner = owner
        self._keyring = keyring
        self._backend = backend
        self._metrics = metrics
        self._to_thread = to_thread
        self._lease_ms = int(lease_seconds * 1000)
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._max_run_seconds = max_run_seconds
        self._rest = 1 / duty - 1
        #: Links a batch missed because the checkpoint was not committed yet; made at the
        #: start of the next run (a checkpoint stored later links itself).
        self._unlinked: dict[tuple[str, str], None] = {}
        self._resting: set[Deferred[None]] = set()
        self._decisions = DeferredSemaphore(DECISION_CONCURRENCY)
        self._stopping = False

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def stop(self) -> None:
        """Claim no more batches: the run in progress ends once its batches are done
        (a pause between batches ends now)."""
        self._stopping = True
        for resting in list(self._resting):
            resting.cancel()

    @inlineCallbacks
    def run(self) -> Any:
        """Fires with {"built": n, "failed": n, "parked": n, "expired": n}."""
        counts = {"built": 0, "failed": 0, "parked": 0, "expired": 0}
        # The TTL holds whatever happens to the rows below.
        counts["expired"] = yield self._outbox.purge_expired(self._now_ms())
        if self._unlinked:
            links, self._unlinked = list(self._unlinked), {}
            try:
                yield self._outbox.link(links)
            except Exception as e:
                log.warn("Could not link {count} checkpoints to their traces ({reason})",
                         count=len(links), reason=type(e).__name__)
        deadline = None if self._max_run_seconds is None \
            else self._clock.seconds() + self._max_run_seconds
        cards: dict[str, dict[str, Any] | None] = {}
        drained = [False]

        def over() -> bool:
            return self._stopping or drained[0] or (
                deadline is not None and self._clock.seconds() >= deadline)

        @inlineCallbacks
        def worker() -> Any:
            while not over():
                started = self._clock.seconds()
                rows = yield self._outbox.claim(self._owner, self._now_ms(), self._lease_ms,
                                                self._batch_size)
                if len(rows) < self._batch_size:
                    drained[0] = True
                if not rows:
                    break
                batch = yield self._batch(rows, cards)
                for key, value in batch.items():
                    counts[key] += value
                if self._rest and not over() and not _at_risk(rows, self._now_ms()):
                    # One batch in flight, resting: at most the duty's share of the
                    # time; never past the run's deadline.
                    now = self._clock.seconds()
                    pause = (now - started) * self._rest
                    if deadline is not None:
                        pause = min(pause, max(0.0, deadline - now))
                    resting = deferLater(self._clock, pause)
                    self._resting.add(resting)
                    try:
                        yield resting
                    except CancelledError:
                        break
                    finally:
                        self._resting.discard(resting)

        # Paced, one batch at a time: two in flight, resting each on its own, could
        # together take twice the share.
        concurrency = 1 if self._rest else max(1, self._concurrency)
        yield gatherResults([worker() for _ in range(concurrency)], consumeErrors=True)
        if counts["built"] or counts["failed"]:
            log.info("Traces: {built} built, {failed} failed ({parked} parked)", **counts)
        if self._metrics is not None:
            depth = yield self._outbox.depth()
            record_depth(self._metrics, depth, self._now_ms())
        return counts

    @inlineCallbacks
    def _open(self, rows: list[OutboxRow]) -> Any:
        """Fires with (opened rows, failures, rows deleted because their key is gone).

        A row whose key has expired is past its TTL in all but name: it is deleted and
        counted in ``gateway_outbox_shredded_total``, with no line per row. A row sealed
        under another process's own key is left to that process (and to the TTL sweep).
        When the keys cannot be read, the batch is left for a later run: its rows are
        not taken for expired."""
        failures: list[OutboxFailure] = []
        named: list[tuple[OutboxRow, str]] = []
        for row in rows:
            try:
                key_id = sealed_key_id(row.payload)
            except SealError as e:
                failures.append(OutboxFailure(row, str(e)))
                continue
            if not self._keyring.is_foreign(key_id):
                named.append((row, key_id))
        try:
            keys = yield self._keyring.keys(key_id for _, key_id in named)
        except Exception as e:
            log.warn("Outbox keys could not be read ({reason}); {count} rows left for a "
                     "later run", reason=type(e).__name__, count=len(named))
            return [], failures, 0
        keyless = [row.id for row, key_id in named if keys.get(key_id) is None]
        readable = [(row, key) for row, key_id in named
                    if (key := keys.get(key_id)) is not None]
        shredded = 0
        if keyless:
            shredded = yield self._outbox.discard(keyless)
            if self._metrics is not None:
                self._metrics.outbox_shredded.inc(len(keyless))
        opened: list[OpenedRow] = []
        results = yield self._to_thread(open_batch, readable) if readable else []
        for (row, _), result in zip(readable, results, strict=True):
            if isinstance(result, str):
                failures.append(OutboxFailure(row, result))
            else:
                opened.append(result)
        return opened, failures, shredded

    @inlineCallbacks
    def _cards(self, rows: list[OpenedRow], cards: dict[str, dict[str, Any] | None]) -> Any:
        """The cards of the batch's agents, read once per run; fires with the reason the
        card of an agent could not be read, by agent (those rows fail, not the batch)."""
        errors: dict[str, str] = {}
        for agent_id in dict.fromkeys(r.row.agent_id for r in rows):
            if agent_id in cards:
                continue
            try:
                card = yield self._agents.card(agent_id)
            except Exception as e:
                errors[agent_id] = type(e).__name__
                continue
            cards[agent_id] = card if isinstance(card, dict) else None
        return errors

    @inlineCallbacks
    def _batch(self, claimed: list[OutboxRow],
               cards: dict[str, dict[str, Any] | None]) -> Any:
        rows, failures, shredded = yield self._open(claimed)
        errors = yield self._cards(rows, cards)
        buildable: list[tuple[OpenedRow, dict[str, Any]]] = []
        for row in rows:
            card = cards.get(row.row.agent_id)
            if row.row.agent_id in errors:
                failures.append(OutboxFailure(row.row, errors[row.row.agent_id]))
            elif card is None:
                failures.append(OutboxFailure(row.row, "the agent has no alignment card"))
            else:
                buildable.append((row, card))
        decided: list[tuple[dict[str, Any] | None, str]]
        if self._backend is None:
            decided = [(None, "heuristic")] * len(buildable)
        else:
            decided = yield gatherResults(
                [self._decisions.run(self._decide, row, card) for row, card in buildable])
        now_ms = self._now_ms()
        items: list[BuildItem] = [
            (row, card, decision, source, f"tr-{uuid.uuid4().hex}", now_ms)
            for (row, card), (decision, source) in zip(buildable, decided, strict=True)]
        built = yield self._to_thread(build_batch, items) if items else []
        traces: list[tuple[OutboxRow, TraceRecord]] = []
        for item, result in zip(items, built, strict=True):
            row, trace_id = item[0].row, item[4]
            if isinstance(result, str):
                failures.append(OutboxFailure(row, result))
                continue
            trace, verification = result
            traces.append((row, TraceRecord(trace_id, row.agent_id, row.session_id,
                                            row.checkpoint_id, row.id, trace, verification,
                                            bool(verification.get("verified")), now_ms)))
        for failure in failures:
            log.warn("Could not build the trace of outbox row {row_id}: {reason}",
                     row_id=failure.row.id, reason=failure.error)
        try:
            result = yield self._outbox.finish(self._owner, traces, failures)
        except Exception as e:
            log.warn("A batch of {count} traces could not be stored at once ({reason}); "
                     "storing them one by one", count=len(rows), reason=type(e).__name__)
            counts = yield self._one_by_one(traces, failures)
            return {**counts, "expired": shredded}
        for link in result.unlinked:
            self._unlinked[link] = None
        while len(self._unlinked) > MAX_UNLINKED:
            del self._unlinked[next(iter(self._unlinked))]
        # As before batches: a failed row counts once, as "parked" or as "failed".
        return {"built": len(traces), "failed": len(failures) - len(result.parked),
                "parked": len(result.parked), "expired": shredded}

    @inlineCallbacks
    def _one_by_one(self, traces: list[tuple[OutboxRow, TraceRecord]],
                    failures: list[OutboxFailure]) -> Any:
        """After a batch the database refused: each row in its own transaction, so one
        row it refuses (say, its agent was deleted meanwhile) fails alone."""
        counts = {"built": 0, "failed": 0, "parked": 0}
        for row, record in traces:
            try:
                yield self._outbox.complete(row, record)
                counts["built"] += 1
            except Exception as e:
                log.warn("Could not store the trace of outbox row {row_id}: {reason}",
                         row_id=row.id, reason=type(e).__name__)
                failures = [*failures, OutboxFailure(row, f"store failed ({type(e).__name__})")]
        for failure in failures:
            try:
                parked = yield self._outbox.fail(failure.row, self._owner, failure.error)
            except Exception:
                parked = False  # the lease runs out and the row is tried again
            counts["parked" if parked else "failed"] += 1
        return counts

    @inlineCallbacks
    def _decide(self, row: OpenedRow, card: dict[str, Any]) -> Any:
        """(decision, source): the backend's decision, or None for the heuristic."""
        if self._backend is not None:
            try:
                text = yield self._backend.complete(DECISION_SYSTEM,
                                                    decision_prompt(row.payload, card),
                                                    DECISION_MAX_TOKENS)
                return parse_decision(text, row.payload, card), "analysis"
            except Exception as e:
                log.debug("Decision analysis failed ({reason}); using the heuristic",
                          reason=type(e).__name__)
        # None: the heuristic runs with the build, on the worker thread, row by row.
        return None, "heuristic"

"""The ``drift`` job: AAP behavioural drift per agent (SPEC §8.2).

Once an agent has at least ``MIN_TRACES`` traces, its latest ones are compared with a
baseline by the AAP SDK's drift algorithm: features of each trace, cosine similarity to
the centroid of the baseline, an alert after ``SUSTAINED`` consecutive traces below
``THRESHOLD``. The SDK's ``detect_drift`` takes its baseline from the first traces of
the list it is given, so the baseline would move as traces accumulate and one streak
would be seen again under another first trace; here the baseline is fixed (the agent's
first ``MIN_TRACES`` traces), so a streak is always keyed by the same first trace and
later runs that see it store nothing new. Each stored alert queues ``drift.detected``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from aap import DriftAlert
from aap.verification.constants import (
    DEFAULT_SIMILARITY_THRESHOLD as THRESHOLD,
)
from aap.verification.constants import (
    DEFAULT_SUSTAINED_TURNS_THRESHOLD as SUSTAINED,
)
from aap.verification.divergence import DivergenceDetector
from aap.verification.features import FeatureExtractor, compute_centroid, cosine_similarity
from aap.verification.models import DriftAnalysis, DriftDirection
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from mnemomd.agents.store import AgentStore
from mnemomd.integrity.checkpoints import CheckpointStore
from mnemomd.storage.traces import TraceStore

log = Logger()

MIN_TRACES = 10
#: How many of an agent's latest traces one run looks at.
WINDOW = 500


def drift_alerts(card: dict[str, Any], baseline: list[dict[str, Any]],
                 traces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """AAP drift alerts for ``traces`` (oldest first) against ``baseline``, as dicts."""
    extractor = FeatureExtractor()
    centroid = compute_centroid([extractor.extract_trace_features(t) for t in baseline])
    sdk = DivergenceDetector(THRESHOLD, SUSTAINED)
    escalations = [1.0 if (t.get("escalation") or {}).get("required") else 0.0
                   for t in baseline]
    values: dict[str, int] = {}
    alerts = []
    streak: list[tuple[dict[str, Any], float]] = []
    for trace in traces:
        similarity = cosine_similarity(extractor.extract_trace_features(trace), centroid)
        escalations.append(1.0 if (trace.get("escalation") or {}).get("required") else 0.0)
        for value in (trace.get("decision") or {}).get("values_applied") or []:
            values[value] = values.get(value, 0) + 1
        streak = streak + [(trace, similarity)] if similarity < THRESHOLD else []
        if len(streak) != SUSTAINED:
            continue
        try:  # the SDK's own reading of the streak, where it can give one
            direction = sdk._infer_drift_direction(streak, card, escalations, values)
            indicators = sdk._build_drift_indicators(streak, card, escalations)
        except Exception:
            direction, indicators = DriftDirection.UNKNOWN, []
        alert = DriftAlert(
            agent_id=str(trace.get("agent_id") or ""), card_id=str(card.get("card_id") or ""),
            analysis=DriftAnalysis(similarity_score=round(max(similarity, 0.0), 4),
                                   sustained_traces=len(streak), threshold=THRESHOLD,
                                   drift_direction=direction,
                                   specific_indicators=indicators),
            trace_ids=[str(t.get("trace_id") or "") for t, _ in streak])
        alerts.append(alert.model_dump(mode="json"))
    return alerts


def severity(alert: dict[str, Any]) -> str:
    similarity = (alert.get("analysis") or {}).get("similarity_score", 1.0)
    return "high" if similarity < 0.1 else "medium"


class DriftDetector:
    def __init__(self, clock: IReactorTime, traces: TraceStore, agents: AgentStore,
                 alerts: CheckpointStore,
                 to_thread: Callable[..., Deferred[Any]] = deferToThread) -> None:
        self._clock = clock
        self._traces = traces
        self._agents = agents
        self._alerts = alerts
        self._to_thread = to_thread
        #: Agents with no trace since the previous run have nothing new to say.
        self._since_ms = 0

    @inlineCallbacks
    def run(self) -> Any:
        """Fires with the number of alerts stored."""
        started_ms = int(self._clock.seconds() * 1000)
        agent_ids = yield self._traces.agents_with_traces(MIN_TRACES, self._since_ms)
        stored = 0
        for agent_id in agent_ids:
            stored += yield self._agent(agent_id)
        self._since_ms = started_ms
        return stored

    @inlineCallbacks
    def _agent(self, agent_id: str) -> Any:
        card = yield self._agents.card(agent_id)
        if not isinstance(card, dict):
            return 0
        baseline = yield self._traces.earliest(agent_id, MIN_TRACES)
        records = yield self._traces.latest(agent_id, WINDOW)
        first = {r.id for r in baseline}
        alerts = yield self._to_thread(drift_alerts, card, [r.trace for r in baseline],
                                       [r.trace for r in records if r.id not in first])
        stored = 0
        for alert in alerts:
            trace_ids = alert.get("trace_ids") or []
            if not trace_ids:
                continue
            added = yield self._alerts.insert_drift_alert(
                f"da-{uuid.uuid4().hex}", agent_id, None, severity(alert), alert,
                f"aap:{trace_ids[0]}", int(self._clock.seconds() * 1000), source="aap")
            if added:
                stored += 1
                log.warn("Behavioural drift detected for {agent_id}", agent_id=agent_id)
        return stored

"""The ``drift`` job: AAP behavioural drift per agent (SPEC §8.2).

Once an agent has at least ``MIN_TRACES`` traces, its latest ones are compared with its
card by the AAP SDK's ``detect_drift``. A streak of low-similarity traces is one alert:
the streak is keyed by its first trace, so later runs that see the same streak store
nothing new, and each stored alert queues a ``drift.detected`` webhook event.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from aap import detect_drift
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from mnemomd.storage.agents import AgentStore
from mnemomd.storage.checkpoints import CheckpointStore
from mnemomd.storage.traces import TraceStore

log = Logger()

MIN_TRACES = 10
#: How many of an agent's latest traces one run looks at.
WINDOW = 100


def drift_alerts(card: dict[str, Any], traces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """AAP drift alerts for ``traces`` (oldest first), as plain dicts."""
    return [alert.model_dump(mode="json") for alert in detect_drift(card, traces)]


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
        records = yield self._traces.latest(agent_id, WINDOW)
        alerts = yield self._to_thread(drift_alerts, card, [r.trace for r in records])
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

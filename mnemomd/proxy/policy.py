"""The proxy's tool-policy step: evaluate the tools a request offers before forwarding.

Runs for every call whose agent is known, whatever its integrity mode and whatever the
AIP verdict will be. The agent's policy (``agents.policies.PolicyBook``) judges the tool
names the provider reads from the request (``Provider.offered_tools``); a request whose
body could not be read while a policy is active is an engine error, and the policy's
``fail_open`` decides. Violations are recorded (``policy_violations``, tool names and
rules only) with a ``policy.violation`` webhook event; every tool an agent is first seen
offering is recorded once (``tool_first_seen``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd.agents.identity import Agent
from mnemomd.agents.memory import Lru
from mnemomd.agents.policies import ActivePolicy, PolicyBook
from mnemomd.http.server import error_payload
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.policy import Evaluation, evaluate
from mnemomd.policy.engine import error_evaluation
from mnemomd.providers.base import OfferedTools, Provider, RequestInfo
from mnemomd.storage.database import Cursor
from mnemomd.storage.writes import Write, WriteQueue, insert_many
from mnemomd.webhooks.store import enqueue_events

log = Logger()

POLICY_VIOLATION_WRITE = "policy_violation"
TOOL_SEEN_WRITE = "tool_first_seen"
#: (agent, tool) pairs this process knows are recorded.
MAX_SEEN_TOOLS = 200_000
VIOLATION_FIELDS = ("id", "agent_id", "verdict", "mode", "blocked", "violations", "created_at")
TOOL_SEEN_FIELDS = ("agent_id", "tool", "seen_as", "first_seen_at")


def policy_refusal(evaluation: Evaluation) -> dict[str, Any]:
    """The 403 body of a request an ``enforce`` policy refuses."""
    blocking = [v for v in evaluation.violations
                if v["severity"] in ("critical", "high")] or evaluation.violations
    tools = ", ".join(dict.fromkeys(str(v["tool"]) for v in blocking))
    return error_payload(f"Request refused by tool policy: {tools}", "policy_violation",
                         violations=evaluation.violations)


def write_violations(cursor: Cursor, writes: list[Write]) -> list[str]:
    """Store queued violation records and queue their ``policy.violation`` events."""
    rows = [tuple(w.row[f] for f in VIOLATION_FIELDS) for w in writes]
    rows = [r[:4] + (bool(r[4]),) + r[5:] for r in rows]
    inserted = set(insert_many(cursor, "policy_violations", VIOLATION_FIELDS, rows,
                               returning="id"))
    events = [("policy.violation", w.row["agent_id"], violation_event(w.row),
               w.row["created_at"]) for w in writes if w.row["id"] in inserted]
    return enqueue_events(cursor, events)


def violation_event(row: dict[str, Any]) -> dict[str, Any]:
    return {"violation_id": row["id"], "verdict": row["verdict"], "mode": row["mode"],
            "blocked": bool(row["blocked"]), "violations": json.loads(row["violations"])}


def write_tools_seen(cursor: Cursor, writes: list[Write]) -> None:
    insert_many(cursor, "tool_first_seen", TOOL_SEEN_FIELDS,
                [tuple(w.row[f] for f in TOOL_SEEN_FIELDS) for w in writes])


class PolicyStep:
    """Tool policies on the request path (``ProxyHandler`` calls ``check``)."""

    def __init__(self, clock: IReactorTime, book: PolicyBook, metrics: GatewayMetrics,
                 writes: WriteQueue | None = None,
                 on_events_queued: Callable[[], None] | None = None) -> None:
        self._clock = clock
        self._book = book
        self._metrics = metrics
        self._writes = writes
        self._on_events_queued = on_events_queued
        self._seen: Lru[tuple[str, str], bool] = Lru(MAX_SEEN_TOOLS)
        self._counters = {v: metrics.policy_evaluations.labels(v)
                          for v in ("pass", "warn", "fail")}
        if writes is not None:
            writes.register(POLICY_VIOLATION_WRITE, write_violations, self._queued)
            writes.register(TOOL_SEEN_WRITE, write_tools_seen)

    def _queued(self, deliveries: list[str]) -> None:
        if deliveries and self._on_events_queued is not None:
            self._on_events_queued()

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    @inlineCallbacks
    def check(self, agent: Agent, provider: Provider, info: RequestInfo | None,
              body: bytes | None) -> Any:
        """The evaluation of this call (None: no policy is active for the agent)."""
        offered = OfferedTools()
        unreadable = info is None or (info.api is not None and info.json_body is None
                                      and bool(body))
        if info is not None and info.json_body is not None:
            try:
                offered = provider.offered_tools(info)
            except Exception:
                log.failure("Offered tools could not be read")
                unreadable = True
        self._record_seen(agent.agent_id, offered.names)
        try:
            active = yield self._book.active(agent.agent_id)
        except Exception:
            self._book.failed("Tool policy could not be read", Failure())
            active = self._book.resolve(None, None)  # the file's policy still holds
        if active is None:
            return None
        result = self._evaluate(active, offered, unreadable)
        self._counters[result.verdict].inc()
        if result.violations:
            self._record(agent.agent_id, result)
        return result

    @staticmethod
    def _evaluate(active: ActivePolicy, offered: OfferedTools, unreadable: bool) -> Evaluation:
        if unreadable:
            return error_evaluation(active.policy, active.mode,
                                    "the request body could not be read for its tools")
        try:
            return evaluate(active.compiled, offered.names, active.mode, offered.overflow)
        except Exception:
            log.failure("Tool policy evaluation failed")
            return error_evaluation(active.policy, active.mode, "policy evaluation failed")

    def _record(self, agent_id: str, result: Evaluation) -> None:
        if self._writes is None:
            return
        row_id = f"pv-{uuid.uuid4().hex}"
        self._writes.submit(Write(POLICY_VIOLATION_WRITE, row_id, {
            "id": row_id, "agent_id": agent_id, "verdict": result.verdict,
            "mode": result.mode, "blocked": result.blocked,
            "violations": json.dumps(result.violations, separators=(",", ":")),
            "created_at": self._now_ms()}))

    def _record_seen(self, agent_id: str, names: tuple[str, ...], seen_as: str = "offered",
                     ) -> None:
        if self._writes is None:
            return
        for name in names:
            key = (agent_id, name)
            if key in self._seen:
                continue
            self._seen.put(key, True)
            self._writes.submit(Write(TOOL_SEEN_WRITE, f"{agent_id}\x00{name}", {
                "agent_id": agent_id, "tool": name, "seen_as": seen_as,
                "first_seen_at": self._now_ms()}))

    def called(self, agent_id: str, names: list[str]) -> None:
        """Tools the model was seen calling (from a response)."""
        self._record_seen(agent_id, tuple(names), "called")


def header_value(evaluation: Evaluation) -> bytes:
    return evaluation.shown.encode()



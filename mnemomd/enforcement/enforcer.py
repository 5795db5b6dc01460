"""How hard the gateway pushes back (SPEC §6): nudges, containment, auto-containment.

The decisions are small pure functions; ``Enforcement`` applies them with storage and the
KV store. A pending nudge is flagged in the KV store so the hot path asks the database
only for agents that actually have something to deliver.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mnemomd.agents.identity import Agent, effective_containment
from mnemomd.enforcement.store import EnforcementStore, Nudge
from mnemomd.kv import KVCache

log = Logger()

NOTICE_HEADER = "[INTEGRITY NOTICE]"
NUDGE_FLAG_TTL = 4 * 3600.0
ENFORCING_MODES = ("nudge", "enforce")


def should_nudge(strategy: str, rate: float, threshold: int, session_violations: int,
                 rng: random.Random) -> bool:
    """Whether this violation creates a nudge under the agent's ``nudge_strategy``.

    ``session_violations`` counts violations in the session including this one.
    """
    if strategy == "always":
        return True
    if strategy == "sampling":
        return rng.random() < rate
    if strategy == "threshold":
        return session_violations >= threshold
    return False


def nudge_notice_for(concerns: list[dict[str, Any]], checkpoint_id: str) -> str:
    """The text of one nudge: derived analysis only, never the model's own words."""
    described = "; ".join(
        f"{c.get('category', 'concern')} ({c.get('severity', 'unknown')}): "
        f"{c.get('description', '')}".strip().rstrip(".") for c in concerns[:3]
    ) or "a boundary violation"
    return (f"An integrity check of your previous reasoning (checkpoint {checkpoint_id}) "
            f"found: {described}. Stay within your declared values and permitted actions.")


def combined_notice(nudges: list[Nudge]) -> str:
    lines = [NOTICE_HEADER] + [f"- {n.notice}" for n in nudges]
    return "\n".join(lines)


def containment_refusal(agent: Agent) -> dict[str, Any] | None:
    """The 403 body for a contained agent (SPEC §3.10), or None: held by its own state or
    by its key's, whichever is worse (``scope`` says which)."""
    status, scope = effective_containment(agent)
    if scope is None:
        return None
    return {"error": "Agent contained", "type": "containment_error",
            "reason": f"agent_{status}", "scope": scope}


class Enforcement:
    def __init__(self, clock: IReactorTime, store: EnforcementStore, flags: KVCache,
                 invalidate_agent: Callable[[str], Deferred[None]],
                 rng: random.Random | None = None) -> None:
        """``invalidate_agent`` drops an agent (by hash) from the directory's cache, so a
        containment takes effect on the next call."""
        self._clock = clock
        self._store = store
        self._flags = flags
        self._invalidate_agent = invalidate_agent
        self._rng = rng or random.Random()

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    @staticmethod
    def _flag(agent_id: str) -> str:
        return f"nudges:{agent_id}"

    @inlineCallbacks
    def take_nudges(self, agent: Agent) -> Any:
        """Pending nudges to inject into this call (at most 5 from the last 4 h)."""
        if agent.enforcement_mode not in ENFORCING_MODES:
            return []
        flagged = yield self._flags.get_json(self._flag(agent.agent_id))
        if flagged is None:
            return []
        nudges = yield self._store.pending_nudges(agent.agent_id, self._now_ms())
        if not nudges:
            self._flags.invalidate(self._flag(agent.agent_id))
        return nudges

    def delivered(self, agent: Agent, nudges: list[Nudge]) -> Deferred[int]:
        """Mark the nudges a call carried as delivered; fires with how many were."""
        if not nudges:
            return succeed(0)
        # The flag stays: the next call finds nothing pending and clears it, so a nudge
        # created meanwhile is never left without one.
        return self._store.mark_delivered([n.id for n in nudges], self._now_ms())

    @inlineCallbacks
    def on_outcome(self, agent: Agent, session_id: str, verdict: str, checkpoint_id: str,
                   concerns: list[dict[str, Any]], synthetic: bool = False) -> Any:
        """After a stored checkpoint: nudge and auto-contain as the agent's policy says.

        A synthetic verdict (analysis failed, ``fail_closed``) blocks where it was given
        but is no finding: no nudge tells the agent its reasoning was found in violation
        when nothing was analysed, and it does not count towards auto-containment.
        """
        if verdict != "boundary_violation" or synthetic:
            return None
        if agent.enforcement_mode in ENFORCING_MODES:
            violations = yield self._store.session_violations(agent.agent_id, session_id)
            if should_nudge(agent.nudge_strategy, agent.nudge_rate, agent.nudge_threshold,
                            violations, self._rng):
                yield self._store.create_nudge(agent.agent_id, session_id, checkpoint_id,
                                               nudge_notice_for(concerns, checkpoint_id),
                                               self._now_ms())
                yield self._flags.set_json(self._flag(agent.agent_id), True)
        threshold = agent.auto_containment_threshold
        if threshold is not None and threshold >= 2:
            change = yield self._store.auto_contain(agent.agent_id, threshold, self._now_ms())
            if change is not None:
                log.warn("Agent {agent_id} paused after {count} consecutive boundary "
                         "violations", agent_id=agent.agent_id, count=threshold)
                yield self._invalidate_agent(agent.agent_hash)
        return None

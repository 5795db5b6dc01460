"""How the proxy finds the agent behind a call: KV cache, then the database.

The lookup sits on the hot path of every call, so it is cached in the KV store (shared by
replicas, invalidated on change) and concurrent first calls for one agent share a single
database trip. ``last_seen`` is kept in memory and written in one batch per interval
instead of one write per call.

Every agent resolved is also remembered in process memory (``LastKnownState``): when the
KV store and the database both fail, the lookup answers with the last known agent, and
``last_known`` gives the proxy what it still knows when the lookup gave up (timeout).
Invalidations re-read the remembered entries, so a change made before an outage holds
during it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd.agents.identity import Agent, agent_id_candidates
from mnemomd.agents.memory import LastKnownState
from mnemomd.agents.store import AgentStore
from mnemomd.kv import KVCache
from mnemomd.ops.dependency import DependencyState, log_failure

log = Logger()

AGENT_CACHE_TTL = 300.0
LAST_SEEN_FLUSH_SECONDS = 30.0
#: How often the database is asked which agents changed, to drop stale cache entries
#: (changes made by another process that could not reach this one's cache).
CHANGE_POLL_SECONDS = 2.0


def agent_cache_key(hash_: str) -> str:
    return f"agent:{hash_}"


def agent_derived_keys(hash_: str, agent_id: str) -> list[str]:
    """Every KV cache entry built from an agent's rows: the agent itself, and the card and
    conscience values the integrity pipeline caches. A change to the agent drops them all."""
    return [agent_cache_key(hash_), f"card:{agent_id}", f"conscience:{agent_id}"]


class PersistentAgentDirectory:
    """``AgentDirectory`` backed by storage, for the proxy."""

    def __init__(self, clock: IReactorTime, store: AgentStore, cache: KVCache,
                 default_enforcement: str = "observe",
                 default_without_reasoning: str = "allow",
                 memory: LastKnownState | None = None,
                 outages: Sequence[DependencyState] = ()) -> None:
        """``memory`` is the last known state shared with the integrity pipeline;
        ``outages`` the dependencies whose known outage errors are logged by their
        trackers rather than here."""
        self._clock = clock
        self.memory = memory if memory is not None else LastKnownState()
        self._outages = outages
        self._store = store
        self._cache = cache
        self._default_enforcement = default_enforcement
        self._default_without_reasoning = default_without_reasoning
        self._in_flight: dict[str, list[Deferred[Agent]]] = {}
        self._last_seen: dict[str, int] = {}
        self._flusher = LoopingCall(self.flush_last_seen)
        self._flusher.clock = clock
        self._watcher = LoopingCall(self.drop_changed)
        self._watcher.clock = clock
        self._changes_seen_ms = self._now_ms()

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def resolve(self, hash_: str, name: str | None,
                key_hash: str | None = None) -> Deferred[Agent]:
        """The agent of ``hash_``; ``key_hash`` is the hash of the call's key alone."""
        waiters = self._in_flight.get(hash_)
        mine: Deferred[Agent] = Deferred()
        if waiters is not None:
            waiters.append(mine)
            return mine
        self._in_flight[hash_] = [mine]
        d = self._cache.get_json(agent_cache_key(hash_))
        d.addCallback(self._cached_or_stored, hash_, name, key_hash)
        d.addBoth(self._deliver, hash_)
        return mine

    def _cached_or_stored(self, cached: object, hash_: str, name: str | None,
                          key_hash: str | None) -> Agent | Deferred[Agent]:
        if isinstance(cached, dict):
            try:
                agent = Agent(**cached)
            except TypeError:
                pass  # written by another version: read it again from the database
            else:
                if agent.key_hash is not None or key_hash is None:
                    return agent
                # A named agent from before keys were recorded: learn its key now.
        d = self._store.get_or_create(hash_, name, self._default_enforcement, self._now_ms(),
                                      self._default_without_reasoning, key_hash)
        d.addCallback(self._with_key, hash_, key_hash)

        def remember(agent: Agent) -> Agent:
            self._cache.set_json(agent_cache_key(hash_), dataclasses.asdict(agent))
            return agent

        return d.addCallback(remember)

    def _with_key(self, agent: Agent, hash_: str,
                  key_hash: str | None) -> Agent | Deferred[Agent]:
        """``agent``, after recording its key if it has none yet (see ``learn_key``)."""
        if agent.key_hash is not None or key_hash is None:
            return agent

        def learnt(result: tuple[Agent | None, list[tuple[str, str]]]) -> Agent:
            fresh, changed = result
            # A key action taken while the key was unknown now holds every agent of the
            # key: drop what this process and the shared cache know of them.
            for other_hash, _ in changed:
                if other_hash != hash_:
                    self.invalidate(other_hash)
            return fresh if fresh is not None else agent

        return self._store.learn_key(hash_, key_hash, self._now_ms()).addCallback(learnt)

    def _deliver(self, result: Agent | Failure, hash_: str) -> None:
        if isinstance(result, Failure):
            log_failure(log, "Agent lookup failed", result, self._outages)
            remembered = self.memory.agent(hash_)
            if remembered is not None:
                result = remembered  # storage is down: decide on what was last known
        else:
            self.memory.remember(result)
        for waiter in self._in_flight.pop(hash_, []):
            if waiter.called:  # the caller gave up waiting (timeout)
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                self._last_seen[result.agent_id] = self._now_ms()
                waiter.callback(result)

    def last_known(self, hash_: str, name: str | None,
                   key_hash: str | None) -> Agent | None:
        """What is still known of an agent whose lookup failed: its last known state, or
        for an agent never seen, one that carries its key's last known containment (a
        killed key holds names first used during an outage); None when nothing is."""
        remembered = self.memory.agent(hash_)
        if remembered is not None:
            return remembered
        key_status = self.memory.key_containment(key_hash)
        if key_status == "active":
            return None
        return Agent(agent_hash=hash_, agent_id=agent_id_candidates(hash_)[0], name=name,
                     key_hash=key_hash, key_containment_status=key_status)

    def invalidate(self, hash_: str) -> Deferred[None]:
        d = self._cache.invalidate(agent_cache_key(hash_))
        return gatherResults([d, self._refresh(hash_)]).addCallback(lambda _: None)

    def invalidate_all(self, hash_: str, agent_id: str) -> Deferred[list[None]]:
        """Drop the agent and everything cached from it (card, conscience values), and
        re-read what memory holds of them."""
        return gatherResults([self._cache.invalidate(key)
                              for key in agent_derived_keys(hash_, agent_id)]
                             + [self._refresh(hash_, agent_id)])

    def _refresh(self, hash_: str, agent_id: str | None = None) -> Deferred[None]:
        """Re-read the remembered agent (and card and conscience values) of ``hash_``
        after a change. An agent that cannot be re-read is forgotten: a change it missed
        (a pause) must not be overruled by its old state during an outage. A card that
        cannot be re-read is kept: the last known card is better than none."""
        steps: list[Deferred[None]] = []
        if self.memory.holds(hash_):
            def remembered(agent: Agent | None) -> None:
                if agent is None:
                    self.memory.forget(hash_)
                else:
                    self.memory.remember(agent)

            def unread(failure: Failure) -> None:
                self.memory.forget(hash_)
                log_failure(log, "Could not re-read a changed agent", failure,
                            self._outages)

            steps.append(self._store.get_by_hash(hash_).addCallbacks(remembered, unread))
        if agent_id is not None and self.memory.holds_card(agent_id):
            def card(value: dict[str, object] | None) -> None:
                if value is not None:
                    self.memory.remember_card(agent_id, value)

            def values(value: list[object] | None) -> None:
                if value is not None:
                    self.memory.remember_conscience(agent_id, value)

            def kept(failure: Failure) -> None:
                log_failure(log, "Could not re-read a changed card", failure, self._outages)

            steps.append(self._store.card(agent_id).addCallbacks(card, kept))
            steps.append(self._store.conscience_values(agent_id).addCallbacks(values, kept))
        if not steps:
            return succeed(None)
        return gatherResults(steps).addCallback(lambda _: None)

    def drop_changed(self) -> Deferred[None]:
        """Invalidate cached agents whose rows changed since the last look."""
        def drop(changed: list[tuple[str, int, str]]) -> None:
            for hash_, updated_at, agent_id in changed:
                for key in agent_derived_keys(hash_, agent_id):
                    self._cache.invalidate(key)
                self._refresh(hash_, agent_id)
                self._changes_seen_ms = max(self._changes_seen_ms, updated_at)

        def failed(failure: Failure) -> None:
            log.debug("Agent change poll failed: {reason}", reason=failure.getErrorMessage())

        return self._store.changed_since(self._changes_seen_ms).addCallbacks(drop, failed)

    def flush_last_seen(self) -> Deferred[int]:
        if not self._last_seen:
            return succeed(0)
        batch, self._last_seen = self._last_seen, {}

        def keep_for_next_time(failure: Failure) -> int:
            for agent_id, at in batch.items():
                self._last_seen[agent_id] = max(at, self._last_seen.get(agent_id, 0))
            log.warn("Could not record last_seen for {count} agent(s): {reason}",
                     count=len(batch), reason=failure.getErrorMessage())
            return 0

        return self._store.touch_last_seen(batch).addErrback(keep_for_next_time)

    def start(self) -> None:
        self._flusher.start(LAST_SEEN_FLUSH_SECONDS, now=False)
        self._watcher.start(CHANGE_POLL_SECONDS, now=False)

    def stop(self) -> Deferred[int]:
        if self._watcher.running:
            self._watcher.stop()
        if self._flusher.running:
            self._flusher.stop()
        return self.flush_last_seen()

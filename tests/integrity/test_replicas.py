"""Two replicas racing on one session: one Redis, one database, two integrity pipelines.

Each replica is a whole ``IntegrityPipeline`` with its own Redis connection pool and its
own database pool, analysing real Anthropic response bodies with a scripted analysis
model. The race is set up, not hoped for: each replica's key-value writes
(``compare_and_set``) are held until both replicas have read the session state and
computed their update, then let through one after the other. Runs on SQLite and on
PostgreSQL, against the Redis server of the test environment.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial import unittest

from mnemomd.agents.store import AgentStore
from mnemomd.config import IntegrityConfig
from mnemomd.config.analysis import AnalysisSettings
from mnemomd.integrity.checkpoints import DRIFT_ALERT_WRITE
from mnemomd.integrity.engine import IntegrityAnalyzer
from mnemomd.integrity.pipeline import WINDOW_TTL, IntegrityPipeline
from mnemomd.kv import KVCache, KVUnavailableError, RedisKeyValueStore
from mnemomd.kv.keyring import OutboxKeyring
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.providers import PROVIDERS
from mnemomd.storage.writes import Write, WriteQueue
from tests.fakes.redisserver import require_shared_redis
from tests.integrity.fakes import VERDICT_REVIEW, VERDICT_VIOLATION
from tests.integrity.helpers import THINKING
from tests.kv.contract import HeldStore
from tests.storage.engines import AgentDatabase
from tests.support import poll

AGENT_HASH = "abcdabcdabcdabcd"
REQUEST = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 2048,
                      "messages": [{"role": "user", "content": "hi"}]}).encode()
RESPONSE = json.dumps({
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [{"type": "thinking", "thinking": THINKING, "signature": "sig"},
                {"type": "text", "text": "Here is the summary."}],
    "stop_reason": "end_turn", "usage": {"input_tokens": 10, "output_tokens": 20}}).encode()


class ScriptedBackend:
    """The analysis model: answers every prompt with the next scripted verdict."""

    name = "anthropic"
    model = "fake-analysis-model"

    def __init__(self, verdicts: list[dict[str, Any]]) -> None:
        self.verdicts = verdicts

    def complete(self, system: str, user: str, max_tokens: int) -> Deferred[str]:
        return defer.succeed(json.dumps(self.verdicts.pop(0)))


class CountingWrites(WriteQueue):
    """The write queue, counting the drift alerts the pipeline tried to store."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alert_attempts: list[str] = []

    def submit(self, write: Write, wait: bool = False) -> Deferred[str] | None:
        if write.kind == DRIFT_ALERT_WRITE:
            self.alert_attempts.append(write.row["streak_key"])
        return super().submit(write, wait)


class Replica:
    def __init__(self, pipeline: IntegrityPipeline, kv: HeldStore,
                 checkpoints: CountingWrites, backend: ScriptedBackend) -> None:
        self.pipeline, self.kv = pipeline, kv
        self.checkpoints, self.backend = checkpoints, backend


class ReplicaRaceTests(AgentDatabase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.redis_url = require_shared_redis()
        self.session_id = f"race-{uuid.uuid4().hex}"
        self.agent = yield self.agents.get_or_create(AGENT_HASH, None, "observe", 0)
        self.queues: list[WriteQueue] = []
        self.replicas = [self.replica(), self.replica()]

    @inlineCallbacks
    def tearDown(self):
        store = self.replicas[0].kv.store
        yield store.delete(self.state_key)
        for replica in self.replicas:
            yield replica.kv.store.close()
        for queue in self.queues:
            yield queue.stop()
        yield super().tearDown()

    @property
    def state_key(self) -> str:
        return f"session:{self.agent.agent_id}:{self.session_id}"

    def replica(self) -> Replica:
        """One gateway replica: its own Redis pool, database pool and analyzer."""
        metrics = GatewayMetrics(process_collectors=False)
        kv = HeldStore(RedisKeyValueStore(reactor, f"{self.redis_url}/0", None, metrics))
        db = self.open_database()
        backend = ScriptedBackend([])
        analyzer = IntegrityAnalyzer(AnalysisSettings(), self.clock, backend)
        checkpoints = CountingWrites(reactor, db, str(self.tmp / f"spool-{id(kv)}"), metrics)
        checkpoints.start()
        self.queues.append(checkpoints)
        pipeline = IntegrityPipeline(
            IntegrityConfig(), self.clock, analyzer, AgentStore(db), checkpoints,
            KVCache(kv, "", 300), KVCache(kv, "", WINDOW_TTL), metrics, True,
            outbox_ttl=3600, seal=OutboxKeyring(kv, self.clock, 3600, 30, shared=True).seal)
        return Replica(pipeline, kv, checkpoints, backend)

    def call(self, replica: Replica, verdict: dict[str, Any]) -> Deferred[Any]:
        """One proxied Anthropic call with thinking, through ``replica``'s pipeline."""
        replica.backend.verdicts.append(verdict)
        provider = PROVIDERS["anthropic"]
        info = provider.describe_request(b"/v1/messages", b"", REQUEST)
        d = replica.pipeline.analyse(provider, self.agent, self.session_id, info,
                                     "application/json", None, RESPONSE, False)
        # The verdict comes first; the checkpoint's session update follows it.
        return d.addCallback(lambda result: replica.pipeline.settled().addCallback(
            lambda _: result))

    @inlineCallbacks
    def alert_rows(self):
        for replica in self.replicas:
            yield replica.pipeline.settled()
        for queue in self.queues:
            yield queue.drain()
        rows = yield self.db.fetchall("t", "SELECT streak_key, alert FROM drift_alerts "
                                           "WHERE agent_id = ?", (self.agent.agent_id,))
        return [(r[0], json.loads(r[1])) for r in rows]

    @inlineCallbacks
    def stored_state(self):
        for replica in self.replicas:
            yield replica.pipeline.settled()
        raw = yield self.replicas[0].kv.store.get(self.state_key)
        return json.loads(raw)

    @inlineCallbacks
    def streak_of_two(self):
        """Two non-clear checkpoints, one per replica, one after the other."""
        first = yield self.call(self.replicas[0], VERDICT_REVIEW)
        yield self.call(self.replicas[1], VERDICT_REVIEW)
        return first[1].checkpoint_id

    @inlineCallbacks
    def race(self, verdict_a: dict[str, Any], verdict_b: dict[str, Any]):
        """Both replicas analyse one call each and read the session state before either
        writes; returns the two calls, still running, with their writes held."""
        a, b = self.replicas
        a.kv.holding = b.kv.holding = True
        calls = [self.call(a, verdict_a), self.call(b, verdict_b)]
        yield poll(lambda: len(a.kv.held) == len(b.kv.held) == 1, 20,
                   "both replicas to compute their update")
        a.kv.holding = b.kv.holding = False
        return calls

    @inlineCallbacks
    def test_two_replicas_racing_raise_exactly_one_drift_alert(self):
        start = yield self.streak_of_two()
        a, b = self.replicas
        calls = yield self.race(VERDICT_REVIEW, VERDICT_VIOLATION)
        self.assertTrue((yield a.kv.release()))   # A's update lands first
        self.assertFalse((yield b.kv.release()))  # B's was computed on the old state
        results = yield gatherResults(calls)
        self.assertEqual([r[0] for r in results], ["review_needed", "boundary_violation"])

        rows = yield self.alert_rows()
        self.assertEqual(len(rows), 1, rows)
        self.assertEqual(rows[0][0], f"{self.session_id}:{start}")
        self.assertEqual(rows[0][1]["sustained_checks"], 3)
        # Only the winner raised it: the loser re-ran on the winner's state.
        self.assertEqual(a.checkpoints.alert_attempts + b.checkpoints.alert_attempts,
                         [f"{self.session_id}:{start}"])
        state = yield self.stored_state()
        self.assertEqual(state["drift"]["sustained_nonclear"], 4)  # no update lost
        self.assertEqual(len(state["window"]["checkpoints"]), 4)
        self.assertEqual(state["window"]["total_checks"], 4)

    @inlineCallbacks
    def test_alert_stored_once_per_streak_even_when_an_update_cannot_be_stored(self):
        # B's write fails (Redis went away for it): B alerts on the state it read, and
        # the database keeps the streak's one alert because both name it the same way.
        start = yield self.streak_of_two()
        a, b = self.replicas
        calls = yield self.race(VERDICT_REVIEW, VERDICT_REVIEW)
        self.assertTrue((yield a.kv.release()))
        _, held = b.kv.held.pop(0)
        held.errback(KVUnavailableError("Redis unavailable: test"))
        yield gatherResults(calls)
        key = f"{self.session_id}:{start}"
        self.assertEqual(a.checkpoints.alert_attempts + b.checkpoints.alert_attempts,
                         [key, key])
        rows = yield self.alert_rows()
        self.assertEqual([r[0] for r in rows], [key])

    @inlineCallbacks
    def test_a_new_streak_after_clear_alerts_again(self):
        a, b = self.replicas
        clear = {**VERDICT_REVIEW, "verdict": "clear", "concerns": []}
        for n, verdict in enumerate([VERDICT_REVIEW] * 3 + [clear] + [VERDICT_VIOLATION] * 3):
            yield self.call(self.replicas[n % 2], verdict)
        rows = yield self.alert_rows()
        self.assertEqual(len(rows), 2, rows)
        self.assertEqual(len({r[0] for r in rows}), 2)
        self.assertEqual(len(a.checkpoints.alert_attempts + b.checkpoints.alert_attempts), 2)


class SQLiteReplicaRaceTests(ReplicaRaceTests, unittest.TestCase):
    engine = "sqlite"


class PostgreSQLReplicaRaceTests(ReplicaRaceTests, unittest.TestCase):
    engine = "postgresql"

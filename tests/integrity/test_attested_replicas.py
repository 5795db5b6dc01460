"""Attestation with two replicas on one session (one Redis, one database): one chain.

The race harness of ``test_replicas`` with a signing key given to both replicas; the
inherited race tests run again with attestation on.
"""

from __future__ import annotations

import json
from collections import defaultdict

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from mnemomd.integrity import attestation as a
from mnemomd.integrity.pipeline import IntegrityPipeline
from mnemomd.kv import KVUnavailableError
from tests.integrity import test_replicas as base
from tests.integrity.fakes import VERDICT_REVIEW, VERDICT_VIOLATION

KEY = a.SigningKey(Ed25519PrivateKey.generate())


class AttestedRaceTests(base.ReplicaRaceTests):
    def replica(self) -> base.Replica:
        replica = super().replica()
        p = replica.pipeline
        replica.pipeline = IntegrityPipeline(
            p._config, p._clock, p._analyzer, p._agents, p._writes, p._kv, p._state,
            p._metrics, True, outbox_ttl=3600, seal=p._seal, signing_key=KEY)
        return replica

    @inlineCallbacks
    def links(self):
        for replica in self.replicas:
            yield replica.pipeline.settled()
        for queue in self.queues:
            yield queue.drain()
        rows = yield self.db.fetchall(
            "t", "SELECT a.checkpoint_id, a.chain_segment, a.chain_position, a.chain_hash, "
                 "a.prev_chain_hash, a.input_commitments, a.signature, a.key_id, c.verdict, "
                 "c.thinking_block_hash, c.created_at, a.leaf_hash "
                 "FROM checkpoint_attestations a JOIN integrity_checkpoints c "
                 "ON c.id = a.checkpoint_id WHERE a.agent_id = ? "
                 "ORDER BY a.chain_segment, a.chain_position", (self.agent.agent_id,))
        return rows

    def assert_valid_segments(self, rows) -> dict[str, list[int]]:
        """Every segment is a chain from position 0, each link recomputed and signed."""
        segments: dict[str, list] = defaultdict(list)
        for row in rows:
            segments[row[1]].append(row)
        for links in segments.values():
            prev = None
            for position, row in enumerate(links):
                (cid, _, pos, chain, prev_hash, commitments, sig, key_id, verdict, thinking,
                 created_at, leaf) = row
                commitment = json.loads(commitments)["combined_commitment"]
                ts = a.iso_timestamp(int(created_at))
                self.assertEqual((pos, prev_hash), (position, prev), cid)
                self.assertEqual(a.chain_hash(prev, cid, verdict, thinking, commitment, ts),
                                 chain)
                self.assertEqual(a.leaf_hash(cid, verdict, thinking, chain, ts), leaf)
                self.assertEqual(key_id, KEY.key_id)
                self.assertTrue(a.signature_valid(KEY.public_hex, a.signed_payload(
                    self.agent.agent_id, chain, cid, commitment, thinking, ts, verdict), sig))
                prev = chain
        return {s: [r[2] for r in links] for s, links in segments.items()}

    @inlineCallbacks
    def test_racing_replicas_build_one_chain(self):
        yield self.streak_of_two()
        a_, b_ = self.replicas
        calls = yield self.race(VERDICT_REVIEW, VERDICT_VIOLATION)
        self.assertTrue((yield a_.kv.release()))
        self.assertFalse((yield b_.kv.release()))  # B re-runs its step on A's head
        yield gatherResults(calls)
        rows = yield self.links()
        self.assertEqual(list(self.assert_valid_segments(rows).values()), [[0, 1, 2, 3]])
        state = yield self.stored_state()
        self.assertEqual(state["chain"]["position"], 3)
        keys = yield self.db.fetchall("t", "SELECT key_id, public_key FROM signing_keys "
                                           "WHERE key_id = ?", (KEY.key_id,))
        self.assertEqual([tuple(k) for k in keys], [(KEY.key_id, KEY.public_hex)])

    @inlineCallbacks
    def test_a_head_that_cannot_be_stored_starts_a_segment_of_its_own(self):
        yield self.streak_of_two()
        a_, b_ = self.replicas
        calls = yield self.race(VERDICT_REVIEW, VERDICT_REVIEW)
        self.assertTrue((yield a_.kv.release()))
        _, held = b_.kv.held.pop(0)
        held.errback(KVUnavailableError("Redis unavailable: test"))
        yield gatherResults(calls)
        rows = yield self.links()
        positions = sorted(self.assert_valid_segments(rows).values())
        # The session's chain (0, 1, 2 through A) and B's outage segment (0): no fork.
        self.assertEqual(positions, [[0], [0, 1, 2]])


class SQLiteAttestedRaceTests(AttestedRaceTests, unittest.TestCase):
    engine = "sqlite"


class PostgreSQLAttestedRaceTests(AttestedRaceTests, unittest.TestCase):
    engine = "postgresql"

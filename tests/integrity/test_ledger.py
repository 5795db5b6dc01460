"""The stored attestation record on both engines: keys, certificates, proofs, roots, the
audit that finds a database edited behind the gateway's back, and retention."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from mnemomd.integrity import attestation as a
from mnemomd.integrity.ledger import AttestationLedger
from mnemomd.observer.retention import DAY_MS, purge
from tests.integrity.ledger_helpers import write_session
from tests.storage.engines import NOW, AgentDatabase

KEY = a.SigningKey(Ed25519PrivateKey.generate())
NEW_KEY = a.SigningKey(Ed25519PrivateKey.generate())


class LedgerTests(AgentDatabase):
    @inlineCallbacks
    def setUp(self):  # noqa: ANN201
        yield super().setUp()
        self.ledger = AttestationLedger(self.db)
        self.s1 = yield write_session(self.db, KEY, self.agent_id, "s1", 4, NOW)
        self.s2 = yield write_session(self.db, KEY, self.agent_id, "s2", 3, NOW + 10_000)

    @inlineCallbacks
    def keys(self):
        found = yield self.ledger.keys()
        return {k["key_id"]: k["public_key"] for k in found}

    @inlineCallbacks
    def test_every_certificate_verifies_against_the_agents_current_root(self):
        keys = yield self.keys()
        root = yield self.ledger.merkle_root(self.agent_id)
        self.assertEqual((root["leaf_count"], root["tree_depth"]), (7, 3))
        self.assertEqual(root["last_updated"], a.iso_timestamp(NOW + 12_000))
        for index, cid in enumerate(self.s1 + self.s2):
            cert = yield self.ledger.certificate(cid)
            result = a.verify_certificate(cert, keys, root["merkle_root"])
            self.assertTrue(result["valid"], result["details"])
            self.assertEqual(cert["proofs"]["merkle"]["leaf_index"], index)
            proof = yield self.ledger.inclusion_proof(cid)
            self.assertEqual(proof["root"], root["merkle_root"])
            self.assertEqual(proof["inclusion_proof"], cert["proofs"]["merkle"]["inclusion_proof"])
        self.assertIsNone((yield self.ledger.certificate("ic-unknown")))
        empty = yield self.ledger.merkle_root("smolt-nobody")
        self.assertEqual((empty["merkle_root"], empty["leaf_count"]), (None, 0))

    @inlineCallbacks
    def test_a_changed_verdict_fails_the_certificate_and_the_audit_names_it(self):
        clean = yield self.ledger.audit()
        self.assertTrue(clean.valid, clean.problems)
        self.assertEqual((clean.checked, clean.roots[self.agent_id][1]), (7, 7))
        yield self.db.execute("t", "UPDATE integrity_checkpoints SET verdict = 'clear' "
                                   "WHERE id = ?", (self.s1[1],))
        cert = yield self.ledger.certificate(self.s1[1])
        self.assertFalse(a.verify_certificate(cert, (yield self.keys()))["valid"])
        report = yield self.ledger.audit()
        self.assertEqual([cid for cid, _ in report.problems], [self.s1[1]])
        self.assertIn("chain hash does not recompute", report.problems[0][1])

    @inlineCallbacks
    def test_a_deleted_checkpoint_is_named(self):
        yield self.db.execute("t", "DELETE FROM integrity_checkpoints WHERE id = ?",
                              (self.s1[2],))
        report = yield self.ledger.audit()
        self.assertEqual([cid for cid, _ in report.problems], [self.s1[2]])
        # Its attestation row deleted too: the next link names the gap.
        yield self.db.execute("t", "DELETE FROM checkpoint_attestations "
                                   "WHERE checkpoint_id = ?", (self.s1[2],))
        report = yield self.ledger.audit()
        self.assertEqual([cid for cid, _ in report.problems], [self.s1[3]])
        self.assertIn("a link is missing", report.problems[0][1])

    @inlineCallbacks
    def test_two_swapped_checkpoints_are_named(self):
        first, second = self.s2[0], self.s2[1]
        yield self.db.execute(
            "t", "UPDATE integrity_checkpoints SET created_at = CASE id WHEN ? THEN ? "
                 "ELSE ? END WHERE id IN (?, ?)",
            (first, NOW + 11_000, NOW + 10_000, first, second))
        report = yield self.ledger.audit()
        self.assertEqual([cid for cid, _ in report.problems], [first, second])

    @inlineCallbacks
    def test_retention_leaves_newer_certificates_verifiable_and_the_audit_clean(self):
        later = yield write_session(self.db, KEY, self.agent_id, "s3", 3, NOW + 3 * DAY_MS)
        deleted = yield purge(self.db, NOW + 3 * DAY_MS + 60_000, retention_days=1)
        self.assertEqual(deleted["integrity_checkpoints"], 7)
        report = yield self.ledger.audit()
        self.assertTrue(report.valid, report.problems)
        self.assertEqual((report.checked, report.pruned), (3, 7))
        root = yield self.ledger.merkle_root(self.agent_id)
        self.assertEqual(root["leaf_count"], 10)
        for cid in later:
            cert = yield self.ledger.certificate(cid)
            self.assertTrue(a.verify_certificate(cert, (yield self.keys()),
                                                 root["merkle_root"])["valid"])
        # A checkpoint deleted behind the gateway's back and marked pruned, though newer
        # than one still stored, is still found.
        yield self.db.execute("t", "DELETE FROM integrity_checkpoints WHERE id = ?",
                              (later[2],))
        yield self.db.execute("t", "UPDATE checkpoint_attestations SET pruned = TRUE "
                                   "WHERE checkpoint_id = ?", (later[2],))
        report = yield self.ledger.audit()
        self.assertEqual([cid for cid, _ in report.problems], [later[2]])

    @inlineCallbacks
    def test_a_retired_key_stays_published_and_its_certificates_verify(self):
        yield self.ledger.retire_key(KEY.key_id, KEY.public_hex, NOW + 20_000)
        newer = yield write_session(self.db, NEW_KEY, self.agent_id, "s4", 2, NOW + 30_000)
        listed = yield self.ledger.keys()
        self.assertEqual({(k["key_id"], k["is_active"]) for k in listed},
                         {(KEY.key_id, False), (NEW_KEY.key_id, True)})
        keys = yield self.keys()
        for cid in (self.s1[0], newer[1]):
            cert = yield self.ledger.certificate(cid)
            self.assertTrue(a.verify_certificate(cert, keys)["valid"], cid)
        self.assertTrue((yield self.ledger.audit()).valid)


class SQLiteLedgerTests(LedgerTests, unittest.TestCase):
    engine = "sqlite"


class PostgreSQLLedgerTests(LedgerTests, unittest.TestCase):
    engine = "postgresql"

"""The stored record of attestation: published keys, certificates, Merkle proofs, and the
audit that re-walks every stored chain and tree (docs/attestation.md).

Reads run inside database interactions, on the database thread pool: an agent's Merkle
tree is rebuilt from its leaves there, never on the reactor, however many leaves it has.
``audit`` is a pure function over the rows, shared by ``mnemomd verify --database``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from mnemomd.integrity.attestation import (
    ALGORITHM,
    certificate,
    chain_hash,
    inclusion_proof,
    iso_timestamp,
    leaf_hash,
    merkle_root,
    signature_valid,
    signed_payload,
    tree_depth,
)
from mnemomd.storage.database import Cursor, Database

#: The attestation row's columns a certificate needs, in this order.
_ATTESTATION_SELECT = (
    "SELECT a.checkpoint_id, a.agent_id, a.session_id, a.chain_segment, a.chain_position,"
    " a.chain_hash, a.prev_chain_hash, a.leaf_hash, a.input_commitments, a.card_id,"
    " a.confidence, a.analysis_model, a.analysis_duration_ms, a.key_id, a.signature,"
    " a.pruned, a.created_at, a.seq")
_ATTESTATION_FIELDS = (
    "checkpoint_id", "agent_id", "session_id", "chain_segment", "chain_position",
    "chain_hash", "prev_chain_hash", "leaf_hash", "input_commitments", "card_id",
    "confidence", "analysis_model", "analysis_duration_ms", "key_id", "signature", "pruned",
    "created_at", "seq")
#: The checkpoint's columns a certificate and the audit read (None when it was deleted).
_CHECKPOINT_SELECT = (
    ", c.id, c.agent_id, c.session_id, c.verdict, c.concerns, c.reasoning_summary,"
    " c.thinking_block_hash, c.created_at")
_CHECKPOINT_FIELDS = ("id", "agent_id", "session_id", "verdict", "concerns",
                      "reasoning_summary", "thinking_block_hash", "created_at")
_JOINED = (_ATTESTATION_SELECT + _CHECKPOINT_SELECT
           + " FROM checkpoint_attestations a"
           " LEFT JOIN integrity_checkpoints c ON c.id = a.checkpoint_id")


def _split(row: Iterable[Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    values = list(row)
    attestation = dict(zip(_ATTESTATION_FIELDS, values[:len(_ATTESTATION_FIELDS)],
                           strict=True))
    attestation["input_commitments"] = json.loads(attestation["input_commitments"])
    attestation["pruned"] = bool(attestation["pruned"])
    checkpoint = dict(zip(_CHECKPOINT_FIELDS, values[len(_ATTESTATION_FIELDS):], strict=True))
    if checkpoint["id"] is None:
        return attestation, None
    concerns = checkpoint["concerns"]
    checkpoint["concerns"] = json.loads(concerns) if isinstance(concerns, str) else []
    return attestation, checkpoint


def _leaves(cursor: Cursor, agent_id: str) -> list[tuple[str, str]]:
    return [(str(r[0]), str(r[1])) for r in cursor.execute(
        "SELECT checkpoint_id, leaf_hash FROM checkpoint_attestations WHERE agent_id = ?"
        " ORDER BY seq", (agent_id,)).fetchall()]


def _merkle_block(leaves: list[tuple[str, str]], checkpoint_id: str) -> dict[str, Any]:
    hashes = [h for _, h in leaves]
    index = next(i for i, (cid, _) in enumerate(leaves) if cid == checkpoint_id)
    proof, root = inclusion_proof(hashes, index)
    return {"leaf_hash": hashes[index], "leaf_index": index, "root": root,
            "tree_size": len(hashes), "inclusion_proof": proof}


def _attested(cursor: Cursor, checkpoint_id: str,
              ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    row = cursor.execute(_JOINED + " WHERE a.checkpoint_id = ?", (checkpoint_id,)).fetchone()
    return None if row is None else _split(row)


def _certificate(cursor: Cursor, checkpoint_id: str, base_url: str) -> dict[str, Any] | None:
    found = _attested(cursor, checkpoint_id)
    if found is None or found[1] is None:
        return None
    attestation, checkpoint = found
    merkle = _merkle_block(_leaves(cursor, attestation["agent_id"]), checkpoint_id)
    return certificate(checkpoint=checkpoint, attestation=attestation, merkle=merkle,
                       base_url=base_url)


def _inclusion_proof(cursor: Cursor, checkpoint_id: str) -> dict[str, Any] | None:
    found = _attested(cursor, checkpoint_id)
    if found is None or found[1] is None:
        return None
    attestation = found[0]
    return {"checkpoint_id": checkpoint_id, "agent_id": attestation["agent_id"],
            **_merkle_block(_leaves(cursor, attestation["agent_id"]), checkpoint_id)}


def _merkle_root(cursor: Cursor, agent_id: str) -> dict[str, Any]:
    leaves = _leaves(cursor, agent_id)
    last = cursor.execute("SELECT MAX(created_at) FROM checkpoint_attestations"
                          " WHERE agent_id = ?", (agent_id,)).fetchone()
    updated = last[0] if last is not None else None
    return {"agent_id": agent_id, "merkle_root": merkle_root([h for _, h in leaves]) or None,
            "tree_depth": tree_depth(len(leaves)), "leaf_count": len(leaves),
            "last_updated": iso_timestamp(int(updated)) if updated is not None else None}


def _key_rows(cursor: Cursor) -> list[dict[str, Any]]:
    return [{"key_id": r[0], "public_key": r[1], "algorithm": r[2], "created_at": int(r[3]),
             "is_active": r[4] is None}
            for r in cursor.execute("SELECT key_id, public_key, algorithm, created_at,"
                                    " retired_at FROM signing_keys ORDER BY created_at,"
                                    " key_id").fetchall()]


def _publish_key(cursor: Cursor, key_id: str, public_hex: str, now_ms: int) -> None:
    cursor.execute("INSERT INTO signing_keys (key_id, public_key, algorithm, created_at)"
                   " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                   (key_id, public_hex, ALGORITHM, now_ms))


def _retire_key(cursor: Cursor, key_id: str, public_hex: str, now_ms: int) -> None:
    _publish_key(cursor, key_id, public_hex, now_ms)
    cursor.execute("UPDATE signing_keys SET retired_at = ? WHERE key_id = ?"
                   " AND retired_at IS NULL", (now_ms, key_id))


def _audit_rows(cursor: Cursor) -> tuple[list[tuple[dict[str, Any], dict[str, Any] | None]],
                                         dict[str, str], int]:
    rows = [_split(r) for r in cursor.execute(_JOINED + " ORDER BY a.agent_id, a.seq")
            .fetchall()]
    keys = {k["key_id"]: k["public_key"] for k in _key_rows(cursor)}
    unattested = cursor.execute(
        "SELECT COUNT(*) FROM integrity_checkpoints c WHERE NOT EXISTS (SELECT 1 FROM"
        " checkpoint_attestations a WHERE a.checkpoint_id = c.id)").fetchone()
    return rows, keys, int(unattested[0]) if unattested else 0


class AttestationLedger:
    """The database side of the public verification endpoints and of the audit."""

    def __init__(self, db: Database, base_url: str = "") -> None:
        """``base_url`` prefixes a certificate's ``verification`` URLs (empty: relative)."""
        self._db = db
        self._base_url = base_url

    def keys(self) -> Deferred[list[dict[str, Any]]]:
        return self._db.run_interaction("signing keys", _key_rows)

    def certificate(self, checkpoint_id: str) -> Deferred[dict[str, Any] | None]:
        """The checkpoint's certificate, its Merkle proof against the agent's current tree;
        None when the checkpoint or its attestation is not stored."""
        return self._db.run_interaction("certificate", _certificate, checkpoint_id,
                                        self._base_url)

    def inclusion_proof(self, checkpoint_id: str) -> Deferred[dict[str, Any] | None]:
        return self._db.run_interaction("inclusion proof", _inclusion_proof, checkpoint_id)

    def merkle_root(self, agent_id: str) -> Deferred[dict[str, Any]]:
        return self._db.run_interaction("merkle root", _merkle_root, agent_id)

    def retire_key(self, key_id: str, public_hex: str, now_ms: int) -> Deferred[None]:
        """Publish the key if it is not yet, and mark it retired (``is_active`` false)."""
        return self._db.run_interaction("retire key", _retire_key, key_id, public_hex, now_ms)

    def publish_key(self, key_id: str, public_hex: str, now_ms: int) -> Deferred[None]:
        return self._db.run_interaction("publish key", _publish_key, key_id, public_hex,
                                        now_ms)

    def audit(self) -> Deferred[AuditReport]:
        """Every stored chain and tree re-walked (``audit``)."""
        def walk(cursor: Cursor) -> AuditReport:
            rows, keys, unattested = _audit_rows(cursor)
            report = audit(rows, keys)
            report.unattested = unattested
            return report
        return self._db.run_interaction("attestation audit", walk)


# -- the audit -----------------------------------------------------------------------------

@dataclass
class AuditReport:
    """``problems``: ``(checkpoint_id, what)`` in the order found (agents by id, each
    agent's rows in the order they were stored); ``roots``: agent -> (root, leaves)."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    roots: dict[str, tuple[str, int]] = field(default_factory=dict)
    checked: int = 0
    pruned: int = 0
    #: Stored checkpoints without an attestation row (written with attestation off).
    unattested: int = 0

    @property
    def valid(self) -> bool:
        return not self.problems


def _check_row(attestation: Mapping[str, Any], checkpoint: Mapping[str, Any],
               keys: Mapping[str, str]) -> str | None:
    """What is wrong with one stored checkpoint against its attestation row, or None."""
    cid = str(attestation["checkpoint_id"])
    if (checkpoint["agent_id"], checkpoint["session_id"]) != \
            (attestation["agent_id"], attestation["session_id"]):
        return "its agent or session differs from the attested one"
    timestamp = iso_timestamp(int(checkpoint["created_at"]))
    verdict, thinking = str(checkpoint["verdict"]), checkpoint["thinking_block_hash"]
    commitment = str(attestation["input_commitments"].get("combined_commitment"))
    if (attestation["input_commitments"].get("thinking_block_hash") or None) != \
            (thinking or None):
        return "its thinking hash differs from the committed one"
    recomputed = chain_hash(attestation["prev_chain_hash"], cid, verdict, thinking, commitment,
                            timestamp)
    if recomputed != attestation["chain_hash"]:
        return ("its verdict, thinking hash or time differs from what was chained "
                "(the chain hash does not recompute)")
    if leaf_hash(cid, verdict, thinking, recomputed, timestamp) != attestation["leaf_hash"]:
        return "its Merkle leaf does not recompute"
    public = keys.get(str(attestation["key_id"]))
    if public is None:
        return f"signed by {attestation['key_id']}, a key that is not published"
    payload = signed_payload(str(attestation["agent_id"]), recomputed, cid, commitment,
                             thinking, timestamp, verdict)
    if not signature_valid(public, payload, str(attestation["signature"])):
        return "its signature does not verify"
    return None


def _check_chains(rows: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    """Links out of place: ``(seq, checkpoint_id, what)``."""
    chains: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        chains.setdefault((row["agent_id"], row["session_id"], row["chain_segment"]),
                          []).append(row)
    found = []
    for links in chains.values():
        links.sort(key=lambda r: (int(r["chain_position"]), int(r["seq"])))
        previous: dict[str, Any] | None = None
        for link in links:
            cid, position = str(link["checkpoint_id"]), int(link["chain_position"])
            expected = 0 if previous is None else int(previous["chain_position"]) + 1
            if previous is not None and position == expected - 1:
                found.append((int(link["seq"]), cid, f"it shares chain position {position} "
                              f"with {previous['checkpoint_id']} (a fork)"))
            elif position != expected:
                found.append((int(link["seq"]), cid, f"it is at chain position {position}, "
                              f"but the chain before it ends at {expected - 1}: a link is "
                              f"missing"))
            elif (link["prev_chain_hash"] or None) != \
                    (previous["chain_hash"] if previous else None):
                found.append((int(link["seq"]), cid, "its previous chain hash is not the "
                              "chain hash of the link before it"))
            previous = link
    return found


def audit(rows: Iterable[tuple[dict[str, Any], dict[str, Any] | None]],
          keys: Mapping[str, str]) -> AuditReport:
    """Re-walk stored attestations (``(attestation, checkpoint or None)``, each agent's in
    the order stored): every checkpoint against what was signed, every chain link to
    link, every agent's Merkle leaves into a root.

    A checkpoint whose row is gone is tampering unless retention deleted it: its
    attestation row is marked ``pruned`` and it is older than every checkpoint of its agent
    still stored (retention deletes by age)."""
    report = AuditReport()
    by_agent: dict[str, list[tuple[dict[str, Any], dict[str, Any] | None]]] = {}
    for attestation, checkpoint in rows:
        by_agent.setdefault(str(attestation["agent_id"]), []).append((attestation, checkpoint))
    for agent_id in sorted(by_agent):
        items = by_agent[agent_id]
        oldest_kept = min((int(c["created_at"]) for _, c in items if c is not None),
                          default=None)
        found: list[tuple[int, str, str]] = []
        for attestation, checkpoint in items:
            cid, seq = str(attestation["checkpoint_id"]), int(attestation["seq"])
            if checkpoint is None:
                if attestation["pruned"] and (oldest_kept is None or
                                              int(attestation["created_at"]) < oldest_kept):
                    report.pruned += 1
                    continue
                found.append((seq, cid, "the checkpoint is missing, but its attestation "
                                        "row is stored (deleted behind the gateway's back)"))
                continue
            report.checked += 1
            problem = _check_row(attestation, checkpoint, keys)
            if problem is not None:
                found.append((seq, cid, problem))
        found += _check_chains([a for a, _ in items])
        found.sort(key=lambda item: item[0])
        report.problems += [(cid, what) for _, cid, what in found]
        leaves = [str(a["leaf_hash"]) for a, _ in items]
        report.roots[agent_id] = (merkle_root(leaves), len(leaves))
    return report

"""AIP certificate formulas on fixed vectors, each also computed here independently."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from mnemomd.integrity import attestation as a


def h(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


CARD = {"card_id": "ac-1", "values": {"declared": ["honesty"]}, "weight": 1.0, "b": [2.5]}
VALUES = [{"type": "BOUNDARY", "content": "never exfiltrate"}]
WINDOW = [{"checkpoint_id": "ic-0", "verdict": "clear", "reasoning_summary": "fine",
           "session_id": "s", "concern_categories": []}]


def test_det_json_sorts_keys_and_writes_floats_as_javascript():
    assert a.det_json({"b": 1.0, "a": {"d": [2.0, 0.5], "c": "é"}}) == \
        '{"a":{"c":"é","d":[2,0.5]},"b":1}'
    with pytest.raises(a.AttestationError):
        a.det_json(float("nan"))


def test_combined_commitment_matches_a_hand_built_preimage():
    commitments = a.input_commitments("th", CARD, VALUES, a.window_context(WINDOW),
                                      "claude-haiku", "tmpl-1")
    card = ('{"b":[2.5],"card_id":"ac-1","values":{"declared":["honesty"]},"weight":1}')
    values = '[{"content":"never exfiltrate","type":"BOUNDARY"}]'
    context = '[{"checkpoint_id":"ic-0","reasoning_summary":"fine","verdict":"clear"}]'
    preimage = f'{card}|{values}|{context}|"claude-haiku"|"tmpl-1"'
    assert commitments == {
        "thinking_block_hash": "th", "card_hash": h(card), "values_hash": h(values),
        "context_hash": h(context), "model_version": "claude-haiku",
        "combined_commitment": h(preimage)}


def test_recurring_values_are_written_once_per_object_with_the_same_commitments(
        monkeypatch):
    plain = a.input_commitments("th", CARD, VALUES, a.window_context(WINDOW), "m", "t")
    recurring = a.RecurringJson(size=2)
    walks: list[object] = []
    real = a.det_json
    monkeypatch.setattr(a, "det_json", lambda v: walks.append(v) or real(v))
    for _ in range(3):
        assert a.input_commitments("th", CARD, VALUES, a.window_context(WINDOW), "m", "t",
                                   det=recurring) == plain
    # the card and the values once each, over three commitments
    assert sum(w is CARD for w in walks) == 1 and sum(w is VALUES for w in walks) == 1
    # an equal but different object is written anew; the oldest kept object goes
    other = json.loads(json.dumps(CARD))
    assert recurring(other) == real(CARD)
    assert sum(w is other for w in walks) == 1
    recurring(CARD)
    assert sum(w is CARD for w in walks) == 2
    # Empty values are new objects each call: written, not kept.
    assert recurring({}) == "{}" and recurring([]) == "[]"
    assert len(recurring._kept) == 2


def test_chain_hash_genesis_and_link():
    first = a.chain_hash(None, "ic-1", "clear", "th1", "cc1", "2025-01-01T00:00:00.000Z")
    assert first == h("genesis|ic-1|clear|th1|cc1|2025-01-01T00:00:00.000Z")
    second = a.chain_hash(first, "ic-2", "review_needed", "th2", "cc2",
                          "2025-01-01T00:00:01.000Z")
    assert second == h(f"{first}|ic-2|review_needed|th2|cc2|2025-01-01T00:00:01.000Z")
    link = a.next_link(a.link_head(a.next_link(None, "ic-1", "clear", "th1", "cc1",
                                               "2025-01-01T00:00:00.000Z")),
                       "ic-2", "review_needed", "th2", "cc2", "2025-01-01T00:00:01.000Z")
    assert (link.chain_hash, link.prev_chain_hash, link.position, link.segment) == \
        (second, first, 1, "ic-1")


def test_iso_timestamp_is_javascript_to_iso_string():
    assert a.iso_timestamp(1735689600123) == "2025-01-01T00:00:00.123Z"


def test_leaf_hash():
    assert a.leaf_hash("ic-1", "clear", "th", "ch", "t") == h("ic-1|clear|th|ch|t")


def node(left: str, right: str) -> str:
    return h(left + right)


LEAVES = [h(f"leaf-{i}") for i in range(7)]


def expected_root(n: int) -> str:
    """Roots built by hand, level by level, for the sizes tested."""
    x = LEAVES
    if n == 1:
        return x[0]
    if n == 2:
        return node(x[0], x[1])
    if n == 3:
        return node(node(x[0], x[1]), node(x[2], x[2]))
    assert n == 7
    n01, n23, n45, n66 = node(x[0], x[1]), node(x[2], x[3]), node(x[4], x[5]), node(x[6], x[6])
    return node(node(n01, n23), node(n45, n66))


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_merkle_root_and_every_inclusion_proof(size):
    leaves = LEAVES[:size]
    assert a.merkle_root(leaves) == expected_root(size)
    for index in range(size):
        proof, root = a.inclusion_proof(leaves, index)
        assert root == expected_root(size)
        assert a.root_from_proof(leaves[index], proof) == root
        assert len(proof) == a.tree_depth(size)


def test_inclusion_proof_of_leaf_six_of_seven_by_hand():
    x = LEAVES
    proof, _ = a.inclusion_proof(x, 6)
    assert proof == [{"hash": x[6], "position": "right"},
                     {"hash": node(x[4], x[5]), "position": "left"},
                     {"hash": node(node(x[0], x[1]), node(x[2], x[3])), "position": "left"}]
    proof, _ = a.inclusion_proof(x[:3], 1)
    assert proof == [{"hash": x[0], "position": "left"},
                     {"hash": node(x[2], x[2]), "position": "right"}]
    assert a.merkle_root([]) == ""
    with pytest.raises(a.AttestationError):
        a.inclusion_proof(x, 7)


def attested_certificate(key: a.SigningKey, verdict: str = "clear") -> dict:
    ms = 1735689600000
    commitments = a.input_commitments("th", CARD, VALUES, [], "m")
    timestamp = a.iso_timestamp(ms)
    link = a.next_link(None, "ic-1", verdict, "th", commitments["combined_commitment"],
                       timestamp)
    payload = a.signed_payload("agent-1", link.chain_hash, "ic-1",
                               commitments["combined_commitment"], "th", timestamp, verdict)
    leaves = [h("other"), a.leaf_hash("ic-1", verdict, "th", link.chain_hash, timestamp)]
    proof, root = a.inclusion_proof(leaves, 1)
    return a.certificate(
        checkpoint={"id": "ic-1", "agent_id": "agent-1", "session_id": "s1",
                    "verdict": verdict, "concerns": [], "reasoning_summary": "ok",
                    "thinking_block_hash": "th", "created_at": ms},
        attestation={"card_id": "ac-1", "input_commitments": commitments,
                     "chain_hash": link.chain_hash, "prev_chain_hash": None,
                     "chain_position": 0, "signature": key.sign(payload),
                     "key_id": key.key_id, "confidence": 1.0, "analysis_model": "m",
                     "analysis_duration_ms": 12.5},
        merkle={"leaf_hash": leaves[1], "leaf_index": 1, "root": root, "tree_size": 2,
                "inclusion_proof": proof})


def test_signature_verifies_with_cryptography_from_the_published_public_key():
    key = a.SigningKey(Ed25519PrivateKey.generate())
    cert = attested_certificate(key)
    sig = cert["proofs"]["signature"]
    payload = json.loads(sig["signed_payload"])
    assert sorted(payload) == ["agent_id", "chain_hash", "checkpoint_id", "input_commitment",
                               "thinking_block_hash", "timestamp", "verdict"]
    assert sig["signed_payload"] == json.dumps(payload, sort_keys=True, separators=(",", ":"))
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.public_hex))
    public.verify(base64.b64decode(sig["value"]), sig["signed_payload"].encode())  # no raise
    assert sig["key_id"] == "key-" + h_bytes(bytes.fromhex(key.public_hex))[:16]


def h_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_certificate_shape_and_verification():
    key = a.SigningKey(Ed25519PrivateKey.generate())
    cert = attested_certificate(key)
    assert cert["@context"] == "https://mnemom.ai/aip/v1"
    assert cert["type"] == "IntegrityCertificate" and cert["version"] == "1.0.0"
    assert cert["certificate_id"].startswith("cert-") and len(cert["certificate_id"]) == 13
    assert cert["proofs"]["verdict_derivation"] is None
    keys = {key.key_id: key.public_hex}
    result = a.verify_certificate(cert, keys)
    assert result["valid"], result
    assert all(c["valid"] for c in result["checks"].values())
    assert a.verify_certificate(cert, keys, expected_root="0" * 64)["valid"] is False


def test_a_changed_verdict_fails_signature_chain_and_merkle():
    key = a.SigningKey(Ed25519PrivateKey.generate())
    cert = attested_certificate(key)
    cert["claims"]["verdict"] = "boundary_violation"
    result = a.verify_certificate(cert, {key.key_id: key.public_hex})
    assert not result["valid"]
    assert [c["valid"] for c in result["checks"].values()] == [False, False, False]


def test_unknown_key_and_malformed_documents():
    key = a.SigningKey(Ed25519PrivateKey.generate())
    cert = attested_certificate(key)
    assert not a.verify_certificate(cert, {})["checks"]["signature"]["valid"]
    assert not a.verify_certificate({"type": "x"}, {})["valid"]
    with pytest.raises(a.AttestationError):
        a.keys_from_document({"keys": [{"key_id": 1}]})
    assert repr(key) == f"SigningKey({key.key_id})"


def test_the_fast_encoding_is_the_normalised_one():
    """``det_json`` skips the normalising walk only when the plain encoding is already
    what JavaScript writes: compare it with the walk on values with and without floats,
    and with strings that merely look like floats."""
    import json as json_module
    import random

    from mnemomd.integrity.attestation import _normalise, det_json

    def walked(value):
        return json_module.dumps(_normalise(value), sort_keys=True, separators=(",", ":"),
                                 ensure_ascii=False)

    rng = random.Random(7)
    leaves = [1, 1.0, 2.5, -3.0, 1e16, 0.1, "1.0", "x 2.0 y", "NaN-free", "é", True, None,
              10**20, 9007199254740993.0]

    def build(depth):
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(leaves)
        if rng.random() < 0.5:
            return [build(depth - 1) for _ in range(rng.randint(0, 4))]
        return {f"k{rng.randint(0, 9)}": build(depth - 1) for _ in range(rng.randint(0, 4))}

    for _ in range(2000):
        value = build(4)
        assert det_json(value) == walked(value)
    assert det_json({"b": 1.0, "a": [2.0, "3.0"]}) == '{"a":[2,"3.0"],"b":1}'


def test_processes_creating_the_signing_key_at_once_all_use_one_key(tmp_path):
    """Workers start together: each may find no key and make one; exactly one is kept,
    and every process loads that one (never half a file)."""
    import multiprocessing

    from mnemomd.integrity.keys import load_signing_key

    path = str(tmp_path / "data" / "signing-key.pem")
    # spawn, not fork: forking a test process that has run threads can leave a child
    # stuck on a lock some thread held, and the suite hanging at exit.
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        key_ids = pool.starmap(_key_id_of, [(path,)] * 32)
    assert len(set(key_ids)) == 1
    assert load_signing_key(path, create=True).key_id == key_ids[0]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["signing-key.pem"]


def _key_id_of(path: str) -> str:
    from mnemomd.integrity.keys import load_signing_key

    return load_signing_key(path, create=True).key_id

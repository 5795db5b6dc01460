"""The tamper-evident record: AIP certificates 1.0.0, as pure functions.

Every checkpoint gets an input commitment (what the analysis saw), a link in its session's
hash chain, a leaf in its agent's Merkle tree and an Ed25519 signature; a certificate
bundles them so anyone holding the public key can check it offline. The formulas are
Mnemom's (see docs/attestation.md): SHA-256 over UTF-8, lowercase hex, ``det_json``
(compact, keys sorted, ``1.0`` written ``1``). Nothing here touches the reactor, the
database or a file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CONTEXT = "https://mnemom.ai/aip/v1"
CERTIFICATE_TYPE = "IntegrityCertificate"
CERTIFICATE_VERSION = "1.0.0"
ALGORITHM = "Ed25519"
GENESIS = "genesis"


def _prompt_template_version() -> str:
    try:
        return f"agent-integrity-proto/{version('agent-integrity-proto')}"
    except PackageNotFoundError:  # pragma: no cover - the SDK is a dependency
        return "agent-integrity-proto/unknown"


#: The conscience prompt's template: the AIP SDK that builds it, by version.
PROMPT_TEMPLATE_VERSION = _prompt_template_version()


class AttestationError(ValueError):
    """A document that is not a certificate, or a key that is not an Ed25519 key."""


# -- hashing ---------------------------------------------------------------------------

def _normalise(value: Any) -> Any:
    """Floats with an integral value become ints (``1.0`` -> ``1``), as JavaScript writes
    them; NaN and infinities have no JSON form and are refused."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value  # the common cases first: this runs on every checkpoint
    if kind is dict:
        return {str(k): _normalise(v) for k, v in value.items()}
    if kind is list:
        return [_normalise(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AttestationError("a commitment cannot hold NaN or infinity")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


#: What the plain encoding writes for a float JavaScript would write otherwise: an
#: integral float (``1.0``), NaN or an infinity. Seen anywhere (a string may hold it too),
#: the value is normalised first.
_NOT_JS = re.compile(r"\d\.0(?![0-9])|NaN|Infinity")


def det_json(value: Any) -> str:
    """Deterministic JSON: compact, object keys sorted recursively, floats as JS.

    The C encoder's text is already that unless it holds a float JavaScript writes
    differently; only then is the value walked and normalised (the walk is most of the
    cost of a commitment, and cards and conscience values rarely hold floats)."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except TypeError:  # keys of mixed types: the walk makes them strings
        text = None
    if text is not None and (".0" not in text and "NaN" not in text
                             and "Infinity" not in text or _NOT_JS.search(text) is None):
        return text
    return json.dumps(_normalise(value), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def iso_timestamp(ms: int) -> str:
    """A checkpoint's timestamp as the chain hashes it: ISO 8601, UTC, milliseconds, ``Z``
    (JavaScript's ``toISOString``), from the stored ``created_at``."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def window_context(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The window the analysis saw, as committed: ``[{checkpoint_id, verdict,
    reasoning_summary}]``, oldest first."""
    return [{"checkpoint_id": e.get("checkpoint_id"), "verdict": e.get("verdict"),
             "reasoning_summary": e.get("reasoning_summary")} for e in entries]


class RecurringJson:
    """``det_json`` of the values that recur from call to call as the same object (an
    agent's card and conscience values, shared by ``KVCache`` while their bytes do not
    change), kept per object: a card's text costs one walk, not one per checkpoint.

    Each kept value is held, so its ``id`` cannot be reused by another object while it
    is kept; values must not be modified (as everything ``KVCache`` hands out)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._kept: dict[int, tuple[Any, str]] = {}

    def __call__(self, value: Any) -> str:
        if not isinstance(value, dict | list) or not value:
            return det_json(value)  # an empty one is new each call and costs nothing
        kept = self._kept.get(id(value))
        if kept is not None and kept[0] is value:
            return kept[1]
        text = det_json(value)
        self._kept[id(value)] = (value, text)
        if len(self._kept) > self._size:
            del self._kept[next(iter(self._kept))]
        return text


def input_commitments(thinking_block_hash: str | None, card: Any, conscience_values: Any,
                      context: Sequence[Mapping[str, Any]], model_version: str,
                      prompt_template_version: str = PROMPT_TEMPLATE_VERSION, *,
                      det: Callable[[Any], str] = det_json) -> dict[str, str]:
    """The certificate's ``input_commitments``: hashes of every input of the analysis.
    ``combined_commitment`` is the checkpoint's input commitment (chain and signature).
    ``det`` writes the card and the conscience values (a ``RecurringJson``)."""
    parts = (det(card), det(conscience_values), det_json(list(context)),
             det_json(model_version), det_json(prompt_template_version))
    return {"thinking_block_hash": thinking_block_hash or "",
            "card_hash": sha256_hex(parts[0]), "values_hash": sha256_hex(parts[1]),
            "context_hash": sha256_hex(parts[2]), "model_version": model_version,
            "combined_commitment": sha256_hex("|".join(parts))}


def chain_hash(prev_chain_hash: str | None, checkpoint_id: str, verdict: str,
               thinking_block_hash: str | None, input_commitment: str,
               timestamp: str) -> str:
    return sha256_hex(f"{prev_chain_hash or GENESIS}|{checkpoint_id}|{verdict}|"
                      f"{thinking_block_hash or ''}|{input_commitment}|{timestamp}")


def leaf_hash(checkpoint_id: str, verdict: str, thinking_block_hash: str | None,
              chain: str, timestamp: str) -> str:
    return sha256_hex(f"{checkpoint_id}|{verdict}|{thinking_block_hash or ''}|{chain}|"
                      f"{timestamp}")


def node_hash(left: str, right: str) -> str:
    return sha256_hex(left + right)


def merkle_root(leaves: Sequence[str]) -> str:
    """The root of the leaves (the last node of an odd level paired with itself); ``""``
    for no leaves."""
    if not leaves:
        return ""
    level = list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def tree_depth(leaf_count: int) -> int:
    return 0 if leaf_count <= 1 else math.ceil(math.log2(leaf_count))


def inclusion_proof(leaves: Sequence[str], index: int,
                    ) -> tuple[list[dict[str, str]], str]:
    """The siblings from leaf ``index`` to the root (``position``: where the sibling sits)
    and the root."""
    if not 0 <= index < len(leaves):
        raise AttestationError(f"leaf {index} is not in a tree of {len(leaves)}")
    proof: list[dict[str, str]] = []
    level, at = list(leaves), index
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        if at % 2:
            proof.append({"hash": level[at - 1], "position": "left"})
        else:
            proof.append({"hash": level[at + 1], "position": "right"})
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        at //= 2
    return proof, level[0]


def root_from_proof(leaf: str, proof: Sequence[Mapping[str, Any]]) -> str:
    current = leaf
    for step in proof:
        sibling = str(step.get("hash"))
        current = node_hash(sibling, current) if step.get("position") == "left" \
            else node_hash(current, sibling)
    return current


# -- signing -----------------------------------------------------------------------------

def signed_payload(agent_id: str, chain: str, checkpoint_id: str, input_commitment: str,
                   thinking_block_hash: str | None, timestamp: str, verdict: str) -> str:
    return det_json({"agent_id": agent_id, "chain_hash": chain,
                     "checkpoint_id": checkpoint_id, "input_commitment": input_commitment,
                     "thinking_block_hash": thinking_block_hash or "",
                     "timestamp": timestamp, "verdict": verdict})


def public_key_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def key_id_for(public_hex: str) -> str:
    """A key's id: ``key-`` and the first 16 hex digits of the SHA-256 of its raw public
    key, so every replica holding one key names it alike."""
    return "key-" + hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """The deployment's Ed25519 key: signs, never leaves the process."""

    private: Ed25519PrivateKey

    @cached_property
    def public_hex(self) -> str:
        return public_key_hex(self.private.public_key())

    @cached_property
    def key_id(self) -> str:
        return key_id_for(self.public_hex)

    def sign(self, payload: str) -> str:
        return base64.b64encode(self.private.sign(payload.encode("utf-8"))).decode("ascii")

    def __repr__(self) -> str:
        return f"SigningKey({self.key_id})"


def signature_valid(public_hex: str, payload: str, value: str) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        key.verify(base64.b64decode(value, validate=True), payload.encode("utf-8"))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# -- one checkpoint's attestation -----------------------------------------------------------

@dataclass(frozen=True)
class Link:
    """A checkpoint's place in its session's chain. ``segment`` names the chain within the
    session: the id of its first checkpoint (a session's chain restarts, as a new
    segment, when its head could not be read: docs/attestation.md)."""

    chain_hash: str
    prev_chain_hash: str | None
    position: int
    segment: str


def next_link(head: Mapping[str, Any] | None, checkpoint_id: str, verdict: str,
              thinking_block_hash: str | None, input_commitment: str,
              timestamp: str) -> Link:
    """The link after ``head`` (``{hash, position, segment}`` or None for a new chain)."""
    if head and isinstance(head.get("hash"), str) and isinstance(head.get("position"), int):
        prev, position = str(head["hash"]), int(head["position"]) + 1
        segment = str(head.get("segment") or checkpoint_id)
    else:
        prev, position, segment = None, 0, checkpoint_id
    return Link(chain_hash(prev, checkpoint_id, verdict, thinking_block_hash,
                           input_commitment, timestamp), prev, position, segment)


def link_head(link: Link) -> dict[str, Any]:
    """What the session state keeps of the chain: its head."""
    return {"hash": link.chain_hash, "position": link.position, "segment": link.segment}


def attestation_row(key: SigningKey, *, agent_id: str, session_id: str, checkpoint_id: str,
                    verdict: str, thinking_block_hash: str | None,
                    commitments: Mapping[str, str], link: Link, created_at: int,
                    card_id: str | None = None,
                    metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint's stored attestation (``checkpoints.ATTESTATION_FIELDS`` and the
    signer's ``public_key``): its link, leaf and signature."""
    timestamp = iso_timestamp(created_at)
    commitment = commitments["combined_commitment"]
    payload = signed_payload(agent_id, link.chain_hash, checkpoint_id, commitment,
                             thinking_block_hash, timestamp, verdict)
    metadata = metadata or {}
    confidence = metadata.get("confidence", metadata.get("extraction_confidence"))
    return {
        "checkpoint_id": checkpoint_id, "agent_id": agent_id, "session_id": session_id,
        "chain_segment": link.segment, "chain_position": link.position,
        "chain_hash": link.chain_hash, "prev_chain_hash": link.prev_chain_hash,
        "leaf_hash": leaf_hash(checkpoint_id, verdict, thinking_block_hash, link.chain_hash,
                               timestamp),
        "input_commitments": json.dumps(dict(commitments), sort_keys=True,
                                        separators=(",", ":")),
        "card_id": card_id,
        "confidence": confidence if isinstance(confidence, (int, float)) else None,
        "analysis_model": str(metadata.get("analysis_model") or ""),
        "analysis_duration_ms": metadata.get("analysis_duration_ms"),
        "key_id": key.key_id, "public_key": key.public_hex, "signature": key.sign(payload),
        "created_at": created_at}


def certificate_id(checkpoint_id: str) -> str:
    """``cert-`` and 8 characters, the same every time a checkpoint's certificate is
    issued."""
    return "cert-" + hashlib.sha256(checkpoint_id.encode("utf-8")).hexdigest()[:8]


def certificate(*, checkpoint: Mapping[str, Any], attestation: Mapping[str, Any],
                merkle: Mapping[str, Any] | None, base_url: str = "") -> dict[str, Any]:
    """An ``IntegrityCertificate`` from a stored checkpoint (``id, agent_id, session_id,
    verdict, concerns, reasoning_summary, thinking_block_hash, created_at``) and its
    attestation row (``card_id, input_commitments, chain_hash, prev_chain_hash,
    chain_position, signature, key_id, confidence, analysis_model,
    analysis_duration_ms``)."""
    cid = str(checkpoint["id"])
    timestamp = iso_timestamp(int(checkpoint["created_at"]))
    commitments = dict(attestation["input_commitments"])
    payload = signed_payload(str(checkpoint["agent_id"]), str(attestation["chain_hash"]), cid,
                             commitments["combined_commitment"],
                             checkpoint.get("thinking_block_hash"), timestamp,
                             str(checkpoint["verdict"]))
    concerns = [{k: c.get(k) for k in ("category", "severity", "description")}
                for c in checkpoint.get("concerns") or [] if isinstance(c, Mapping)]
    return {
        "@context": CONTEXT, "type": CERTIFICATE_TYPE, "version": CERTIFICATE_VERSION,
        "certificate_id": certificate_id(cid), "issued_at": timestamp,
        "subject": {"checkpoint_id": cid, "agent_id": checkpoint["agent_id"],
                    "session_id": checkpoint["session_id"],
                    "card_id": attestation.get("card_id") or ""},
        "claims": {"verdict": checkpoint["verdict"], "concerns": concerns,
                   "confidence": attestation.get("confidence"),
                   "reasoning_summary": checkpoint.get("reasoning_summary") or "",
                   "analysis_model": attestation.get("analysis_model") or "",
                   "analysis_duration_ms": attestation.get("analysis_duration_ms")},
        "input_commitments": commitments,
        "proofs": {
            "signature": {"algorithm": ALGORITHM, "key_id": attestation["key_id"],
                          "value": attestation["signature"], "signed_payload": payload},
            "chain": {"chain_hash": attestation["chain_hash"],
                      "prev_chain_hash": attestation.get("prev_chain_hash"),
                      "position": attestation["chain_position"]},
            "merkle": dict(merkle) if merkle is not None else None,
            "verdict_derivation": None},
        "verification": {
            "keys_url": f"{base_url}/v1/keys",
            "certificate_url": f"{base_url}/v1/checkpoints/{cid}/certificate",
            "verify_url": f"{base_url}/v1/verify"},
    }


# -- verification ------------------------------------------------------------------------

def _check(valid: bool, details: str) -> dict[str, Any]:
    return {"valid": valid, "details": details}


def verify_certificate(cert: Any, keys: Mapping[str, str],
                       expected_root: str | None = None) -> dict[str, Any]:
    """Check a certificate with nothing but public keys (``key_id`` -> hex): the signature
    over the payload rebuilt from the certificate's own fields, the chain link recomputed,
    the Merkle proof walked to its root (and to ``expected_root`` when given).
    ``{valid, checks: {signature, chain, merkle}, details}``."""
    try:
        subject, claims = cert["subject"], cert["claims"]
        commitments, proofs = cert["input_commitments"], cert["proofs"]
        sig, chain = proofs["signature"], proofs["chain"]
        merkle = proofs.get("merkle")
        cid, timestamp = str(subject["checkpoint_id"]), str(cert["issued_at"])
        verdict, thinking = str(claims["verdict"]), commitments.get("thinking_block_hash")
        commitment = str(commitments["combined_commitment"])
        chain_value = str(chain["chain_hash"])
    except (KeyError, TypeError) as e:
        return {"valid": False, "checks": {"signature": _check(False, "malformed"),
                                           "chain": _check(False, "malformed"),
                                           "merkle": None},
                "details": f"Not an IntegrityCertificate: missing {e}"}
    if cert.get("@context") != CONTEXT or cert.get("type") != CERTIFICATE_TYPE or \
            cert.get("version") != CERTIFICATE_VERSION:
        header = _check(False, "not an AIP IntegrityCertificate 1.0.0")
        return {"valid": False, "checks": {"signature": header, "chain": header,
                                           "merkle": None}, "details": header["details"]}
    payload = signed_payload(str(subject.get("agent_id")), chain_value, cid, commitment,
                             thinking, timestamp, verdict)
    public = keys.get(str(sig.get("key_id")))
    if public is None:
        signature = _check(False, f"unknown key {sig.get('key_id')}")
    elif payload != sig.get("signed_payload"):
        signature = _check(False, "the signed payload does not match the certificate")
    elif sig.get("algorithm") != ALGORITHM or \
            not signature_valid(public, payload, str(sig.get("value"))):
        signature = _check(False, "the Ed25519 signature does not verify")
    else:
        signature = _check(True, f"signed by {sig['key_id']}")
    recomputed = chain_hash(chain.get("prev_chain_hash"), cid, verdict, thinking, commitment,
                            timestamp)
    chain_check = _check(recomputed == chain_value,
                         "chain hash recomputed" if recomputed == chain_value
                         else "the chain hash does not match the certificate's fields")
    merkle_check = None
    if isinstance(merkle, Mapping):
        leaf = leaf_hash(cid, verdict, thinking, chain_value, timestamp)
        root = root_from_proof(leaf, merkle.get("inclusion_proof") or [])
        if leaf != merkle.get("leaf_hash"):
            merkle_check = _check(False, "the leaf hash does not match the certificate")
        elif root != merkle.get("root"):
            merkle_check = _check(False, "the inclusion proof does not lead to the root")
        elif expected_root is not None and root != expected_root:
            merkle_check = _check(False, "the root is not the expected root")
        else:
            merkle_check = _check(True, f"leaf {merkle.get('leaf_index')} of "
                                        f"{merkle.get('tree_size')} under the root")
    checks = {"signature": signature, "chain": chain_check, "merkle": merkle_check}
    valid = all(c["valid"] for c in checks.values() if c is not None)
    failed = [f"{name}: {c['details']}" for name, c in checks.items()
              if c is not None and not c["valid"]]
    return {"valid": valid, "checks": checks,
            "details": "; ".join(failed) if failed else f"certificate of {cid} verifies"}


def keys_from_document(document: Any) -> dict[str, str]:
    """``key_id`` -> public key hex from a ``GET /v1/keys`` answer."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise AttestationError("a keys document is {\"keys\": [{key_id, public_key}, …]}")
    found = {}
    for item in document["keys"]:
        if not isinstance(item, Mapping) or not isinstance(item.get("key_id"), str) \
                or not isinstance(item.get("public_key"), str):
            raise AttestationError("each key needs a key_id and a public_key (hex)")
        found[item["key_id"]] = item["public_key"]
    return found

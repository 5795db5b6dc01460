"""The public attestation operations (a mixin of ``ApiHandlers``): published keys,
certificates, inclusion proofs, Merkle roots and verification (docs/attestation.md).

Merkle trees are rebuilt on the database thread pool (``integrity.ledger``); a
certificate sent to ``POST /v1/verify`` is checked here, on the reactor, which is bounded:
its inclusion proof may have at most ``MAX_PROOF_STEPS`` steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import inlineCallbacks

from mnemomd.api.queries import ManagementStore
from mnemomd.api.routes import ApiError
from mnemomd.integrity.attestation import verify_certificate
from mnemomd.integrity.ledger import AttestationLedger

#: A tree of 2**64 leaves has a proof of 64 steps: a longer one is not a proof.
MAX_PROOF_STEPS = 64


def proof_steps(certificate: Mapping[str, Any]) -> int:
    proofs = certificate.get("proofs")
    merkle = proofs.get("merkle") if isinstance(proofs, Mapping) else None
    steps = merkle.get("inclusion_proof") if isinstance(merkle, Mapping) else None
    return len(steps) if isinstance(steps, list) else 0


class AttestationHandlers:
    """Needs ``self._attestation`` and ``self._store`` (``ApiHandlers``)."""

    _attestation: AttestationLedger | None
    _store: ManagementStore

    def _ledger(self) -> AttestationLedger:
        if self._attestation is None:
            raise ApiError(503, "attestation is not available here", "unavailable")
        return self._attestation

    @inlineCallbacks
    def list_keys(self, call: Any) -> Any:
        keys = yield self._ledger().keys()
        return 200, {"keys": keys}

    @inlineCallbacks
    def get_certificate(self, call: Any) -> Any:
        checkpoint_id = call.params["checkpoint_id"]
        found = yield self._ledger().certificate(checkpoint_id)
        if found is None:
            raise ApiError(404, f"No attested checkpoint {checkpoint_id}", "not_found")
        return 200, found

    @inlineCallbacks
    def get_inclusion_proof(self, call: Any) -> Any:
        checkpoint_id = call.params["checkpoint_id"]
        found = yield self._ledger().inclusion_proof(checkpoint_id)
        if found is None:
            raise ApiError(404, f"No attested checkpoint {checkpoint_id}", "not_found")
        return 200, found

    @inlineCallbacks
    def get_merkle_root(self, call: Any) -> Any:
        agent_id = call.params["agent_id"]
        ledger = self._ledger()
        agent = yield self._store.agent(agent_id)
        if agent is None:
            raise ApiError(404, f"No agent {agent_id}", "not_found")
        root = yield ledger.merkle_root(agent_id)
        return 200, root

    @inlineCallbacks
    def verify_certificate(self, call: Any) -> Any:
        body = call.body
        if proof_steps(body.certificate) > MAX_PROOF_STEPS:
            raise ApiError(400, f"certificate.proofs.merkle.inclusion_proof has more than "
                                f"{MAX_PROOF_STEPS} steps")
        keys = yield self._ledger().keys()
        return 200, verify_certificate(body.certificate,
                                       {k["key_id"]: k["public_key"] for k in keys},
                                       body.expected_root)

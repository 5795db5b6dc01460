"""Attested checkpoints written straight to a database, as the pipeline stores them."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from mnemomd.integrity import attestation as a
from mnemomd.integrity.checkpoints import CheckpointRecord, checkpoint_write, write_checkpoints
from mnemomd.storage.database import Database


def attested(key: a.SigningKey, agent_id: str, session_id: str, head: dict[str, Any] | None,
             checkpoint_id: str, verdict: str, created_at: int,
             ) -> tuple[CheckpointRecord, dict[str, Any]]:
    """A checkpoint with its attestation row, and the chain's new head."""
    thinking = a.sha256_hex(f"thinking of {checkpoint_id}")
    commitments = a.input_commitments(thinking, {"card_id": "ac-1"}, [], [], "fake-model")
    link = a.next_link(head, checkpoint_id, verdict, thinking,
                       commitments["combined_commitment"], a.iso_timestamp(created_at))
    row = a.attestation_row(key, agent_id=agent_id, session_id=session_id,
                            checkpoint_id=checkpoint_id, verdict=verdict,
                            thinking_block_hash=thinking, commitments=commitments, link=link,
                            created_at=created_at, card_id="ac-1",
                            metadata={"analysis_model": "fake-model", "confidence": 0.9})
    record = CheckpointRecord(
        id=checkpoint_id, agent_id=agent_id, session_id=session_id, provider="anthropic",
        model="m", verdict=verdict, concerns=[], reasoning_summary="fine",
        conscience_context=None, window_position=None, analysis_metadata=None,
        thinking_block_hash=thinking, synthetic=False, synthetic_reason=None,
        created_at=created_at, attestation=row)
    return record, a.link_head(link)


@inlineCallbacks
def write_session(db: Database, key: a.SigningKey, agent_id: str, session_id: str,
                  count: int, start_ms: int, prefix: str = "ic") -> Any:
    """``count`` chained checkpoints one second apart; fires with their ids."""
    head, records = None, []
    for i in range(count):
        record, head = attested(key, agent_id, session_id, head, f"{prefix}-{session_id}-{i}",
                                ("clear", "review_needed")[i % 2], start_ms + i * 1000)
        records.append(record)
    yield db.run_interaction("t", write_checkpoints, [checkpoint_write(r) for r in records])
    return [r.id for r in records]

"""Integrity checkpoints and drift alerts: derived analysis only, never the thinking.

A checkpoint row holds the verdict, the concerns (with evidence excerpts already capped
or removed by the analyzer), the analysis context and a SHA-256 of the thinking. A drift
alert is unique per (agent, streak): two replicas that see the same streak store one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from mnemomd.storage.database import Cursor, Database
from mnemomd.storage.traces import link_stored_traces
from mnemomd.storage.writes import Write, insert_many
from mnemomd.webhooks.store import EVENT_TYPES, enqueue_event, enqueue_events

CHECKPOINT_FIELDS = (
    "id", "agent_id", "session_id", "provider", "model", "verdict", "concerns",
    "reasoning_summary", "conscience_context", "window_position", "analysis_metadata",
    "thinking_block_hash", "synthetic", "synthetic_reason", "trace_id", "created_at",
    "output_block_hash")
CHECKPOINT_COLUMNS = ", ".join(CHECKPOINT_FIELDS)
DRIFT_ALERT_FIELDS = ("id", "agent_id", "session_id", "source", "severity", "alert",
                      "streak_key", "created_at")
#: A checkpoint's attestation row (``attestation.py``), stored with it in one transaction.
ATTESTATION_FIELDS = (
    "checkpoint_id", "agent_id", "session_id", "chain_segment", "chain_position",
    "chain_hash", "prev_chain_hash", "leaf_hash", "input_commitments", "card_id",
    "confidence", "analysis_model", "analysis_duration_ms", "key_id", "signature",
    "created_at")
#: The write-queue kinds of this module (``storage.writes``).
CHECKPOINT_WRITE, DRIFT_ALERT_WRITE = "checkpoint", "drift_alert"


@dataclass(frozen=True)
class CheckpointRecord:
    id: str
    agent_id: str
    session_id: str
    provider: str
    model: str | None
    verdict: str
    concerns: list[dict[str, Any]]
    reasoning_summary: str | None
    conscience_context: dict[str, Any] | None
    window_position: dict[str, Any] | None
    analysis_metadata: dict[str, Any] | None
    thinking_block_hash: str | None
    synthetic: bool
    synthetic_reason: str | None
    created_at: int
    trace_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: SHA-256 of the output block when the output was analysed (never the output).
    output_block_hash: str | None = None
    #: The attestation row (``ATTESTATION_FIELDS``, JSON values), or None when off.
    attestation: dict[str, Any] | None = None


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _load(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def row_to_checkpoint(row: tuple[Any, ...]) -> CheckpointRecord:
    (id_, agent_id, session_id, provider, model, verdict, concerns, summary, context, window,
     metadata, thinking_hash, synthetic, reason, trace_id, created_at, output_hash) = row
    return CheckpointRecord(
        id=id_, agent_id=agent_id, session_id=session_id, provider=provider, model=model,
        verdict=verdict, concerns=_load(concerns) or [], reasoning_summary=summary,
        conscience_context=_load(context), window_position=_load(window),
        analysis_metadata=_load(metadata), thinking_block_hash=thinking_hash,
        synthetic=bool(synthetic), synthetic_reason=reason, trace_id=trace_id,
        created_at=int(created_at), output_block_hash=output_hash)


def checkpoint_event_data(record: CheckpointRecord) -> dict[str, Any]:
    """What a ``verdict.*`` webhook says about a checkpoint: derived analysis only."""
    return {"checkpoint_id": record.id, "session_id": record.session_id,
            "provider": record.provider, "model": record.model, "verdict": record.verdict,
            "synthetic": record.synthetic,
            "concerns": [{k: c.get(k) for k in ("category", "severity", "description")}
                         for c in record.concerns if isinstance(c, dict)]}


def checkpoint_write(record: CheckpointRecord) -> Write:
    """The checkpoint as a queued write: the row's columns, JSON already encoded."""
    return Write(CHECKPOINT_WRITE, record.id, {
        "id": record.id, "agent_id": record.agent_id, "session_id": record.session_id,
        "provider": record.provider, "model": record.model, "verdict": record.verdict,
        "concerns": _dump(record.concerns), "reasoning_summary": record.reasoning_summary,
        "conscience_context": _dump(record.conscience_context),
        "window_position": _dump(record.window_position),
        "analysis_metadata": _dump(record.analysis_metadata),
        "thinking_block_hash": record.thinking_block_hash, "synthetic": record.synthetic,
        "synthetic_reason": record.synthetic_reason, "trace_id": record.trace_id,
        "created_at": record.created_at, "output_block_hash": record.output_block_hash,
        "attestation": record.attestation})


def write_checkpoints(cursor: Cursor, writes: list[Write]) -> list[str]:
    """Insert queued checkpoints (a batch, one statement per ~1,700 rows) and queue the
    ``verdict.*`` webhook events of those that were new; returns the delivery ids.
    A checkpoint already stored (a replayed spool) queues nothing again."""
    rows = [tuple(w.row.get(f) for f in CHECKPOINT_FIELDS) for w in writes]
    inserted = set(insert_many(cursor, "integrity_checkpoints", CHECKPOINT_FIELDS,
                               [_typed(r) for r in rows], returning="id"))
    link_stored_traces(cursor, sorted(inserted))
    # In the order given: an agent's Merkle leaves are in the order they were stored.
    insert_many(cursor, "checkpoint_attestations", ATTESTATION_FIELDS, [
        tuple(w.row["attestation"].get(f) for f in ATTESTATION_FIELDS)
        for w in writes if isinstance(w.row.get("attestation"), dict)])
    # Every key that signed a stored checkpoint is published (GET /v1/keys), whichever
    # replica holds it.
    keys = {(a["key_id"], a["public_key"]): a["created_at"] for a in (
        w.row.get("attestation") for w in writes) if isinstance(a, dict)}
    insert_many(cursor, "signing_keys", ("key_id", "public_key", "algorithm", "created_at"),
                [(key_id, public, "Ed25519", at) for (key_id, public), at in keys.items()])
    events = []
    for write in writes:
        row = write.row
        if row["id"] not in inserted or f"verdict.{row['verdict']}" not in EVENT_TYPES:
            continue
        inserted.discard(row["id"])
        events.append((f"verdict.{row['verdict']}", row["agent_id"],
                       checkpoint_event_data(row_to_checkpoint(
                           tuple(row.get(f) for f in CHECKPOINT_FIELDS))), row["created_at"]))
    return enqueue_events(cursor, events)


def _typed(row: tuple[Any, ...]) -> tuple[Any, ...]:
    synthetic = CHECKPOINT_FIELDS.index("synthetic")
    return row[:synthetic] + (bool(row[synthetic]),) + row[synthetic + 1:]


def drift_alert_write(alert_id: str, agent_id: str, session_id: str | None,
                      severity: str | None, alert: dict[str, Any], streak_key: str,
                      created_at: int, source: str = "aip") -> Write:
    """A drift alert as a queued write; ``streak_key`` as in ``insert_drift_alert``."""
    return Write(DRIFT_ALERT_WRITE, alert_id, {
        "id": alert_id, "agent_id": agent_id, "session_id": session_id, "source": source,
        "severity": severity, "alert": _dump(alert), "streak_key": streak_key,
        "created_at": created_at})


def write_drift_alerts(cursor: Cursor, writes: list[Write]) -> list[dict[str, Any]]:
    """Insert queued drift alerts, one per streak, and queue ``drift.detected`` for each
    that was new; returns the rows stored now."""
    rows = [tuple(w.row.get(f) for f in DRIFT_ALERT_FIELDS) for w in writes]
    stored = []
    for row, write in zip(rows, writes, strict=True):
        # One at a time: two alerts of one batch may share a streak, and only the first
        # of them may queue the event.
        if insert_many(cursor, "drift_alerts", DRIFT_ALERT_FIELDS, [row], returning="id"):
            stored.append(write.row)
    enqueue_events(cursor, [
        ("drift.detected", r["agent_id"],
         {"alert_id": r["id"], "source": r["source"], "session_id": r["session_id"],
          "severity": r["severity"], "alert": _load(r["alert"])}, r["created_at"])
        for r in stored])
    return stored


class CheckpointStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def insert(self, record: CheckpointRecord) -> Deferred[list[str]]:
        """Store a checkpoint and queue its ``verdict.*`` webhook event; inserting the same
        id twice is a no-op (retries are safe). Fires with the queued delivery ids."""
        def write(cursor: Cursor) -> list[str]:
            inserted = cursor.execute(
                f"INSERT INTO integrity_checkpoints ({CHECKPOINT_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (record.id, record.agent_id, record.session_id, record.provider, record.model,
                 record.verdict, _dump(record.concerns), record.reasoning_summary,
                 _dump(record.conscience_context), _dump(record.window_position),
                 _dump(record.analysis_metadata), record.thinking_block_hash,
                 record.synthetic, record.synthetic_reason, record.trace_id,
                 record.created_at, record.output_block_hash)).rowcount
            if inserted:
                link_stored_traces(cursor, [record.id])
            event = f"verdict.{record.verdict}"
            if not inserted or event not in EVENT_TYPES:
                return []
            return enqueue_event(cursor, event, record.agent_id,
                                 checkpoint_event_data(record), record.created_at)

        return self._db.run_interaction("insert_checkpoint", write)

    def get(self, checkpoint_id: str) -> Deferred[CheckpointRecord | None]:
        def read(cursor: Cursor) -> CheckpointRecord | None:
            row = cursor.execute(
                f"SELECT {CHECKPOINT_COLUMNS} FROM integrity_checkpoints WHERE id = ?",
                (checkpoint_id,)).fetchone()
            return row_to_checkpoint(row) if row else None

        return self._db.run_interaction("get_checkpoint", read)

    def list_for_agent(self, agent_id: str, limit: int = 50, offset: int = 0,
                       verdict: str | None = None,
                       session_id: str | None = None) -> Deferred[list[CheckpointRecord]]:
        where, params = ["agent_id = ?"], [agent_id]
        if verdict is not None:
            where.append("verdict = ?")
            params.append(verdict)
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        sql = (f"SELECT {CHECKPOINT_COLUMNS} FROM integrity_checkpoints WHERE "
               f"{' AND '.join(where)} ORDER BY created_at DESC, id LIMIT ? OFFSET ?")

        def read(cursor: Cursor) -> list[CheckpointRecord]:
            rows = cursor.execute(sql, (*params, limit, offset)).fetchall()
            return [row_to_checkpoint(r) for r in rows]

        return self._db.run_interaction("list_checkpoints", read)

    def insert_drift_alert(self, alert_id: str, agent_id: str, session_id: str | None,
                           severity: str | None, alert: dict[str, Any], streak_key: str,
                           created_at: int, source: str = "aip") -> Deferred[bool]:
        """True when this call stored the alert (and queued ``drift.detected``), False
        when the streak already had one.

        ``streak_key`` must name the streak the same way on every replica (for AIP drift:
        the session and the checkpoint that started the streak, see
        ``window.streak_key``), so that replicas raising an alert for one streak store
        one row; the alert's own id differs per replica and cannot serve.
        """
        def write(cursor: Cursor) -> bool:
            inserted = cursor.execute(
                "INSERT INTO drift_alerts (id, agent_id, session_id, source, severity, alert, "
                "streak_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (alert_id, agent_id, session_id, source, severity, _dump(alert), streak_key,
                 created_at)).rowcount
            if inserted == 1:
                enqueue_event(cursor, "drift.detected", agent_id,
                              {"alert_id": alert_id, "source": source,
                               "session_id": session_id, "severity": severity,
                               "alert": alert}, created_at)
            return inserted == 1

        return self._db.run_interaction("insert_drift_alert", write)

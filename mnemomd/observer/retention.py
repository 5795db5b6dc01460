"""The ``retention`` job: storage stays bounded (SPEC §8.2).

Checkpoints, traces and webhook delivery logs older than ``RETENTION_DAYS`` are deleted,
and outbox rows past their TTL are deleted whatever state they are in: the outbox is the
one place excerpts of model output touch storage, and they must never outlive the TTL.
A deleted checkpoint's attestation row is kept and marked ``pruned`` (docs/attestation.md).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mnemomd.storage.database import Cursor, Database

log = Logger()

DAY_MS = 86_400_000

#: table -> the column compared with the retention cut-off.
RETAINED = (("integrity_checkpoints", "created_at"), ("ap_traces", "created_at"),
            ("webhook_deliveries", "created_at"), ("policy_violations", "created_at"))


def _purge(cursor: Cursor, cutoff_ms: int, now_ms: int) -> dict[str, int]:
    # Attestation rows stay (newer chains and Merkle trees need them), marked as pruned
    # by retention, so an audit tells them from checkpoints deleted behind its back.
    cursor.execute("UPDATE checkpoint_attestations SET pruned = TRUE WHERE NOT pruned AND "
                   "checkpoint_id IN (SELECT id FROM integrity_checkpoints "
                   "WHERE created_at < ?)", (cutoff_ms,))
    deleted = {}
    for table, column in RETAINED:
        deleted[table] = cursor.execute(f"DELETE FROM {table} WHERE {column} < ?",
                                        (cutoff_ms,)).rowcount
    deleted["trace_outbox"] = cursor.execute(
        "DELETE FROM trace_outbox WHERE expires_at <= ?", (now_ms,)).rowcount
    return deleted


def purge(db: Database, now_ms: int, retention_days: int) -> Deferred[dict[str, int]]:
    """Delete what is past retention; fires with the number of rows per table."""
    return db.run_interaction("retention", _purge, now_ms - retention_days * DAY_MS, now_ms)


def retention_run(clock: IReactorTime, db: Database, retention_days: int) -> Deferred[Any]:
    def report(deleted: dict[str, int]) -> dict[str, int]:
        if any(deleted.values()):
            log.info("Retention removed {summary}", summary=", ".join(
                f"{n} from {t}" for t, n in deleted.items() if n))
        return deleted

    return purge(db, int(clock.seconds() * 1000), retention_days).addCallback(report)

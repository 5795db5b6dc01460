"""Webhook endpoints and their durable deliveries (SPEC §7).

An event becomes one delivery row per subscribed endpoint, written in the same transaction
as the change it reports (a containment change, a checkpoint, a drift alert, a nudge): if
the change is stored, its deliveries are too, and they survive restarts. Rows are claimed
with a lease before sending, so several processes never send the same attempt twice.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred

from mnemomd.storage.database import Cursor, Database

EVENT_TYPES = (
    "verdict.clear", "verdict.review_needed", "verdict.boundary_violation", "drift.detected",
    "agent.paused", "agent.resumed", "agent.killed", "nudge.created", "policy.violation",
    "webhook.test",
)
#: Subscribing to ``*`` takes every event but these (they must be asked for by name).
OPT_IN_EVENTS = ("verdict.clear", "webhook.test")

ENDPOINT_FIELDS = ("id", "url", "description", "event_types", "secret", "allow_http",
                   "enabled", "consecutive_failures", "disabled_reason", "created_at",
                   "updated_at")
DELIVERY_FIELDS = ("id", "endpoint_id", "event_id", "event_type", "agent_id", "payload",
                   "status", "attempts", "next_attempt_at", "last_status_code", "last_error",
                   "created_at", "delivered_at")
ENDPOINT_COLUMNS = ", ".join(ENDPOINT_FIELDS)
DELIVERY_COLUMNS = ", ".join(DELIVERY_FIELDS)
#: A delivery joined with its endpoint, in one row.
CLAIMED_COLUMNS = ", ".join([f"d.{c}" for c in DELIVERY_FIELDS]
                            + [f"e.{c}" for c in ENDPOINT_FIELDS])


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    description: str | None
    event_types: list[str]
    secret: str
    allow_http: bool
    enabled: bool
    consecutive_failures: int
    disabled_reason: str | None
    created_at: int
    updated_at: int

    def public(self) -> dict[str, Any]:
        """The endpoint as shown to operators: everything but the secret."""
        return {"id": self.id, "url": self.url, "description": self.description,
                "event_types": self.event_types, "allow_http": self.allow_http,
                "enabled": self.enabled, "consecutive_failures": self.consecutive_failures,
                "disabled_reason": self.disabled_reason, "created_at": self.created_at,
                "updated_at": self.updated_at}


@dataclass(frozen=True)
class Delivery:
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    agent_id: str | None
    payload: str
    status: str
    attempts: int
    next_attempt_at: int | None
    last_status_code: int | None
    last_error: str | None
    created_at: int
    delivered_at: int | None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "endpoint_id": self.endpoint_id, "event_id": self.event_id,
                "event_type": self.event_type, "agent_id": self.agent_id,
                "status": self.status, "attempts": self.attempts,
                "next_attempt_at": self.next_attempt_at,
                "last_status_code": self.last_status_code, "last_error": self.last_error,
                "created_at": self.created_at, "delivered_at": self.delivered_at}


def row_to_endpoint(row: tuple[Any, ...]) -> Endpoint:
    (id_, url, description, event_types, secret, allow_http, enabled, failures, reason,
     created_at, updated_at) = row
    return Endpoint(id_, url, description, json.loads(event_types), secret, bool(allow_http),
                    bool(enabled), int(failures), reason, int(created_at), int(updated_at))


def row_to_delivery(row: tuple[Any, ...]) -> Delivery:
    (id_, endpoint_id, event_id, event_type, agent_id, payload, status, attempts, next_at,
     code, error, created_at, delivered_at) = row
    return Delivery(id_, endpoint_id, event_id, event_type, agent_id, payload, status,
                    int(attempts), None if next_at is None else int(next_at), code, error,
                    int(created_at), None if delivered_at is None else int(delivered_at))


def subscribed(event_types: list[str], event_type: str) -> bool:
    if event_type in event_types:
        return True
    return "*" in event_types and event_type not in OPT_IN_EVENTS


def event_body(event_id: str, event_type: str, agent_id: str | None, data: dict[str, Any],
               now_ms: int) -> str:
    """The JSON body every receiver gets for an event (the exact bytes that are signed)."""
    created = datetime.fromtimestamp(now_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"event_id": event_id, "event_type": event_type, "created_at": created,
                       "agent_id": agent_id, "data": data}, separators=(",", ":"),
                      sort_keys=True)


def enqueue_event(cursor: Cursor, event_type: str, agent_id: str | None,
                  data: dict[str, Any], now_ms: int, endpoint_id: str | None = None,
                  ) -> list[str]:
    """Queue ``event_type`` for every enabled endpoint subscribed to it (or only for
    ``endpoint_id``), inside the caller's transaction. Returns the delivery ids."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type}")
    sql = "SELECT id, event_types FROM webhook_endpoints WHERE enabled = ?"
    params: tuple[Any, ...] = (True,)
    if endpoint_id is not None:
        sql += " AND id = ?"
        params += (endpoint_id,)
    targets = [endpoint for endpoint, types in cursor.execute(sql, params).fetchall()
               if endpoint_id is not None or subscribed(json.loads(types), event_type)]
    if not targets:
        return []
    event_id = f"evt-{uuid.uuid4().hex}"
    payload = event_body(event_id, event_type, agent_id, data, now_ms)
    ids = [f"whd-{uuid.uuid4().hex}" for _ in targets]
    cursor.executemany(
        f"INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) VALUES "
        "(?, ?, ?, ?, ?, ?, 'pending', 0, ?, NULL, NULL, ?, NULL)",
        [(delivery_id, endpoint, event_id, event_type, agent_id, payload, now_ms, now_ms)
         for delivery_id, endpoint in zip(ids, targets, strict=True)])
    return ids


def enqueue_events(cursor: Cursor,
                   events: list[tuple[str, str | None, dict[str, Any], int]]) -> list[str]:
    """``enqueue_event`` for many events (type, agent, data, time) in one transaction: the
    endpoints are read once and the deliveries written in one statement."""
    if not events:
        return []
    endpoints = [(endpoint, json.loads(types)) for endpoint, types in cursor.execute(
        "SELECT id, event_types FROM webhook_endpoints WHERE enabled = ?", (True,)).fetchall()]
    rows = []
    for event_type, agent_id, data, now_ms in events:
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type}")
        targets = [e for e, types in endpoints if subscribed(types, event_type)]
        if not targets:
            continue
        event_id = f"evt-{uuid.uuid4().hex}"
        payload = event_body(event_id, event_type, agent_id, data, now_ms)
        rows += [(f"whd-{uuid.uuid4().hex}", endpoint, event_id, event_type, agent_id, payload,
                  now_ms, now_ms) for endpoint in targets]
    if rows:
        cursor.executemany(
            f"INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, 'pending', 0, ?, NULL, NULL, ?, NULL)", rows)
    return [row[0] for row in rows]


@dataclass(frozen=True)
class AttemptResult:
    """What one send attempt came to, decided by the delivery engine."""

    delivery_id: str
    endpoint_id: str
    #: ``delivered``, ``retry`` (at ``next_attempt_at``) or ``failed`` (final).
    outcome: str
    status_code: int | None
    error: str | None
    next_attempt_at: int | None
    now_ms: int


class WebhookStore:
    """Endpoints (registered by operators) and the delivery log."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- endpoints ----------------------------------------------------------------------

    def create_endpoint(self, url: str, event_types: list[str], secret: str, now_ms: int,
                        description: str | None = None,
                        allow_http: bool = False) -> Deferred[Endpoint]:
        endpoint_id = f"whk-{uuid.uuid4().hex}"

        def write(cursor: Cursor) -> Endpoint:
            cursor.execute(
                f"INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, 0, NULL, ?, ?)",
                (endpoint_id, url, description, json.dumps(event_types), secret, allow_http,
                 True, now_ms, now_ms))
            return _endpoint(cursor, endpoint_id)  # type: ignore[return-value]

        return self._db.run_interaction("create_webhook_endpoint", write)

    def endpoint(self, endpoint_id: str) -> Deferred[Endpoint | None]:
        return self._db.run_interaction("get_webhook_endpoint", _endpoint, endpoint_id)

    def endpoints(self, limit: int = 100, offset: int = 0,
                  ) -> Deferred[tuple[list[Endpoint], int]]:
        def read(cursor: Cursor) -> tuple[list[Endpoint], int]:
            total = cursor.execute("SELECT COUNT(*) FROM webhook_endpoints").fetchone()
            rows = cursor.execute(
                f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id "
                "LIMIT ? OFFSET ?", (limit, offset)).fetchall()
            return [row_to_endpoint(r) for r in rows], int(total[0]) if total else 0

        return self._db.run_interaction("list_webhook_endpoints", read)

    def update_endpoint(self, endpoint_id: str, changes: dict[str, Any],
                        now_ms: int) -> Deferred[Endpoint | None]:
        """Change url, description, event_types, allow_http or enabled. Enabling an endpoint
        clears its failure count and the reason it was disabled."""
        allowed = {"url", "description", "event_types", "allow_http", "enabled"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot change {', '.join(sorted(unknown))}")

        def write(cursor: Cursor) -> Endpoint | None:
            values = {k: json.dumps(v) if k == "event_types" else v for k, v in changes.items()}
            if values.get("enabled") is True:
                values.update(consecutive_failures=0, disabled_reason=None)
            assignments = "".join(f"{name} = ?, " for name in values)
            cursor.execute(f"UPDATE webhook_endpoints SET {assignments}updated_at = ? "
                           "WHERE id = ?", (*values.values(), now_ms, endpoint_id))
            return _endpoint(cursor, endpoint_id)

        return self._db.run_interaction("update_webhook_endpoint", write)

    def rotate_secret(self, endpoint_id: str, secret: str,
                      now_ms: int) -> Deferred[Endpoint | None]:
        def write(cursor: Cursor) -> Endpoint | None:
            cursor.execute("UPDATE webhook_endpoints SET secret = ?, updated_at = ? "
                           "WHERE id = ?", (secret, now_ms, endpoint_id))
            return _endpoint(cursor, endpoint_id)

        return self._db.run_interaction("rotate_webhook_secret", write)

    def delete_endpoint(self, endpoint_id: str) -> Deferred[bool]:
        def write(cursor: Cursor) -> bool:
            cursor.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ?",
                           (endpoint_id,))
            return cursor.execute("DELETE FROM webhook_endpoints WHERE id = ?",
                                  (endpoint_id,)).rowcount > 0

        return self._db.run_interaction("delete_webhook_endpoint", write)

    # -- events and deliveries ------------------------------------------------------------

    def emit(self, event_type: str, agent_id: str | None, data: dict[str, Any], now_ms: int,
             endpoint_id: str | None = None) -> Deferred[list[str]]:
        """Queue an event on its own (for events not tied to another write)."""
        return self._db.run_interaction("emit_webhook_event", enqueue_event, event_type,
                                        agent_id, data, now_ms, endpoint_id)

    def delivery(self, delivery_id: str) -> Deferred[Delivery | None]:
        def read(cursor: Cursor) -> Delivery | None:
            row = cursor.execute(f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries "
                                 "WHERE id = ?", (delivery_id,)).fetchone()
            return row_to_delivery(row) if row else None

        return self._db.run_interaction("get_webhook_delivery", read)

    def deliveries(self, endpoint_id: str, limit: int = 50, offset: int = 0,
                   ) -> Deferred[tuple[list[Delivery], int]]:
        def read(cursor: Cursor) -> tuple[list[Delivery], int]:
            total = cursor.execute("SELECT COUNT(*) FROM webhook_deliveries "
                                   "WHERE endpoint_id = ?", (endpoint_id,)).fetchone()
            rows = cursor.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = ? "
                "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                (endpoint_id, limit, offset)).fetchall()
            return [row_to_delivery(r) for r in rows], int(total[0]) if total else 0

        return self._db.run_interaction("list_webhook_deliveries", read)

    def redeliver(self, delivery_id: str, now_ms: int) -> Deferred[str | None]:
        """A new delivery of the same event (same ``event_id``) to the same endpoint."""
        def write(cursor: Cursor) -> str | None:
            row = cursor.execute("SELECT endpoint_id, event_id, event_type, agent_id, payload "
                                 "FROM webhook_deliveries WHERE id = ?",
                                 (delivery_id,)).fetchone()
            if row is None:
                return None
            new_id = f"whd-{uuid.uuid4().hex}"
            endpoint_id, event_id, event_type, agent_id, payload = row
            cursor.execute(
                f"INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, 'pending', 0, ?, NULL, NULL, ?, NULL)",
                (new_id, endpoint_id, event_id, event_type, agent_id, payload, now_ms,
                 now_ms))
            return new_id

        return self._db.run_interaction("redeliver_webhook", write)

    def claim_due(self, owner: str, now_ms: int, lease_ms: int,
                  limit: int = 50) -> Deferred[list[tuple[Delivery, Endpoint]]]:
        """Due pending deliveries of enabled endpoints that this process now holds."""
        return self._db.run_interaction("claim_webhook_deliveries", _claim_due, owner,
                                        now_ms, lease_ms, limit)

    def record_attempt(self, result: AttemptResult, owner: str,
                       disable_after: int) -> Deferred[bool]:
        """Store an attempt's result and the endpoint's failure count; fires True when this
        attempt disabled the endpoint."""
        return self._db.run_interaction("record_webhook_attempt", _record_attempt, result,
                                        owner, disable_after)


def _endpoint(cursor: Cursor, endpoint_id: str) -> Endpoint | None:
    row = cursor.execute(f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?",
                         (endpoint_id,)).fetchone()
    return row_to_endpoint(row) if row else None


def _claim_due(cursor: Cursor, owner: str, now_ms: int, lease_ms: int,
               limit: int) -> list[tuple[Delivery, Endpoint]]:
    candidates = cursor.execute(
        "SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e "
        "ON e.id = d.endpoint_id WHERE d.status = 'pending' AND d.next_attempt_at <= ? "
        "AND e.enabled = ? AND (d.lease_expires_at IS NULL OR d.lease_expires_at < ?) "
        "ORDER BY d.next_attempt_at, d.id LIMIT ?", (now_ms, True, now_ms, limit)).fetchall()
    claimed = []
    for (delivery_id,) in candidates:
        # The guard re-checks the lease after any concurrent claimer committed, so one
        # process wins each row.
        won = cursor.execute(
            "UPDATE webhook_deliveries SET lease_owner = ?, lease_expires_at = ? "
            "WHERE id = ? AND status = 'pending' AND "
            "(lease_expires_at IS NULL OR lease_expires_at < ?)",
            (owner, now_ms + lease_ms, delivery_id, now_ms)).rowcount
        if not won:
            continue
        row = cursor.execute(f"SELECT {CLAIMED_COLUMNS} FROM webhook_deliveries d JOIN "
                             "webhook_endpoints e ON e.id = d.endpoint_id WHERE d.id = ?",
                             (delivery_id,)).fetchone()
        if row is not None:
            width = len(DELIVERY_FIELDS)
            claimed.append((row_to_delivery(row[:width]), row_to_endpoint(row[width:])))
    return claimed


def _record_attempt(cursor: Cursor, result: AttemptResult, owner: str,
                    disable_after: int) -> bool:
    delivered = result.outcome == "delivered"
    held = cursor.execute(
        "UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, "
        "next_attempt_at = ?, last_status_code = ?, last_error = ?, delivered_at = ?, "
        "lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND lease_owner = ?",
        ({"retry": "pending"}.get(result.outcome, result.outcome), result.next_attempt_at,
         result.status_code, result.error, result.now_ms if delivered else None,
         result.delivery_id, owner)).rowcount
    if not held:
        # The lease ran out and another process has the row: its attempt is the one that
        # counts, for the delivery and for the endpoint's failure streak.
        return False
    if delivered:
        cursor.execute("UPDATE webhook_endpoints SET consecutive_failures = 0 WHERE id = ?",
                       (result.endpoint_id,))
        return False
    cursor.execute("UPDATE webhook_endpoints SET consecutive_failures = "
                   "consecutive_failures + 1 WHERE id = ?", (result.endpoint_id,))
    disabled = cursor.execute(
        "UPDATE webhook_endpoints SET enabled = ?, disabled_reason = ?, updated_at = ? "
        "WHERE id = ? AND enabled = ? AND consecutive_failures >= ?",
        (False, f"disabled after {disable_after} consecutive failed attempts", result.now_ms,
         result.endpoint_id, True, disable_after)).rowcount
    return disabled > 0

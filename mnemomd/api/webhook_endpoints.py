"""Webhook endpoints as the management API manages them (SPEC §7).

The API registers endpoints, shows their delivery history and queues test events and
redeliveries as ``webhook_deliveries`` rows; the scheduler's ``webhooks`` job delivers
whatever row is due. A secret is 32 random bytes, shown once when created or rotated and
kept in ``webhook_endpoints.secret`` because the deliverer signs with it.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred

from mnemomd.storage.database import Cursor, Database
from mnemomd.storage.management import Page, equal_to, page

SECRET_PREFIX = "whsec_"
ENDPOINT_FIELDS = ("id", "url", "description", "event_types", "allow_http", "enabled",
                   "consecutive_failures", "disabled_reason", "created_at", "updated_at")
DELIVERY_FIELDS = ("id", "endpoint_id", "event_id", "event_type", "agent_id", "status",
                   "attempts", "next_attempt_at", "last_status_code", "last_error",
                   "created_at", "delivered_at")
_ENDPOINT_SELECT = f"SELECT {', '.join(ENDPOINT_FIELDS)} FROM webhook_endpoints"
_DELIVERY_SELECT = f"SELECT {', '.join(DELIVERY_FIELDS)} FROM webhook_deliveries"


class WebhookURLError(ValueError):
    """A URL the gateway will not deliver to."""


def check_webhook_url(url: str, allow_http: bool) -> str:
    """HTTPS with a host; plain HTTP only for an endpoint registered with ``allow_http``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise WebhookURLError("url must be an https:// URL with a host")
    if parts.scheme == "http" and not allow_http:
        raise WebhookURLError("url must use https:// (set allow_http for an internal "
                              "receiver on plain HTTP)")
    if parts.username is not None or parts.password is not None:
        raise WebhookURLError("url must not contain credentials")
    if parts.fragment:
        raise WebhookURLError("url must not have a fragment")
    try:
        parts.port  # noqa: B018 - raises on an invalid port
    except ValueError:
        raise WebhookURLError("url has an invalid port") from None
    return url.strip()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_hex(32)


def _endpoint_dict(row: Sequence[Any]) -> dict[str, Any]:
    endpoint = dict(zip(ENDPOINT_FIELDS, row, strict=True))
    endpoint["event_types"] = json.loads(endpoint["event_types"])
    endpoint["allow_http"] = bool(endpoint["allow_http"])
    endpoint["enabled"] = bool(endpoint["enabled"])
    return endpoint


def _delivery_dict(row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(DELIVERY_FIELDS, row, strict=True))


def event_body(event_id: str, event_type: str, agent_id: str | None, data: dict[str, Any],
               created_at_ms: int) -> dict[str, Any]:
    """The JSON a receiver gets (SPEC §7)."""
    from datetime import UTC, datetime

    created = datetime.fromtimestamp(created_at_ms / 1000, UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    return {"event_id": event_id, "event_type": event_type, "created_at": created,
            "agent_id": agent_id, "data": data}


def _get_endpoint(cursor: Cursor, endpoint_id: str) -> dict[str, Any] | None:
    row = cursor.execute(f"{_ENDPOINT_SELECT} WHERE id = ?", (endpoint_id,)).fetchone()
    return _endpoint_dict(row) if row else None


def _queue(cursor: Cursor, endpoint_id: str, event_id: str, event_type: str,
           agent_id: str | None, payload: str, now_ms: int) -> dict[str, Any]:
    delivery_id = f"whd-{uuid.uuid4().hex}"
    cursor.execute(
        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, agent_id, "
        "payload, status, attempts, next_attempt_at, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
        (delivery_id, endpoint_id, event_id, event_type, agent_id, payload, now_ms, now_ms))
    row = cursor.execute(f"{_DELIVERY_SELECT} WHERE id = ?", (delivery_id,)).fetchone()
    return _delivery_dict(row)


class WebhookEndpointStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, url: str, description: str | None, event_types: Sequence[str],
               allow_http: bool, enabled: bool, now_ms: int) -> Deferred[dict[str, Any]]:
        """The new endpoint, with its secret (the only time it is read back)."""
        endpoint_id = f"wh-{uuid.uuid4().hex[:16]}"
        secret = new_secret()

        def write(cursor: Cursor) -> dict[str, Any]:
            cursor.execute(
                "INSERT INTO webhook_endpoints (id, url, description, event_types, secret, "
                "allow_http, enabled, consecutive_failures, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (endpoint_id, url, description, json.dumps(list(event_types)), secret,
                 allow_http, enabled, now_ms, now_ms))
            endpoint = _get_endpoint(cursor, endpoint_id)
            assert endpoint is not None
            return {**endpoint, "secret": secret}

        return self._db.run_interaction("api_create_webhook", write)

    def list(self, limit: int, offset: int) -> Deferred[Page]:
        return self._db.run_interaction(
            "api_list_webhooks", page, _ENDPOINT_SELECT, [], [], "created_at DESC, id",
            limit, offset, _endpoint_dict, "webhook_endpoints")

    def get(self, endpoint_id: str) -> Deferred[dict[str, Any] | None]:
        return self._db.run_interaction("api_get_webhook", _get_endpoint, endpoint_id)

    def update(self, endpoint_id: str, changes: dict[str, Any],
               now_ms: int) -> Deferred[dict[str, Any] | None]:
        columns = dict(changes)
        if "event_types" in columns:
            columns["event_types"] = json.dumps(list(columns["event_types"]))
        if columns.get("enabled") is True:
            columns.update(consecutive_failures=0, disabled_reason=None)

        def write(cursor: Cursor) -> dict[str, Any] | None:
            assignments = "".join(f"{name} = ?, " for name in columns)
            updated = cursor.execute(
                f"UPDATE webhook_endpoints SET {assignments}updated_at = ? WHERE id = ?",
                (*columns.values(), now_ms, endpoint_id)).rowcount
            return _get_endpoint(cursor, endpoint_id) if updated else None

        return self._db.run_interaction("api_update_webhook", write)

    def delete(self, endpoint_id: str) -> Deferred[bool]:
        def write(cursor: Cursor) -> bool:
            cursor.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ?",
                           (endpoint_id,))
            return cursor.execute("DELETE FROM webhook_endpoints WHERE id = ?",
                                  (endpoint_id,)).rowcount == 1

        return self._db.run_interaction("api_delete_webhook", write)

    def rotate_secret(self, endpoint_id: str, now_ms: int) -> Deferred[dict[str, Any] | None]:
        secret = new_secret()

        def write(cursor: Cursor) -> dict[str, Any] | None:
            updated = cursor.execute(
                "UPDATE webhook_endpoints SET secret = ?, updated_at = ? WHERE id = ?",
                (secret, now_ms, endpoint_id)).rowcount
            endpoint = _get_endpoint(cursor, endpoint_id) if updated else None
            return {**endpoint, "secret": secret} if endpoint else None

        return self._db.run_interaction("api_rotate_webhook_secret", write)

    def deliveries(self, endpoint_id: str, limit: int, offset: int,
                   status: str | None = None) -> Deferred[Page | None]:
        where, params = equal_to(endpoint_id=endpoint_id, status=status)

        def read(cursor: Cursor) -> Page | None:
            if _get_endpoint(cursor, endpoint_id) is None:
                return None
            return page(cursor, _DELIVERY_SELECT, where, params, "created_at DESC, id",
                         limit, offset, _delivery_dict, "webhook_deliveries")

        return self._db.run_interaction("api_list_deliveries", read)

    def queue_test(self, endpoint_id: str, now_ms: int) -> Deferred[dict[str, Any] | None]:
        """A ``webhook.test`` event for one endpoint, whatever it subscribes to."""
        event_id = f"evt-{uuid.uuid4().hex}"
        payload = json.dumps(event_body(event_id, "webhook.test", None,
                                        {"message": "Test event from mnemomd"}, now_ms))

        def write(cursor: Cursor) -> dict[str, Any] | None:
            if _get_endpoint(cursor, endpoint_id) is None:
                return None
            return _queue(cursor, endpoint_id, event_id, "webhook.test", None, payload,
                          now_ms)

        return self._db.run_interaction("api_queue_test_event", write)

    def redeliver(self, endpoint_id: str, delivery_id: str,
                  now_ms: int) -> Deferred[dict[str, Any] | None]:
        """A new delivery of an earlier delivery's event (same event id, new row)."""
        def write(cursor: Cursor) -> dict[str, Any] | None:
            row = cursor.execute(
                "SELECT event_id, event_type, agent_id, payload FROM webhook_deliveries "
                "WHERE id = ? AND endpoint_id = ?", (delivery_id, endpoint_id)).fetchone()
            if row is None:
                return None
            event_id, event_type, agent_id, payload = row
            # One row per (endpoint, event): the redelivery is the same event, sent anew.
            redelivery_event = f"{event_id}.r{uuid.uuid4().hex[:8]}"
            return _queue(cursor, endpoint_id, redelivery_event, event_type, agent_id,
                          payload, now_ms)

        return self._db.run_interaction("api_redeliver", write)

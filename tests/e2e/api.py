"""Talk to a running daemon's management API, and give it something to show.

Blocking stdlib helpers, like the rest of the end-to-end harness. Agents are created
the way they are in production, by a proxied call; checkpoints, traces, drift alerts and
nudges are written straight into the daemon's SQLite file, as its own jobs would.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mnemomd.integrity.attestation import SigningKey
from mnemomd.integrity.checkpoints import ATTESTATION_FIELDS
from tests.e2e.daemon import Daemon
from tests.fakes.rawhttp import raw_request
from tests.fakes.recorder import Recorder
from tests.integrity.ledger_helpers import attested

INTERNAL_KEY = f"ik-{uuid.uuid4().hex}"
JWT_SECRET = f"jwt-{uuid.uuid4().hex}"
SUPABASE_SECRET = f"sb-{uuid.uuid4().hex}"
#: Signs the checkpoints ``seed`` writes.
SEED_KEY = SigningKey(Ed25519PrivateKey.generate())
CREDENTIALS = {"INTERNAL_API_KEY": INTERNAL_KEY, "MNEMOM_JWT_SECRET": JWT_SECRET,
               "SUPABASE_JWT_SECRET": SUPABASE_SECRET}


def make_jwt(secret: str = JWT_SECRET, role: str = "admin", lifetime: int = 3600,
             **claims: Any) -> str:
    return jwt.encode({"exp": int(time.time()) + lifetime, "role": role, "sub": f"{role}@test",
                       **claims}, secret, algorithm="HS256")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any


def api_call(base_url: str, method: str, path: str, body: Any = None,
             token: str | None = INTERNAL_KEY, raw: bytes | None = None) -> Response:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(base_url + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Response(response.status, dict(response.headers),
                            json.loads(response.read()))
    except urllib.error.HTTPError as e:
        return Response(e.code, dict(e.headers), json.loads(e.read()))


def proxied_call(daemon: Daemon, key: str) -> tuple[int, dict[str, str]]:
    """One Anthropic call through the gateway with ``key``; (status, headers)."""
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages",
                     b'{"model":"claude-x","max_tokens":5,"messages":[]}',
                     {"x-api-key": key, "content-type": "application/json"},
                     timeout=20) as r:
        r.read_body()
        return r.status, dict(r.headers)


@dataclass
class ApiDaemon:
    """A daemon with API credentials configured, and what it has been shown."""

    daemon: Daemon
    data_dir: Path
    #: A local webhook receiver: endpoints registered by tests point here, never outside.
    receiver: Recorder
    #: Secrets handed out during the tests (webhook secrets): none may reach the log.
    secrets: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.daemon.base_url

    def call(self, method: str, path: str, body: Any = None, token: str | None = INTERNAL_KEY,
             raw: bytes | None = None) -> Response:
        return api_call(self.url, method, path, body, token, raw)

    def new_agent(self) -> str:
        """An agent created by a proxied call, as in production; returns its id."""
        key = f"sk-{uuid.uuid4().hex}"
        assert proxied_call(self.daemon, key)[0] == 200
        import hashlib

        agent_hash = hashlib.sha256(key.encode()).hexdigest()[:16]
        rows = self.rows("SELECT id FROM agents WHERE agent_hash = ?", (agent_hash,))
        return rows[0][0]

    def new_webhook(self, path: str = "/hook", **fields: Any) -> dict[str, Any]:
        """An endpoint on the local receiver; returns it with its secret."""
        created = self.call("POST", "/v1/webhooks", {"url": self.receiver.url + path,
                                                     "allow_http": True, **fields})
        assert created.status == 201, created.body
        self.secrets.append(created.body["secret"])
        return created.body

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with sqlite3.connect(self.data_dir / "mnemomd.db") as connection:
            return connection.execute(sql, params).fetchall()

    def seed(self, agent_id: str) -> dict[str, str]:
        """A checkpoint, trace, drift alert and nudge for the agent; returns their ids."""
        suffix = uuid.uuid4().hex[:8]
        ids = {"checkpoint_id": f"ic-{suffix}", "trace_id": f"tr-{suffix}",
               "drift_id": f"ida-{suffix}", "nudge_id": f"ndg-{suffix}"}
        now = int(time.time() * 1000)
        # Attested (signed by SEED_KEY, published in signing_keys): it has a certificate.
        record, _ = attested(SEED_KEY, agent_id, "s-1", None, ids["checkpoint_id"],
                             "boundary_violation", now - 3000)
        row = record.attestation
        with sqlite3.connect(self.data_dir / "mnemomd.db") as db:
            db.execute(
                "INSERT INTO integrity_checkpoints (id, agent_id, session_id, provider, model, "
                "verdict, concerns, thinking_block_hash, created_at) VALUES (?, ?, 's-1', "
                "'anthropic', 'claude-sonnet-4-5', 'boundary_violation', ?, ?, ?)",
                (ids["checkpoint_id"], agent_id,
                 json.dumps([{"category": "deception", "severity": "high",
                              "description": "Plans to hide a failed tool call from the user"}]),
                 record.thinking_block_hash, now - 3000))
            db.execute(f"INSERT INTO checkpoint_attestations ({', '.join(ATTESTATION_FIELDS)})"
                       f" VALUES ({', '.join('?' for _ in ATTESTATION_FIELDS)})",
                       [row[f] for f in ATTESTATION_FIELDS])
            db.execute("INSERT INTO signing_keys (key_id, public_key, algorithm, created_at) "
                       "VALUES (?, ?, 'Ed25519', ?) ON CONFLICT DO NOTHING",
                       (SEED_KEY.key_id, SEED_KEY.public_hex, now - 3000))
            db.execute(
                "INSERT INTO ap_traces (id, agent_id, session_id, checkpoint_id, trace, "
                "verification, verified, created_at) VALUES (?, ?, 's-1', ?, ?, ?, 1, ?)",
                (ids["trace_id"], agent_id, ids["checkpoint_id"],
                 json.dumps({"trace_id": ids["trace_id"]}), json.dumps({"verified": True}),
                 now - 2000))
            db.execute(
                "INSERT INTO drift_alerts (id, agent_id, session_id, source, severity, alert, "
                "streak_key, created_at) VALUES (?, ?, 's-1', 'aip', 'medium', ?, ?, ?)",
                (ids["drift_id"], agent_id, json.dumps({"sustained_checks": 3}),
                 f"s-1:{suffix}", now - 1500))
            db.execute(
                "INSERT INTO nudges (id, agent_id, session_id, checkpoint_id, notice, status, "
                "created_at, expires_at) VALUES (?, ?, 's-1', ?, 'n', 'pending', ?, ?)",
                (ids["nudge_id"], agent_id, ids["checkpoint_id"], now - 1000,
                 now + 3_600_000))
        return ids

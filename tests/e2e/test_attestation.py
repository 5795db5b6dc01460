"""Attestation through the running daemon (issue 18): every checkpoint of real calls has a
certificate that verifies through the API and offline, and a database edited behind the
gateway's back is found and named, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.e2e.daemon import daemon_environment, mnemomd_command
from tests.fakes.process import analysis_control, wait_until
from tests.fakes.rawhttp import raw_request

CALLS = 3
BODY = json.dumps({"model": "claude-x", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture
def analysis(analysis_url):
    analysis_control(analysis_url, "POST", "script", {"actions": [], "default": "valid"})
    analysis_control(analysis_url, "POST", "release")
    analysis_control(analysis_url, "DELETE", "requests")
    return analysis_url


class Store:
    """The daemon's database, read and edited directly (as an insider would)."""

    def __init__(self, url: str, path: str | None = None) -> None:
        self.url, self.path = url, path

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple]:
        if self.path is not None:
            with sqlite3.connect(self.path) as connection:
                return connection.execute(sql, params).fetchall()
        connection = psycopg2.connect(self.url)
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), params)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()


def get_json(daemon, path: str) -> Any:
    with urllib.request.urlopen(f"{daemon.base_url}{path}", timeout=20) as response:
        return json.loads(response.read())


def post_json(daemon, path: str, body: Any) -> Any:
    request = urllib.request.Request(f"{daemon.base_url}{path}", json.dumps(body).encode(),
                                     {"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())


def verify_database(tmp_path: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    env = daemon_environment(tmp_path / "cli", {"DATABASE_URL": database_url})
    return subprocess.run([*mnemomd_command(), "verify", "--database"], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["sqlite", "postgresql"])
def attested(request, start, tmp_path, analysis):
    """A daemon that served ``CALLS`` calls with thinking in one session, its store and
    its database URL, once every checkpoint is stored."""
    if request.param == "sqlite":
        path = str(tmp_path / "state" / "mnemomd.db")
        url = f"sqlite://{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        path = None
    daemon = start({"MNEMOM_DATA_DIR": str(tmp_path / "state"), "DATABASE_URL": url,
                    "ANALYSIS_BASE_URL": analysis, "ANTHROPIC_API_KEY": "sk-analysis-key",
                    "AIP_MIN_EVIDENCE_TOKENS": "1"})
    for _ in range(CALLS):
        with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                         {"x-api-key": "sk-attest", "content-type": "application/json",
                          "x-mnemom-session": "s-attest"}, timeout=20) as r:
            r.read_body()
            assert r.status == 200
    store = Store(url, path)
    wait_until(lambda: store.run("SELECT COUNT(*) FROM checkpoint_attestations")[0][0] == CALLS,
               timeout=20, interval=0.05, what="the attested checkpoints")
    return daemon, store, url


def test_every_checkpoint_verifies_through_the_api_and_offline(attested, tmp_path):
    daemon, store, url = attested
    keys = get_json(daemon, "/v1/keys")
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps(keys))
    ids = [r[0] for r in store.run("SELECT id FROM integrity_checkpoints ORDER BY created_at")]
    assert len(ids) == CALLS
    positions = []
    for checkpoint_id in ids:
        certificate = get_json(daemon, f"/v1/checkpoints/{checkpoint_id}/certificate")
        assert certificate["type"] == "IntegrityCertificate"
        assert certificate["subject"]["checkpoint_id"] == checkpoint_id
        positions.append(certificate["proofs"]["chain"]["position"])
        answer = post_json(daemon, "/v1/verify", {"certificate": certificate})
        assert answer["valid"] is True, answer
        cert_file = tmp_path / f"{checkpoint_id}.json"
        cert_file.write_text(json.dumps(certificate))
        offline = subprocess.run([*mnemomd_command(), "verify", str(cert_file),
                                  "--keys", str(keys_file)],
                                 env=daemon_environment(tmp_path / "cli", {}),
                                 capture_output=True, text=True, timeout=60)
        assert offline.returncode == 0, offline.stdout + offline.stderr
    assert positions == list(range(CALLS))  # one chain for the session, in order
    assert verify_database(tmp_path, url).returncode == 0


def test_a_changed_verdict_is_found_and_named(attested, tmp_path):
    daemon, store, url = attested
    [(victim,)] = store.run("SELECT id FROM integrity_checkpoints ORDER BY created_at "
                            "LIMIT 1 OFFSET 1")
    certificate = get_json(daemon, f"/v1/checkpoints/{victim}/certificate")
    store.run("UPDATE integrity_checkpoints SET verdict = 'clear' WHERE id = ?", (victim,))
    result = verify_database(tmp_path, url)
    assert result.returncode == 1 and victim in result.stdout, result.stdout
    # The certificate issued before the edit no longer matches what the database says.
    edited = get_json(daemon, f"/v1/checkpoints/{victim}/certificate")
    assert post_json(daemon, "/v1/verify", {"certificate": edited})["valid"] is False \
        or edited["claims"]["verdict"] != certificate["claims"]["verdict"]


def test_a_deleted_checkpoint_is_found_and_named(attested, tmp_path):
    _, store, url = attested
    [(victim,)] = store.run("SELECT id FROM integrity_checkpoints ORDER BY created_at "
                            "LIMIT 1 OFFSET 1")
    store.run("DELETE FROM integrity_checkpoints WHERE id = ?", (victim,))
    result = verify_database(tmp_path, url)
    assert result.returncode == 1 and victim in result.stdout, result.stdout


def test_two_swapped_checkpoints_are_found(attested, tmp_path):
    _, store, url = attested
    rows = store.run("SELECT id, verdict, created_at FROM integrity_checkpoints "
                     "ORDER BY created_at")
    (first, _, first_at), (second, _, second_at) = rows[0], rows[1]
    store.run("UPDATE integrity_checkpoints SET created_at = ? WHERE id = ?",
              (second_at, first))
    store.run("UPDATE integrity_checkpoints SET created_at = ? WHERE id = ?",
              (first_at, second))
    result = verify_database(tmp_path, url)
    assert result.returncode == 1, result.stdout
    assert first in result.stdout or second in result.stdout, result.stdout

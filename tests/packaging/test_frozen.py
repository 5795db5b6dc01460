"""The frozen binary (not the Python package) does everything an operator asks of it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from mnemomd import __version__
from tests.e2e.api import api_call
from tests.e2e.conftest import provider_env
from tests.e2e.daemon import Daemon, daemon_environment, start_daemon
from tests.fakes.process import fetch_requests
from tests.fakes.rawhttp import raw_request

REDIS_URL = "redis://127.0.0.1:6379/0"
BODY = json.dumps({"model": "m", "max_tokens": 8,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


def run_frozen(frozen: list[str], tmp: Path, *args: str,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*frozen, *args], env=daemon_environment(tmp, env or {}),
                          capture_output=True, text=True, timeout=120, cwd=tmp)


def proxied_call(daemon: Daemon, key: str) -> tuple[int, str]:
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                     {"x-api-key": key, "content-type": "application/json"}, timeout=20) as r:
        r.read_body()
        return r.status, r.header("x-mnemom-agent")


def get(daemon: Daemon, path: str) -> tuple[int, bytes]:
    with raw_request(daemon.base_url, "GET", path, timeout=20) as r:
        return r.status, r.read_body()


def test_version_names_the_frozen_build(frozen, tmp_path):
    result = run_frozen(frozen, tmp_path, "version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"mnemomd {__version__} (frozen onedir build ")
    assert "Twisted" in result.stdout


def test_check_config_reports_values_and_errors(frozen, tmp_path):
    ok = run_frozen(frozen, tmp_path, "check-config", "--port", "9999")
    assert ok.returncode == 0, ok.stderr
    assert "9999  [flag --port]" in ok.stdout
    assert ok.stdout.rstrip().endswith("Configuration OK")
    bad = run_frozen(frozen, tmp_path, "check-config", env={"PORT": "x", "LOG_LEVEL": "loud"})
    assert bad.returncode == 78
    assert "PORT" in bad.stderr and "LOG_LEVEL" in bad.stderr


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request, tmp_path) -> dict[str, str]:
    """SQLite in the data dir, or a fresh PostgreSQL database with Redis beside it."""
    if request.param == "sqlite":
        return {"DATABASE_URL": f"sqlite://{tmp_path.resolve()}/frozen.db"}
    return {"DATABASE_URL": request.getfixturevalue("postgres_url"), "REDIS_URL": REDIS_URL}


def test_migrate_applies_the_bundled_migrations(frozen, tmp_path, database_env):
    first = run_frozen(frozen, tmp_path, "migrate", env=database_env)
    assert first.returncode == 0, first.stderr
    # One migration may be a file per engine (NNNN_name.sqlite.sql, .postgresql.sql).
    bundled = sorted({p.stem.removesuffix(".sqlite").removesuffix(".postgresql")
                      for p in (Path(frozen[0]).parent / "_internal" /
                                "migrations").glob("*.sql")})
    assert bundled and f"applied {', '.join(bundled)}" in first.stdout
    again = run_frozen(frozen, tmp_path, "migrate", env=database_env)
    assert again.returncode == 0 and "schema is up to date" in again.stdout


def test_run_proxies_and_serves_metrics(frozen, tmp_path, upstream, database_env):
    daemon = start_daemon(tmp_path, provider_env(upstream) | database_env, command=frozen)
    try:
        key = f"sk-frozen-{uuid.uuid4().hex}"
        status, agent = proxied_call(daemon, key)
        assert status == 200 and agent.startswith("smolt-")
        assert [r["path"] for r in fetch_requests(upstream)] == ["/v1/messages"]
        status, ready = get(daemon, "/health/ready")
        checks = json.loads(ready)["checks"]
        assert status == 200 and checks["database"]["status"] == "ok"
        if "REDIS_URL" in database_env:
            assert checks["redis"]["status"] == "ok"
        status, metrics = get(daemon, "/metrics")
        assert status == 200
        assert 'gateway_requests_total{provider="anthropic",status="200"} 1.0' in metrics.decode()
        assert "process_resident_memory_bytes" in metrics.decode()
        # The web console's files are inside the binary.
        status, page = get(daemon, "/console/")
        assert status == 200 and b'<script type="module" src="app.js">' in page
        status, module = get(daemon, "/console/views/agent.js")
        assert status == 200 and b"export async function agentView" in module
        version = api_call(daemon.base_url, "GET", "/v1/version", token=None).body
        assert version["build"].startswith("frozen onedir build ")

        # The management commands talk to the running daemon's API.
        url = ("--url", daemon.base_url)
        enforce = run_frozen(frozen, tmp_path, "enforcement", "set", agent, "enforce",
                             "--json", *url, env=database_env)
        assert enforce.returncode == 0, enforce.stderr
        shown = run_frozen(frozen, tmp_path, "agent", "show", agent, "--json", *url,
                           env=database_env)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["agent"]["enforcement_mode"] == "enforce"
    finally:
        assert daemon.stop() == 0
    assert key not in daemon.output()


def test_license_show_verifies_a_signed_license(frozen, tmp_path, signing):
    key_path, token = signing
    result = run_frozen(frozen, tmp_path, "license", "show", "--json",
                        env={"MNEMOM_LICENSE_PUBLIC_KEY": key_path,
                             "MNEMOM_LICENSE_JWT": token(time.time() + 86400)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "valid"


def test_sd_notify_ready_watchdog_and_stopping(frozen, tmp_path):
    """With NOTIFY_SOCKET (and a watchdog) the binary reports READY=1 once started, pings
    the watchdog, and says STOPPING=1 on SIGTERM before exiting 0."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        daemon = start_daemon(tmp_path / "d", {"NOTIFY_SOCKET": path,
                                               "WATCHDOG_USEC": "20000000"},
                              command=frozen, wait_started=False)
        try:
            received = [sock.recv(64)]
            while b"READY=1" not in received:
                received.append(sock.recv(64))
            assert daemon.started()
            daemon.signal(signal.SIGTERM)
            while received[-1] != b"STOPPING=1":
                received.append(sock.recv(64))
        finally:
            code = daemon.stop()
    assert code == 0
    assert b"WATCHDOG=1" in received
    assert received.index(b"READY=1") < received.index(b"STOPPING=1")


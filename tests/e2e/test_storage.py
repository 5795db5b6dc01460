"""Persistence through the daemon: restarts, both engines, Redis and database outages."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import sqlite3
import subprocess
import sys
import uuid

import psycopg2
import pytest

from mnemomd.storage.migrations import load_migrations, migrations_dir
from tests.e2e.api import CREDENTIALS, api_call
from tests.e2e.conftest import pg_rows
from tests.e2e.daemon import daemon_environment, mnemomd_command
from tests.e2e.tcpgate import TcpGate
from tests.fakes.local import closed_port
from tests.fakes.process import fetch_requests, wait_until
from tests.fakes.rawhttp import raw_request
from tests.fakes.redisserver import RedisServer

BODY = json.dumps({"model": "m", "max_tokens": 8,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


def call(daemon, key: str, path: str = "/anthropic/v1/messages") -> tuple[int, str]:
    with raw_request(daemon.base_url, "POST", path, BODY,
                     {"x-api-key": key, "content-type": "application/json"}, timeout=20) as r:
        r.read_body()
        return r.status, r.header("x-mnemom-agent") or ""


def readiness(daemon) -> tuple[int, dict]:
    with raw_request(daemon.base_url, "GET", "/health/ready", timeout=20) as r:
        return r.status, json.loads(r.read_body())


def wait_ready(daemon, timeout: float = 30) -> dict:
    return wait_until(lambda: (r := readiness(daemon))[0] == 200 and r[1], timeout=timeout,
                      interval=0.05, what="readiness 200")


def test_sqlite_by_default_and_agents_survive_a_restart(start, tmp_path):
    data_dir = tmp_path / "state"
    first = start({"MNEMOM_DATA_DIR": str(data_dir)})
    wait_ready(first)
    status, agent = call(first, "sk-restart-key")
    assert status == 200
    assert first.stop() == 0
    database = data_dir / "mnemomd.db"
    assert database.exists()
    assert oct(database.stat().st_mode & 0o777) == "0o600"
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT id, last_seen_at FROM agents").fetchall()
    assert [r[0] for r in rows] == [agent]
    assert rows[0][1] is not None, "last_seen flushed at shutdown"
    second = start({"MNEMOM_DATA_DIR": str(data_dir)})
    body = wait_ready(second)
    assert body["checks"]["database"]["status"] == "ok"
    assert call(second, "sk-restart-key") == (200, agent)
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM agents").fetchone()[0] == 1


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_fifty_concurrent_first_calls_make_one_agent(start, tmp_path, engine, request):
    if engine == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite://{tmp_path.resolve()}/agents.db"
    daemon = start({"DATABASE_URL": url})
    wait_ready(daemon)
    key = f"sk-concurrent-{uuid.uuid4().hex}"
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: call(daemon, key), range(50)))
    assert {status for status, _ in results} == {200}
    assert len({agent for _, agent in results}) == 1
    sql = ("SELECT (SELECT COUNT(*) FROM agents), (SELECT COUNT(*) FROM alignment_cards), "
           "(SELECT COUNT(*) FROM conscience_values)")
    if engine == "postgresql":
        counts = pg_rows(url, sql)[0]
    else:
        with sqlite3.connect(url.removeprefix("sqlite://")) as connection:
            counts = connection.execute(sql).fetchone()
    assert tuple(counts) == (1, 1, 1)


def test_two_migrate_processes_at_once_apply_the_schema_once(tmp_path, postgres_url):
    env = daemon_environment(tmp_path, {"DATABASE_URL": postgres_url})
    procs = [subprocess.Popen([*mnemomd_command(), "migrate"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    said = sorted(out.strip().split(": ", 1)[1] for out, _ in outputs)
    available = load_migrations(migrations_dir(), "postgresql")
    assert said == [f"applied {', '.join(m.label for m in available)}", "schema is up to date"]
    assert "postgres@" in outputs[0][0]
    assert pg_rows(postgres_url, "SELECT version FROM schema_migrations ORDER BY version") == \
        [(m.version,) for m in available]


def test_newer_schema_refuses_to_start(tmp_path, postgres_url):
    env = daemon_environment(tmp_path, {"DATABASE_URL": postgres_url})
    assert subprocess.run([*mnemomd_command(), "migrate"], env=env, capture_output=True,
                          timeout=120).returncode == 0
    connection = psycopg2.connect(postgres_url)
    with connection, connection.cursor() as cursor:
        cursor.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x', 1)")
    connection.close()
    result = subprocess.run([*mnemomd_command(), "run", "--host", "127.0.0.1", "--port", "0"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 78
    assert "newer than this build" in result.stdout
    result = subprocess.run([*mnemomd_command(), "migrate"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 78
    assert "newer than this build" in result.stderr


@pytest.fixture
def redis_server():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    wait_until(server.listening, timeout=20, what="redis-server to listen")
    yield server
    server.cleanup()


def test_redis_outage_keeps_serving_and_recovers(start, redis_server, postgres_url):
    daemon = start({"REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
                    "DATABASE_URL": postgres_url})
    body = wait_ready(daemon)
    assert body["checks"]["redis"]["status"] == "ok"
    assert call(daemon, "sk-redis-1")[0] == 200
    redis_server.stop()
    for n in range(3):
        assert call(daemon, f"sk-redis-down-{n}")[0] == 200
    # Reads fall through to the database: still ready, degraded, naming Redis.
    status, body = wait_until(lambda: (r := readiness(daemon))[1]["status"] == "degraded"
                              and r, timeout=20, what="readiness to report redis down")
    assert status == 200 and body["failing"] == ["redis"]
    assert body["checks"]["redis"]["status"] == "fail"
    assert body["checks"]["database"]["status"] == "ok"
    redis_server.start()
    body = wait_until(lambda: (r := readiness(daemon))[1]["status"] == "ok" and r[1],
                      timeout=60, interval=0.05, what="readiness ok")
    assert body["checks"]["redis"]["status"] == "ok"
    assert call(daemon, "sk-redis-2")[0] == 200
    agents = pg_rows(postgres_url, "SELECT COUNT(*) FROM agents")[0][0]
    assert agents == 5, "agents seen while Redis was down were still stored"


def test_database_outage_keeps_forwarding_and_recovers(start, postgres_url):
    gate = TcpGate("127.0.0.1", 5432)
    try:
        gated_url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{gate.port}")
        assert gated_url != postgres_url
        daemon = start({"DATABASE_URL": gated_url})
        wait_ready(daemon)
        assert call(daemon, "sk-db-1")[0] == 200
        gate.close()
        status, agent = call(daemon, "sk-db-down")
        assert status == 200 and agent.startswith("smolt-")
        status, body = wait_until(lambda: (r := readiness(daemon))[1]["status"] == "degraded"
                                  and r, timeout=20, what="readiness to report the database down")
        assert status == 200, "fail_open forwards: the gateway can still serve"
        assert body["checks"]["database"]["status"] == "fail"
        gate.open()
        wait_until(lambda: readiness(daemon)[1]["status"] == "ok", timeout=60,
                   interval=0.05, what="readiness ok")
        assert call(daemon, "sk-db-2")[0] == 200
        assert pg_rows(postgres_url, "SELECT COUNT(*) FROM agents")[0][0] == 2
    finally:
        gate.close()


def refusal(daemon, key: str, name: str | None = None) -> tuple[int, dict]:
    path = "/anthropic/v1/messages" if name is None else f"/agent/{name}/anthropic/v1/messages"
    with raw_request(daemon.base_url, "POST", path, BODY,
                     {"x-api-key": key, "content-type": "application/json"}, timeout=20) as r:
        body = r.read_body()
        return r.status, json.loads(body) if r.status != 200 else {}


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_database_and_redis_down_a_paused_agent_stays_refused(
        start, redis_server, postgres_url, upstream, mode):
    """PostgreSQL cut at a TCP gate and Redis killed: the paused agent's calls are refused
    (none reaches the upstream), an unknown agent follows the failure mode, readiness
    stays 200 degraded; both come back."""
    gate = TcpGate("127.0.0.1", 5432)
    try:
        gated_url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{gate.port}")
        daemon = start({"DATABASE_URL": gated_url, "AIP_FAILURE_MODE": mode,
                        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
                        "AIP_ENABLED": "false", **CREDENTIALS})
        wait_ready(daemon)
        status, agent = call(daemon, "sk-outage-paused")
        assert status == 200
        paused = api_call(daemon.base_url, "POST", f"/v1/agents/{agent}/containment/pause",
                          {"reason": "outage drill"})
        assert paused.status == 200
        forwarded = len(fetch_requests(upstream))
        gate.close()
        redis_server.stop()
        for _ in range(5):
            status, body = refusal(daemon, "sk-outage-paused")
            assert (status, body["type"], body["reason"]) == \
                (403, "containment_error", "agent_paused")
        status, body = refusal(daemon, "sk-outage-never-seen")
        if mode == "fail_open":
            assert status == 200
            expected = forwarded + 1
        else:
            assert (status, body["type"]) == (503, "gateway_unavailable")
            expected = forwarded
        assert len(fetch_requests(upstream)) == expected, "the paused agent sent nothing"
        status, body = wait_until(
            lambda: {"database", "redis"} <= set((r := readiness(daemon))[1].get("failing", []))
            and r,
            timeout=30, what="readiness to name both dependencies")
        assert (status, body["status"]) == (200, "degraded")
        assert "last known state of 1 agent(s)" in body["checks"]["database"]["fallback"]
        daemon.wait_for_line("database unavailable")
        gate.open()
        redis_server.start()
        wait_until(lambda: readiness(daemon)[1]["status"] == "ok", timeout=60,
                   interval=0.1, what="readiness ok once both are back")
        daemon.wait_for_line("database available again", timeout=30)
        assert refusal(daemon, "sk-outage-paused")[0] == 403
        tracebacks = [json.loads(line).get("message") for line in daemon.output().splitlines()
                      if "Traceback" in line]
        assert tracebacks == [], "no traceback for a known outage"
    finally:
        gate.close()


def test_database_down_at_startup_still_forwards(start, tmp_path):
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/nothing"
    daemon = start({"DATABASE_URL": url}, wait_started=False)
    assert call(daemon, "sk-no-db")[0] == 200
    with raw_request(daemon.base_url, "GET", "/health/startup") as r:
        assert r.status == 503
        assert json.loads(r.read_body())["waiting_for"] == ["schema"]
    status, body = readiness(daemon)
    assert status == 503 and body["checks"]["database"]["status"] == "fail"
    assert "Database unavailable" in daemon.wait_for_line("Database unavailable")


def test_nothing_secret_reaches_postgresql(start, postgres_url):
    daemon = start({"DATABASE_URL": postgres_url})
    key = "sk-ant-PRIVATEKEY-" + uuid.uuid4().hex
    prompt = "PROMPT-" + uuid.uuid4().hex
    body = json.dumps({"model": "m", "max_tokens": 8,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    with raw_request(daemon.base_url, "POST", "/agent/bot/anthropic/v1/messages", body,
                     {"x-api-key": key}) as r:
        assert r.status == 200
        r.read_body()
    daemon.stop()
    tables = [r[0] for r in pg_rows(postgres_url, "SELECT tablename FROM pg_tables "
                                                  "WHERE schemaname = 'public'")]
    assert "agents" in tables
    dump = "".join(str(pg_rows(postgres_url, f'SELECT row_to_json(t)::text FROM "{t}" t'))
                   for t in tables)
    assert "bot" in dump  # the agent name is stored...
    assert key not in dump and prompt not in dump  # ...the key and the prompt are not


def test_nothing_secret_reaches_the_database(start, tmp_path):
    data_dir = tmp_path / "state"
    daemon = start({"MNEMOM_DATA_DIR": str(data_dir)})
    wait_ready(daemon)
    key = "sk-ant-PRIVATEKEY-" + uuid.uuid4().hex
    prompt = "PROMPT-" + uuid.uuid4().hex
    body = json.dumps({"model": "m", "max_tokens": 8,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", body,
                     {"x-api-key": key}) as r:
        r.read_body()
    daemon.stop()
    for path in data_dir.iterdir():
        content = path.read_bytes()
        assert key.encode() not in content and prompt.encode() not in content, path


def test_migrate_exits_with_an_error_when_the_database_cannot_be_set_up(tmp_path):
    # Any failure while opening the database ends the command; it must never hang.
    script = (
        "import sys\n"
        "import mnemomd.storage.database as database\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('driver missing')\n"
        "database.Database = broken\n"
        "from mnemomd.cli.main import main\n"
        "sys.exit(main(['migrate']))\n")
    env = daemon_environment(tmp_path, {})
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1, result
    assert "driver missing" in result.stderr

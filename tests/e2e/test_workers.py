"""``MNEMOM_WORKERS=2`` as an operator runs it: one supervisor, two worker processes on one
port, PostgreSQL and Redis shared. Each worker is reached through a keep-alive connection
it accepted (``/health/live`` names the worker that answered), so a test can say which
worker served what."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import pg_rows
from tests.e2e.daemon import Daemon, daemon_environment, mnemomd_command
from tests.fakes import canned
from tests.fakes.process import release, wait_until
from tests.fakes.rawhttp import raw_request

#: A Redis database of these tests' own, emptied before each.
REDIS = "redis://127.0.0.1:6379/13"
CALL = b'{"model":"m","max_tokens":5,"messages":[]}'


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[socket.socket]:
    """The test's own NOTIFY_SOCKET, as systemd would hold it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.settimeout(30)
        yield sock


@pytest.fixture
def workers(start, postgres_url: str, tmp_path: Path, notify: socket.socket) -> Daemon:
    with socket.create_connection(("127.0.0.1", 6379), timeout=5) as sock, \
            sock.makefile("rb") as reply:
        sock.sendall(b"*2\r\n$6\r\nSELECT\r\n$2\r\n13\r\n*1\r\n$7\r\nFLUSHDB\r\n")
        assert [reply.readline(), reply.readline()] == [b"+OK\r\n"] * 2
    env = {"MNEMOM_WORKERS": "2", "DATABASE_URL": postgres_url, "REDIS_URL": REDIS,
           "AIP_ENABLED": "false", "MNEMOM_OFFLINE": "true",
           "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
           "OBSERVER_WEBHOOKS_INTERVAL_SECONDS": "0.2"}
    daemon = start(env)
    daemon.wait_for_line("with 2 workers")
    return daemon


def live(conn: http.client.HTTPConnection) -> dict:
    conn.request("GET", "/health/live")
    response = conn.getresponse()
    assert response.status == 200
    return json.loads(response.read())


def one_connection_per_worker(daemon: Daemon, count: int = 2,
                              ) -> dict[int, tuple[int, http.client.HTTPConnection]]:
    """Keep-alive connections until every worker has accepted one: worker -> (pid, conn)."""
    found: dict[int, tuple[int, http.client.HTTPConnection]] = {}
    spare: list[http.client.HTTPConnection] = []

    def more() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=20)
        said = live(conn)
        if said["worker"] in found:
            spare.append(conn)
        else:
            found[said["worker"]] = (said["pid"], conn)
        return len(found) == count

    wait_until(more, timeout=20, what="a connection accepted by every worker")
    for conn in spare:
        conn.close()
    return found


def proxied(conn: http.client.HTTPConnection, key: str) -> int:
    conn.request("POST", "/anthropic/v1/messages", CALL, {"x-api-key": key})
    response = conn.getresponse()
    response.read()
    return response.status


def metrics(conn: http.client.HTTPConnection) -> str:
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200
    return response.read().decode()


def sample(text: str, name: str) -> list[tuple[str, float]]:
    """(labels, value) of each sample of ``name``."""
    return [(m.group(1) or "", float(m.group(2)))
            for m in re.finditer(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", text, re.M)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_both_workers_serve_and_metrics_are_the_sum(workers: Daemon, notify: socket.socket):
    conns = one_connection_per_worker(workers)
    assert len({pid for pid, _ in conns.values()}) == 2
    assert workers.proc.pid not in {pid for pid, _ in conns.values()}
    key = f"sk-{uuid.uuid4().hex}"
    calls = {0: 3, 1: 5}
    for worker, count in calls.items():
        assert [proxied(conns[worker][1], key) for _ in range(count)] == [200] * count
    for _, conn in conns.values():  # whichever worker answers shows the sum
        text = metrics(conn)
        assert sample(text, "gateway_requests_total") == \
            [('provider="anthropic",status="200"', 8.0)]
        # The scheduler's jobs run in one worker: only its pid schedules more than the
        # outbox sweep, and its webhook job ticks are the only ones counted.
        jobs = dict(sample(text, "gateway_scheduler_jobs"))
        assert len(jobs) == 2 and jobs[f'pid="{conns[1][0]}"'] == 1.0
        assert jobs[f'pid="{conns[0][0]}"'] > 1.0
        assert "process_resident_memory_bytes" not in text
    # The workers' metrics files hold numbers and labels, never a key or a prompt.
    workdir = re.search(r"runtime directory (\S+)\)", workers.output())
    assert workdir is not None
    files = [p for p in Path(workdir.group(1)).rglob("*") if p.is_file()]
    assert files and not any(key.encode() in p.read_bytes() or b"max_tokens" in p.read_bytes()
                             for p in files)
    # systemd heard READY=1 once, from the supervisor, after both workers were ready.
    assert notify.recv(64) == b"READY=1"
    output = workers.output()
    assert output.index("with 2 workers") > max(output.index('Worker 0 ready'),
                                                output.index('Worker 1 ready'))
    notify.settimeout(0.2)
    with pytest.raises(TimeoutError):
        notify.recv(64)


def test_a_pause_is_refused_by_both_workers_on_the_next_call(workers: Daemon, tmp_path: Path,
                                                              postgres_url: str):
    conns = one_connection_per_worker(workers)
    key = f"sk-{uuid.uuid4().hex}"
    assert proxied(conns[0][1], key) == 200 and proxied(conns[1][1], key) == 200  # cached
    agent_id = pg_rows(postgres_url, "SELECT id FROM agents")[0][0]
    result = subprocess.run([*mnemomd_command(), "agent", "pause", agent_id,
                             "--url", workers.base_url],
                            env=daemon_environment(tmp_path / "cli", {}),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "active -> paused" in result.stdout
    assert proxied(conns[1][1], key) == 403 and proxied(conns[0][1], key) == 403


def test_a_killed_worker_is_restarted_and_its_counts_stay(workers: Daemon):
    conns = one_connection_per_worker(workers)
    key = f"sk-{uuid.uuid4().hex}"
    assert [proxied(conns[1][1], key) for _ in range(4)] == [200] * 4
    dead = conns[1][0]
    os.kill(dead, signal.SIGKILL)
    workers.wait_for_line(f"Worker 1 (pid {dead}) ended with signal 9; restarting it")
    wait_until(lambda: workers.output().count("Worker 1 ready") == 2, timeout=30,
               what="worker 1 to be ready again")
    again = one_connection_per_worker(workers)
    assert again[1][0] != dead and again[0][0] == conns[0][0]
    assert not alive(dead)
    for _, conn in again.values():
        assert sample(metrics(conn), "gateway_requests_total") == \
            [('provider="anthropic",status="200"', 4.0)]
        assert len(sample(metrics(conn), "gateway_scheduler_jobs")) == 2  # live ones only


def test_sigterm_drains_every_worker_then_exits_zero(workers: Daemon, upstream: str,
                                                     notify: socket.socket):
    assert notify.recv(64) == b"READY=1"
    pids = [pid for pid, _ in one_connection_per_worker(workers).values()]
    workdir = re.search(r"runtime directory (\S+)\)", workers.output())
    stream_id = uuid.uuid4().hex
    events = canned.canned(canned.Api.ANTHROPIC_MESSAGES, True, "m")
    body = json.dumps({"model": "m", "max_tokens": 64, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"x-api-key": "k", "content-type": "application/json",
               "x-fake-scenario": f"gated:{stream_id}"}
    with raw_request(workers.base_url, "POST", "/anthropic/v1/messages", body, headers,
                     timeout=30) as stream:
        assert stream.read_event() == events[0]
        workers.signal(signal.SIGTERM)
        assert notify.recv(64) == b"STOPPING=1"

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", workers.port), timeout=1).close()
            except OSError:
                return True
            return False

        wait_until(refused, timeout=20, what="every worker's listener to close")
        assert workers.proc.poll() is None, "exited before the stream finished"
        received = [events[0]]
        for _ in events[1:]:
            release(upstream, stream_id)
            received.append(stream.read_event())
        assert stream.read_event() is None and stream.complete
    assert received == events
    assert workers.wait(30) == 0
    assert not any(alive(pid) for pid in pids)
    assert workdir is not None and not Path(workdir.group(1)).exists()


def test_more_than_one_worker_needs_redis(tmp_path: Path):
    result = subprocess.run([*mnemomd_command(), "run", "--workers", "2"],
                            env=daemon_environment(tmp_path, {}), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 78
    assert "MNEMOM_WORKERS=2 needs REDIS_URL" in result.stderr

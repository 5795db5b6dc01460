"""The daemon as a process: startup, logs, roles, configuration errors, shutdown."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import uuid

import pytest

from tests.e2e.daemon import Daemon, daemon_environment, mnemomd_command, start_daemon
from tests.fakes import canned
from tests.fakes.process import release, wait_until
from tests.fakes.rawhttp import raw_request

SECRET_KEY = "sk-ant-SECRETKEY-" + uuid.uuid4().hex
PROMPT = "PROMPT-MARKER-" + uuid.uuid4().hex


def get_json(conn: http.client.HTTPConnection, path: str) -> tuple[int, dict]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_health_endpoints(daemon: Daemon):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    assert get_json(conn, "/health/live") == (200, {"status": "ok"})
    assert get_json(conn, "/health/startup") == (200, {"status": "ok"})
    status, body = get_json(conn, "/health/ready")
    assert status == 200 and body["status"] == "ok"
    status, body = get_json(conn, "/health")
    assert body["status"] == "ok" and body["aip_enabled"] is True and body["version"]


def test_sigterm_drains_a_stream_then_exits_zero(daemon: Daemon, upstream: str):
    stream_id = uuid.uuid4().hex
    events = canned.canned(canned.Api.ANTHROPIC_MESSAGES, True, "m")
    probe = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    assert get_json(probe, "/health/ready")[0] == 200  # keep-alive connection, reused below
    body = json.dumps({"model": "m", "max_tokens": 64, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"x-api-key": "k", "content-type": "application/json",
               "x-fake-scenario": f"gated:{stream_id}"}
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", body, headers,
                     timeout=20) as stream:
        assert stream.read_event() == events[0]
        daemon.signal(signal.SIGTERM)
        # The probe connection was opened before SIGTERM; the answer that reports the
        # shutdown also closes it.
        readiness = wait_until(lambda: (r := get_json(probe, "/health/ready"))[0] == 503 and r,
                               timeout=10, what="readiness to report shutdown")
        assert readiness[1]["status"] == "shutting_down"

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", daemon.port), timeout=1).close()
            except OSError:
                return True
            return False

        wait_until(refused, timeout=10, what="listener to close")
        assert daemon.proc.poll() is None, "exited before the stream finished"
        received = [events[0]]
        for _ in events[1:]:
            release(upstream, stream_id)
            received.append(stream.read_event())
        assert stream.read_event() is None and stream.complete
    assert received == events
    assert daemon.wait(30) == 0
    probe.close()


def test_logs_are_json_and_keep_no_secrets(daemon: Daemon):
    body = json.dumps({"model": "m", "max_tokens": 64,
                       "messages": [{"role": "user", "content": PROMPT}]}).encode()
    for path, auth in (("/anthropic/v1/messages", {"x-api-key": SECRET_KEY}),
                       ("/openai/v1/chat/completions", {"authorization": f"Bearer {SECRET_KEY}"}),
                       (f"/gemini/v1beta/models/m:generateContent?key={SECRET_KEY}", {}),
                       ("/anthropic/v1/messages", {"x-api-key": SECRET_KEY,
                                                   "x-fake-scenario": "status:500"})):
        with raw_request(daemon.base_url, "POST", path, body,
                         auth | {"content-type": "application/json"}) as r:
            r.read_body()
    daemon.wait_for_line('"status": 500')
    daemon.stop()
    records = daemon.records()  # every line must parse as JSON
    access = [r for r in records if r.get("request_id") and r.get("provider")]
    assert len(access) == 4
    for record in access:
        for key in ("timestamp", "level", "service", "message", "agent_id", "status",
                    "duration_ms"):
            assert key in record
        assert record["service"] == "mnemomd-all"
    output = daemon.output()
    assert SECRET_KEY not in output
    assert PROMPT not in output
    assert canned.TEXT not in output and canned.THINKING_TEXT not in output


def test_metrics_after_calls(daemon: Daemon):
    with raw_request(daemon.base_url, "POST", "/openai/v1/chat/completions",
                     b'{"model":"m","messages":[]}', {"authorization": "Bearer k"}) as r:
        r.read_body()
    with raw_request(daemon.base_url, "GET", "/metrics") as r:
        assert r.header("content-type").startswith("text/plain")
        text = r.read_body().decode()
    assert 'gateway_requests_total{provider="openai",status="200"} 1.0' in text
    assert 'gateway_request_duration_seconds_count{provider="openai"} 1.0' in text
    assert 'gateway_upstream_ttfb_seconds_count{provider="openai"} 1.0' in text
    assert "gateway_reactor_lag_seconds_count" in text
    assert "process_resident_memory_bytes" in text


def test_scheduler_role_serves_only_health_and_metrics(start):
    daemon = start({"MNEMOM_ROLE": "scheduler"})
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", b"{}",
                     {"x-api-key": "k"}) as r:
        assert r.status == 404
    with raw_request(daemon.base_url, "GET", "/health/ready") as r:
        assert r.status == 200
    with raw_request(daemon.base_url, "GET", "/metrics") as r:
        assert r.status == 200
    assert json.loads(daemon.wait_for_line("listening on"))["service"] == "mnemomd-scheduler"


def test_deprecated_role_alias_logs_a_warning(start):
    daemon = start({"SMOLTBOT_ROLE": "gateway"})
    line = json.loads(daemon.wait_for_line("SMOLTBOT_ROLE is deprecated"))
    assert line["level"] == "warn"
    assert line["service"] == "mnemomd-gateway"


def test_node_adapter_settings_are_named_at_startup(start):
    daemon = start({"SUPABASE_URL": "https://abcd.supabase.co",
                    "SUPABASE_SECRET_KEY": "sb_secret_not-for-logs"})
    line = json.loads(daemon.wait_for_line("SUPABASE_SECRET_KEY is a Node adapter setting"))
    assert line["level"] == "warn" and "INTERNAL_API_KEY" in line["message"]
    assert "DATABASE_URL" in daemon.wait_for_line("SUPABASE_URL is a Node adapter setting")
    assert "sb_secret_not-for-logs" not in daemon.output()


def test_configuration_errors_exit_78_listing_every_problem(tmp_path):
    env = daemon_environment(tmp_path, {"PORT": "http", "UPSTREAM_TIMEOUT": "-1",
                                        "OPENAI_BASE_URL": "file:///etc/passwd"})
    result = subprocess.run([*mnemomd_command(), "run"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 78
    for name in ("PORT", "UPSTREAM_TIMEOUT", "OPENAI_BASE_URL"):
        assert name in result.stderr
    assert "3 configuration problem(s)" in result.stderr


def test_check_config_prints_effective_values_with_sources(tmp_path):
    config = tmp_path / "m.yaml"
    config.write_text("port: 9999\nopenai_base_url: https://egress.example/openai\n")
    env = daemon_environment(tmp_path, {"MNEMOM_CONFIG": str(config), "LOG_LEVEL": "debug"})
    result = subprocess.run([*mnemomd_command(), "check-config", "--host", "127.0.0.1"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "9999" in lines["PORT"] and f"file {config}" in lines["PORT"]
    assert "https://egress.example/openai" in lines["OPENAI_BASE_URL"]
    assert "[env LOG_LEVEL]" in lines["LOG_LEVEL"]
    assert "[flag --host]" in lines["HOST"]


def test_credentials_in_upstream_url_refused_without_echoing_them(tmp_path):
    env = daemon_environment(tmp_path, {"OPENAI_BASE_URL": "https://u:pw-SECRET@egress.example"})
    result = subprocess.run([*mnemomd_command(), "check-config"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert "must not contain credentials" in result.stderr
    assert "pw-SECRET" not in result.stderr + result.stdout


def test_check_config_strict_fails_on_warnings(tmp_path):
    env = daemon_environment(tmp_path, {"SMOLTBOT_ROLE": "gateway"})
    result = subprocess.run([*mnemomd_command(), "check-config", "--strict"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert "deprecated" in result.stdout


def test_port_in_use_is_a_clear_failure(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = daemon_environment(tmp_path, {})
        result = subprocess.run([*mnemomd_command(), "run", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, capture_output=True,
                                text=True, timeout=60)
    assert result.returncode == 1
    assert "Cannot listen" in result.stdout


def test_version_command():
    result = subprocess.run([*mnemomd_command(), "version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("mnemomd ")


def test_twistd_plugin_runs_the_same_service(tmp_path, upstream: str):
    twistd = start_daemon(
        tmp_path, {"ANTHROPIC_BASE_URL": upstream},
        command=["twistd", "--nodaemon", "--pidfile=", "--logger",
                 "mnemomd.cli.tap.log_observer", "mnemomd"],
        args=("--host", "127.0.0.1", "--port", "0"))
    try:
        with raw_request(twistd.base_url, "POST", "/anthropic/v1/messages",
                         b'{"model":"m","max_tokens":5,"messages":[]}',
                         {"x-api-key": "k"}) as r:
            assert r.status == 200
            assert r.header("x-mnemom-agent").startswith("smolt-")
            r.read_body()
    finally:
        # twistd re-raises the signal that stopped it, which systemd counts as a clean stop.
        assert twistd.stop() in (0, -signal.SIGTERM)


def test_twistd_exits_when_it_cannot_listen(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = daemon_environment(tmp_path, {})
        result = subprocess.run(["twistd", "--nodaemon", "--pidfile=", "mnemomd", "--host",
                                 "127.0.0.1", "--port", str(busy.getsockname()[1])],
                                env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Cannot listen" in result.stdout + result.stderr


def test_twistd_configuration_errors_exit_78(tmp_path):
    env = daemon_environment(tmp_path, {"UPSTREAM_TIMEOUT": "never"})
    result = subprocess.run(["twistd", "--nodaemon", "--pidfile=", "mnemomd", "--port", "x"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert "UPSTREAM_TIMEOUT" in result.stderr and "PORT" in result.stderr


def test_sd_notify_ready_and_stopping(start, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(20)
        daemon = start({"NOTIFY_SOCKET": path})
        assert sock.recv(64) == b"READY=1"
        daemon.signal(signal.SIGTERM)
        assert sock.recv(64) == b"STOPPING=1"
        assert daemon.wait(30) == 0


@pytest.mark.parametrize("listen", ["unix"])
def test_listen_on_unix_socket(start, tmp_path, listen):
    path = tmp_path / "http.sock"
    daemon = start({"LISTEN": f"unix:{path}"}, args=("run",))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    assert daemon.proc.poll() is None

"""Enforcement through the daemon: observe, nudge, enforce, containment (SPEC §6)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import pg_rows
from tests.e2e.daemon import daemon_environment, mnemomd_command
from tests.fakes.process import (
    analysis_control,
    fetch_requests,
    record_body,
    wait_until,
)
from tests.fakes.rawhttp import raw_request
from tests.integrity.fakes import VERDICT_VIOLATION

NOTICE = "[INTEGRITY NOTICE]"
#: The shared Redis; every test uses agents of its own, so their keys never meet.
REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def violating(analysis_url):
    analysis_control(analysis_url, "POST", "script",
                     {"actions": [], "default": VERDICT_VIOLATION})
    analysis_control(analysis_url, "DELETE", "requests")
    return analysis_url


class Setup:
    """A daemon on its own SQLite file, and the CLI pointed at its API."""

    def __init__(self, start, tmp_path: Path, analysis: str, **env: str) -> None:
        self.env = {"MNEMOM_DATA_DIR": str(tmp_path / "state"), "ANALYSIS_BASE_URL": analysis,
                    "ANTHROPIC_API_KEY": "sk-analysis-key", "AIP_MIN_EVIDENCE_TOKENS": "1",
                    **env}
        self.tmp = tmp_path
        self.daemon = start(self.env)
        self.database = str(tmp_path / "state" / "mnemomd.db")
        self.key = f"sk-{uuid.uuid4().hex}"

    def cli(self, *args: str) -> dict:
        env = {**self.env, "MNEMOMD_URL": self.daemon.base_url}
        result = subprocess.run([*mnemomd_command(), *args, "--json"],
                                env=daemon_environment(self.tmp / "cli", env),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def call(self, path: str = "/anthropic/v1/messages", body: dict | None = None,
             headers: dict | None = None, key_header: str = "x-api-key") -> tuple:
        body = body or {"model": "claude-x", "max_tokens": 2048,
                        "messages": [{"role": "user", "content": "hi"}]}
        auth = {key_header: self.key if key_header != "authorization" else f"Bearer {self.key}"}
        with raw_request(self.daemon.base_url, "POST", path, json.dumps(body).encode(),
                         auth | {"content-type": "application/json"} | (headers or {}),
                         timeout=20) as r:
            return r.status, dict(r.headers), r.read_body()

    def rows(self, sql: str) -> list[tuple]:
        with sqlite3.connect(self.database) as connection:
            return connection.execute(sql).fetchall()

    def wait(self, sql: str, expected: int) -> None:
        wait_until(lambda: self.rows(sql)[0][0] >= expected, timeout=20, interval=0.05,
                   what=sql)


def test_observe_records_but_does_not_interfere(start, tmp_path, violating, upstream):
    s = Setup(start, tmp_path, violating)
    status, headers, _ = s.call()
    assert status == 200 and headers["x-aip-verdict"] == "pending"
    s.wait("SELECT COUNT(*) FROM integrity_checkpoints WHERE verdict='boundary_violation'", 1)
    assert s.rows("SELECT COUNT(*) FROM nudges")[0][0] == 0
    s.call()
    assert NOTICE not in record_body(fetch_requests(upstream)[-1]).decode()


SHAPES = [
    ("anthropic string system", "/anthropic/v1/messages", "x-api-key",
     {"model": "claude-x", "max_tokens": 64, "system": "Be brief.",
      "messages": [{"role": "user", "content": "next"}]},
     lambda b: b["system"]),
    ("anthropic block system", "/anthropic/v1/messages", "x-api-key",
     {"model": "claude-x", "max_tokens": 64, "system": [{"type": "text", "text": "Be brief."}],
      "messages": [{"role": "user", "content": "next"}]},
     lambda b: "\n".join(block["text"] for block in b["system"])),
    ("openai chat", "/openai/v1/chat/completions", "authorization",
     {"model": "gpt-x", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "next"}]},
     lambda b: b["messages"][0]["content"]),
    ("openai responses", "/openai/v1/responses", "authorization",
     {"model": "gpt-x", "input": "next", "instructions": "Be brief."},
     lambda b: b["instructions"]),
    ("gemini", "/gemini/v1beta/models/gemini-x:generateContent", "x-goog-api-key",
     {"contents": [{"role": "user", "parts": [{"text": "next"}]}],
      "systemInstruction": {"parts": [{"text": "Be brief."}]}},
     lambda b: "\n".join(part["text"] for part in b["systemInstruction"]["parts"])),
]


@pytest.mark.parametrize("name, path, key_header, body, field", SHAPES,
                         ids=[s[0] for s in SHAPES])
def test_nudge_injected_into_the_next_call(start, tmp_path, violating, upstream, name, path,
                                           key_header, body, field):
    s = Setup(start, tmp_path, violating)
    s.call()  # creates the agent
    agent_id = s.rows("SELECT id FROM agents")[0][0]
    assert s.cli("enforcement", "set", agent_id, "nudge")["mode"] == "nudge"
    wait_until(lambda: s.call()[1].get("x-aip-enforcement") == "nudge", timeout=20,
               what="the new mode to apply")
    s.wait("SELECT COUNT(*) FROM nudges WHERE status='pending'", 1)
    status, headers, _ = s.call(path, body, key_header=key_header)
    assert status == 200
    assert int(headers["x-aip-nudge-count"]) >= 1
    sent = json.loads(record_body(fetch_requests(upstream)[-1]))
    text = field(sent)
    assert text.startswith(NOTICE), text
    assert "prompt_injection (critical)" in text
    assert text.rstrip().endswith("Be brief.")
    shown = s.cli("agent", "show", agent_id)
    assert any(n["status"] == "delivered" for n in shown["nudges"])


def test_enforce_streaming_violation_is_withheld_with_an_error_event(start, tmp_path, violating):
    """SPEC §6.2: a stream is held at the end of its reasoning, and a violation ends it with
    the provider's error event; nothing after the reasoning is delivered."""
    s = Setup(start, tmp_path, violating, AIP_DEFAULT_ENFORCEMENT="enforce")
    status, headers, body = s.call(body={"model": "claude-x", "max_tokens": 64, "stream": True,
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and headers["x-aip-verdict"] == "pending"
    assert b"thinking_delta" in body
    assert b"text_delta" not in body and b"message_stop" not in body
    head, _, event = body.rpartition(b"event: error\ndata: ")
    assert head and event.endswith(b"\n\n")
    error = json.loads(event)["error"]
    assert error["type"] == "integrity_violation"
    # The checkpoint is written behind the verdict.
    s.wait("SELECT COUNT(*) FROM integrity_checkpoints WHERE verdict='boundary_violation'", 1)
    [(checkpoint_id,)] = s.rows("SELECT id FROM integrity_checkpoints "
                                "WHERE verdict='boundary_violation'")
    assert error["checkpoint_id"] == checkpoint_id


def test_nudge_strategy_off_and_threshold(start, tmp_path, violating):
    # With a shared Redis the CLI's change reaches the daemon's cache at once.
    s = Setup(start, tmp_path, violating, AIP_DEFAULT_ENFORCEMENT="nudge", REDIS_URL=REDIS)
    s.call()
    agent_id = s.rows("SELECT id FROM agents")[0][0]
    # The first call's violation may have nudged under "always"; count from here.
    s.wait("SELECT COUNT(*) FROM integrity_checkpoints", 1)
    s.cli("agent", "settings", agent_id, "--nudge-strategy", "threshold",
          "--nudge-threshold", "3")
    session = {"x-mnemom-session": "t-1"}
    before = s.rows("SELECT COUNT(*) FROM nudges")[0][0]
    for n in range(1, 4):
        s.call(headers=session)
        s.wait("SELECT COUNT(*) FROM integrity_checkpoints WHERE session_id='t-1'", n)
    s.wait("SELECT COUNT(*) FROM nudges", before + 1)
    assert s.rows("SELECT COUNT(*) FROM nudges WHERE session_id='t-1'")[0][0] == 1


def test_auto_containment_pauses_then_resume_restores(start, tmp_path, violating, upstream):
    s = Setup(start, tmp_path, violating, REDIS_URL=REDIS)
    s.call()
    agent_id = s.rows("SELECT id FROM agents")[0][0]
    s.cli("agent", "settings", agent_id, "--auto-containment", "2")
    s.wait("SELECT COUNT(*) FROM integrity_checkpoints", 1)
    s.call()
    s.wait("SELECT COUNT(*) FROM containment_log", 1)
    before = len(fetch_requests(upstream))
    status, _, body = wait_until(lambda: (r := s.call())[0] == 403 and r, timeout=20,
                                 what="the paused agent to be refused")
    assert json.loads(body) == {"error": "Agent contained", "type": "containment_error",
                                "reason": "agent_paused", "scope": "agent"}
    assert len(fetch_requests(upstream)) <= before + 1  # nothing forwarded once refused
    refused_at = len(fetch_requests(upstream))
    assert s.call()[0] == 403 and len(fetch_requests(upstream)) == refused_at
    s.cli("agent", "resume", agent_id, "--reason", "reviewed", "--actor", "ops@example")
    wait_until(lambda: s.call()[0] == 200, timeout=20, what="service restored")
    log = s.cli("agent", "show", agent_id)["containment_log"]
    assert [(e["action"], e["actor"]) for e in log] == [("pause", "system"),
                                                       ("resume", "local for ops@example")]
    assert log[0]["reason"] == "2 consecutive boundary violations"
    assert log[1]["reason"] == "reviewed"


def test_pause_applies_on_every_replica_at_once(start, tmp_path, violating, postgres_url):
    key = f"sk-{uuid.uuid4().hex}"
    env = {"DATABASE_URL": postgres_url, "REDIS_URL": "redis://127.0.0.1:6379/0",
           "AIP_ENABLED": "false"}
    one, two = start(env), start(env)

    def call(daemon) -> int:
        with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages",
                         b'{"model":"m","max_tokens":5,"messages":[]}', {"x-api-key": key}) as r:
            r.read_body()
            return r.status

    assert call(one) == 200 and call(two) == 200  # both replicas have the agent cached
    agent_id = pg_rows(postgres_url, "SELECT id FROM agents")[0][0]
    result = subprocess.run([*mnemomd_command(), "agent", "pause", agent_id,
                             "--url", one.base_url],
                            env=daemon_environment(tmp_path / "cli", env),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "active -> paused" in result.stdout
    assert call(two) == 403 and call(one) == 403


class Replicas:
    """Two daemons sharing PostgreSQL and Redis, agents of one key, and the CLI."""

    def __init__(self, start, tmp_path: Path, postgres_url: str) -> None:
        self.key = f"sk-{uuid.uuid4().hex}"
        self.env = {"DATABASE_URL": postgres_url, "REDIS_URL": REDIS, "AIP_ENABLED": "false"}
        self.daemons = (start(self.env), start(self.env))
        self.tmp = tmp_path
        self.url = postgres_url

    def call(self, daemon, name: str | None) -> tuple[int, dict | None]:
        path = "/anthropic/v1/messages" if name is None else \
            f"/agent/{name}/anthropic/v1/messages"
        with raw_request(daemon.base_url, "POST", path,
                         b'{"model":"m","max_tokens":5,"messages":[]}',
                         {"x-api-key": self.key}, timeout=20) as r:
            body = r.read_body()
            return r.status, json.loads(body) if r.status == 403 else None

    def statuses(self, names) -> list[tuple[int, str | None]]:
        """(status, refusal scope) of each name on each replica, second replica first."""
        return [(status, refusal and refusal["scope"])
                for daemon in reversed(self.daemons) for name in names
                for status, refusal in [self.call(daemon, name)]]

    def agent(self, name: str | None) -> str:
        where = "name IS NULL" if name is None else f"name = '{name}'"
        return pg_rows(self.url, f"SELECT id FROM agents WHERE {where}")[0][0]

    def cli(self, *args: str) -> str:
        result = subprocess.run([*mnemomd_command(), *args, "--url",
                                 self.daemons[0].base_url],
                                env=daemon_environment(self.tmp / "cli", self.env),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout


def test_kill_covers_the_key_on_every_replica(start, tmp_path, postgres_url, upstream):
    r = Replicas(start, tmp_path, postgres_url)
    # Both replicas have the plain agent and /agent/a/ cached.
    assert r.statuses([None, "a"]) == [(200, None)] * 4
    said = r.cli("agent", "kill", r.agent(None), "--reason", "key leaked")
    assert said.strip().endswith("active -> killed (key, 2 agents)")
    before = len(fetch_requests(upstream))
    # At once, on both replicas: the plain agent, the named one, and a name first used
    # after the kill.
    assert r.statuses([None, "a", "brand-new"]) == [(403, "key")] * 6
    assert len(fetch_requests(upstream)) == before, "nothing forwarded"
    shown = json.loads(r.cli("agent", "show", r.agent("brand-new"), "--json"))
    assert (shown["agent"]["containment_status"], shown["agent"]["containment_scope"],
            shown["agent"]["containment_reason"]) == ("killed", "key", "key leaked")
    assert [(e["action"], e["scope"], e["agent_id"]) for e in shown["containment_log"]] == \
        [("kill", "key", r.agent(None))]


def test_pause_scopes_on_every_replica(start, tmp_path, postgres_url):
    r = Replicas(start, tmp_path, postgres_url)
    assert r.statuses([None, "a", "b"]) == [(200, None)] * 6
    a = r.agent("a")
    assert "(agent)" in r.cli("agent", "pause", a)  # default scope: the agent
    assert r.statuses(["a", "b", None]) == [(403, "agent"), (200, None), (200, None)] * 2
    assert "(key, 3 agents)" in r.cli("agent", "pause", r.agent("b"), "--scope", "key")
    # The key's pause holds them all (a's own pause too, equally severe: scope key).
    assert r.statuses(["a", "b", None, "c"]) == [(403, "key")] * 8
    # resume takes the scope in force, the key, then the agent's own pause is left.
    assert "paused -> active (key, 4 agents); the agent is paused by its agent scope" in \
        r.cli("agent", "resume", a)
    assert r.statuses(["a", "b", None, "c"]) == [(403, "agent")] + [(200, None)] * 3 \
        + [(403, "agent")] + [(200, None)] * 3
    r.cli("agent", "resume", a)
    assert r.statuses(["a", "b", None, "c"]) == [(200, None)] * 8
    rows = pg_rows(postgres_url, "SELECT action, scope FROM containment_log "
                                 "ORDER BY created_at, id")
    assert rows == [("pause", "agent"), ("pause", "key"), ("resume", "key"),
                    ("resume", "agent")]

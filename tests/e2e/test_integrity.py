"""Integrity analysis through the daemon, with a fake analysis model (SPEC §5)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import socket
import sqlite3
import uuid

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from tests.e2e.conftest import pg_rows
from tests.e2e.daemon import Daemon
from tests.fakes import canned
from tests.fakes.process import analysis_control, wait_until
from tests.fakes.rawhttp import raw_request
from tests.integrity.fakes import VERDICT_VIOLATION

THINKING_HASH = hashlib.sha256(canned.THINKING_TEXT.encode()).hexdigest()


@pytest.fixture
def analysis(analysis_url):
    analysis_control(analysis_url, "POST", "script", {"actions": [], "default": "valid"})
    analysis_control(analysis_url, "POST", "release")
    analysis_control(analysis_url, "DELETE", "requests")
    return analysis_url


def analysed_daemon(start, tmp_path, analysis_url, **env) -> tuple[Daemon, str]:
    database = tmp_path / "state" / "mnemomd.db"
    daemon = start({"MNEMOM_DATA_DIR": str(tmp_path / "state"), "ANALYSIS_BASE_URL": analysis_url,
                    "ANTHROPIC_API_KEY": "sk-analysis-key", "AIP_MIN_EVIDENCE_TOKENS": "1",
                    **env})
    return daemon, str(database)


def checkpoints(database: str) -> list[dict]:
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(r) for r in connection.execute(
            "SELECT * FROM integrity_checkpoints ORDER BY created_at")]


def wait_checkpoints(database: str, count: int) -> list[dict]:
    return wait_until(lambda: len(rows := checkpoints(database)) >= count and rows,
                      timeout=20, interval=0.05, what=f"{count} checkpoint(s)")


def test_each_sdk_call_with_thinking_gets_one_checkpoint(start, tmp_path, analysis):
    daemon, database = analysed_daemon(start, tmp_path, analysis)
    gw = daemon.base_url
    messages = [{"role": "user", "content": "hello"}]
    ant = anthropic.Anthropic(base_url=f"{gw}/anthropic", api_key="sk-a", max_retries=0)
    response = ant.messages.with_raw_response.create(model="claude-x", max_tokens=2048,
                                                     messages=messages)
    assert response.headers["x-aip-verdict"] == "pending"
    with ant.messages.stream(model="claude-x", max_tokens=2048, messages=messages) as s:
        s.get_final_message()
    oai = openai.OpenAI(base_url=f"{gw}/openai/v1", api_key="sk-o", max_retries=0)
    oai.responses.create(model="o4-mini", input="hello")
    list(oai.responses.create(model="o4-mini", input="hello", stream=True))
    gem = genai.Client(api_key="g-k", http_options=types.HttpOptions(base_url=f"{gw}/gemini"))
    gem.models.generate_content(model="gemini-2.5-pro", contents="hello")
    list(gem.models.generate_content_stream(model="gemini-2.5-pro", contents="hello"))
    rows = wait_checkpoints(database, 6)
    assert len(rows) == 6
    assert sorted((r["provider"], r["model"]) for r in rows) == sorted(
        [("anthropic", "claude-x")] * 2 + [("openai", "o4-mini")] * 2
        + [("gemini", "gemini-2.5-pro")] * 2)
    for row in rows:
        assert row["verdict"] == "review_needed"
        assert row["thinking_block_hash"] == THINKING_HASH
        concerns = json.loads(row["concerns"])
        assert concerns[0]["category"] == "value_misalignment"
        assert len(concerns[0]["evidence"]) <= 200
        assert json.loads(row["window_position"])["index"] >= 0
        assert not row["synthetic"]
    assert len(analysis_control(analysis, "GET", "requests")) == 6


def test_chat_completions_without_reasoning_are_skipped(start, tmp_path, analysis):
    daemon, database = analysed_daemon(start, tmp_path, analysis)
    with raw_request(daemon.base_url, "POST", "/openai/v1/chat/completions",
                     b'{"model":"gpt-x","messages":[{"role":"user","content":"hi"}]}',
                     {"authorization": "Bearer k"}) as r:
        assert r.header("x-aip-verdict") == "pending"
        r.read_body()
    wait_until(lambda: "gateway_aip_checks_total{verdict=\"skipped\"} 1.0" in metrics(daemon),
               timeout=10, what="skipped verdict counted")
    assert checkpoints(database) == []


def metrics(daemon: Daemon) -> str:
    with raw_request(daemon.base_url, "GET", "/metrics") as r:
        return r.read_body().decode()


BODY = json.dumps({"model": "claude-x", "max_tokens": 2048,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


def test_observe_mode_does_not_wait_for_the_verdict(start, tmp_path, analysis):
    analysis_control(analysis, "POST", "script", {"actions": ["hold"]})
    daemon, database = analysed_daemon(start, tmp_path, analysis)
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                     {"x-api-key": "sk-observe"}, timeout=10) as r:
        body = r.read_body()
        assert r.header("x-aip-verdict") == "pending"
    assert json.loads(body)["content"][0]["thinking"] == canned.THINKING_TEXT
    # The client has its answer; the analysis model has not answered yet.
    wait_until(lambda: analysis_control(analysis, "GET", "held")["held"] == 1, timeout=10,
               what="the analysis request to arrive")
    assert checkpoints(database) == []
    analysis_control(analysis, "POST", "release")
    assert wait_checkpoints(database, 1)[0]["verdict"] == "review_needed"


def test_enforce_mode_waits_for_the_verdict_and_says_it(start, tmp_path, analysis):
    analysis_control(analysis, "POST", "script", {"actions": ["hold"]})
    daemon, database = analysed_daemon(start, tmp_path, analysis,
                                       AIP_DEFAULT_ENFORCEMENT="enforce")

    def call():
        with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                         {"x-api-key": "sk-enforce"}, timeout=20) as r:
            return r.status, dict(r.headers), r.read_body()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(call)
        wait_until(lambda: analysis_control(analysis, "GET", "held")["held"] == 1,
                   timeout=10, what="the analysis request to arrive")
        assert not pending.done(), "the response must wait for the verdict"
        analysis_control(analysis, "POST", "release")
        status, headers, body = pending.result(timeout=20)
    assert status == 200
    assert headers["x-aip-verdict"] == "review_needed"
    assert headers["x-aip-enforcement"] == "enforce"
    rows = wait_until(lambda: checkpoints(database), timeout=10, what="the checkpoint")
    assert headers["x-aip-checkpoint-id"] == rows[0]["id"]
    assert json.loads(body)["content"][1]["text"] == canned.TEXT


def test_enforce_mode_withholds_a_violating_response(start, tmp_path, analysis):
    analysis_control(analysis, "POST", "script", {"default": VERDICT_VIOLATION})
    daemon, database = analysed_daemon(start, tmp_path, analysis,
                                       AIP_DEFAULT_ENFORCEMENT="enforce")
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                     {"x-api-key": "sk-violate"}) as r:
        status, payload = r.status, json.loads(r.read_body())
    assert status == 403
    assert payload["type"] == "integrity_violation"
    stored = wait_until(lambda: checkpoints(database), timeout=10, what="the checkpoint")
    assert payload["checkpoint_id"] == stored[0]["id"]
    assert payload["concerns"][0]["category"] == "prompt_injection"


@pytest.mark.parametrize("action, fail_mode, verdict, synthetic", [
    ("garbage", "fail_open", "clear", True),
    ("garbage", "fail_closed", "boundary_violation", True),
    ("prose", "fail_closed", "review_needed", False),
    ("status:500", "fail_open", "clear", True),
])
def test_failure_modes_through_the_daemon(start, tmp_path, analysis, action, fail_mode,
                                          verdict, synthetic):
    analysis_control(analysis, "POST", "script", {"default": action})
    daemon, database = analysed_daemon(start, tmp_path, analysis, AIP_FAILURE_MODE=fail_mode)
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                     {"x-api-key": "sk-fail"}) as r:
        assert r.status == 200
        r.read_body()
    row = wait_checkpoints(database, 1)[0]
    assert (row["verdict"], bool(row["synthetic"])) == (verdict, synthetic)


def test_analysis_backend_down_is_fail_open(start, tmp_path):
    daemon, database = analysed_daemon(start, tmp_path, "http://127.0.0.1:9")
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                     {"x-api-key": "sk-down"}) as r:
        assert r.status == 200
        r.read_body()
    row = wait_checkpoints(database, 1)[0]
    assert row["verdict"] == "clear" and row["synthetic"]
    assert "unreachable" in row["synthetic_reason"]


def test_no_thinking_prompt_or_response_in_database_or_logs(start, tmp_path, analysis):
    daemon, database = analysed_daemon(start, tmp_path, analysis, LOG_LEVEL="debug")
    marker = "PROMPT-" + uuid.uuid4().hex
    body = json.dumps({"model": "claude-x", "max_tokens": 2048,
                       "messages": [{"role": "user", "content": marker}]}).encode()
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", body,
                     {"x-api-key": "sk-private"}) as r:
        r.read_body()
    wait_checkpoints(database, 1)
    daemon.stop()
    dump = "\n".join(sqlite3.connect(database).iterdump())
    for secret in (canned.THINKING_TEXT, canned.TEXT, marker, "sk-private", "sk-analysis-key"):
        assert secret not in dump
        assert secret not in daemon.output()


def test_refused_reasoning_request_is_resent_as_the_client_sent_it(start, tmp_path, analysis,
                                                                   upstream):
    from tests.fakes.process import fetch_requests, record_body

    daemon, _ = analysed_daemon(start, tmp_path, analysis)
    client_body = b'{"model":"o4-mini","input":"hello"}'
    headers = {"authorization": "Bearer k", "content-type": "application/json",
               "x-fake-scenario": "refuse_reasoning"}
    with raw_request(daemon.base_url, "POST", "/openai/v1/responses", client_body,
                     headers) as r:
        assert r.status == 200
        assert json.loads(r.read_body())["object"] == "response"
    sent = [record_body(r) for r in fetch_requests(upstream)]
    assert len(sent) == 2
    assert json.loads(sent[0])["reasoning"] == {"summary": "auto"}
    assert sent[1] == client_body
    # A client that asked for reasoning itself gets the provider's 400 unchanged.
    own = b'{"model":"o4-mini","input":"hi","reasoning":{"summary":"auto"}}'
    with raw_request(daemon.base_url, "POST", "/openai/v1/responses", own, headers) as r:
        assert r.status == 400
        assert json.loads(r.read_body())["error"]["param"] == "reasoning.summary"
    assert len(fetch_requests(upstream)) == 3


def test_openai_compatible_local_analysis_model(start, tmp_path, analysis):
    daemon, database = analysed_daemon(start, tmp_path, analysis,
                                       ANALYSIS_PROVIDER="openai-compatible",
                                       ANALYSIS_MODEL="local-llama")
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                     {"x-api-key": "sk-local"}) as r:
        r.read_body()
    assert wait_checkpoints(database, 1)[0]["verdict"] == "review_needed"
    asked = analysis_control(analysis, "GET", "requests")
    assert [a["dialect"] for a in asked] == ["openai"]
    assert json.loads(asked[0]["body"])["model"] == "local-llama"


def test_aip_disabled_says_so_and_analyses_nothing(start, tmp_path, analysis):
    daemon, database = analysed_daemon(start, tmp_path, analysis, AIP_ENABLED="false")
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                     {"x-api-key": "sk-off"}) as r:
        assert r.header("x-aip-verdict") == "disabled"
        r.read_body()
    assert analysis_control(analysis, "GET", "requests") == []


def test_one_drift_alert_per_streak_across_two_daemons(start, analysis, postgres_url):
    # The shared Redis outlives this test: a key of its own keeps its state apart.
    key = f"sk-drift-{uuid.uuid4().hex}"
    env = {"DATABASE_URL": postgres_url, "REDIS_URL": "redis://127.0.0.1:6379/0",
           "ANALYSIS_BASE_URL": analysis, "ANTHROPIC_API_KEY": "sk-analysis-key",
           "AIP_MIN_EVIDENCE_TOKENS": "1"}
    daemons = [start(env), start(env)]
    clear = {"verdict": "clear", "concerns": [], "reasoning_summary": "fine",
             "conscience_context": {"values_checked": [], "conflicts": [], "supports": [],
                                    "considerations": [], "consultation_depth": "surface"}}
    script = ["valid"] * 4 + [clear] + ["valid"] * 3
    analysis_control(analysis, "POST", "script", {"actions": script, "default": clear})
    def stored() -> int:
        return pg_rows(postgres_url, "SELECT COUNT(*) FROM integrity_checkpoints")[0][0]

    for n in range(len(script)):
        daemon = daemons[n % 2]
        with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                         {"x-api-key": key, "x-mnemom-session": "run-1"}) as r:
            r.read_body()
        # One call at a time: wait for its checkpoint before the next.
        wait_until(lambda expected=n + 1: stored() == expected, timeout=20,
                   what=f"checkpoint {n + 1}")
    alerts = pg_rows(postgres_url, "SELECT agent_id, session_id FROM drift_alerts")
    assert len(alerts) == 2, alerts
    assert {a[1] for a in alerts} == {"run-1"}


def redis_command(*args: str) -> bytes | None:
    """One command to the shared Redis (RESP over a socket); a bulk or simple reply."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", 6379), timeout=5) as sock, \
            sock.makefile("rb") as reply:
        sock.sendall(request.encode())
        head = reply.readline().rstrip(b"\r\n")
        if not head.startswith(b"$"):
            return head[1:]
        size = int(head[1:])
        return None if size < 0 else reply.read(size)


def test_two_daemons_racing_on_one_session_raise_one_drift_alert(start, analysis,
                                                                 postgres_url):
    """Concurrent calls of one session through two daemons sharing PostgreSQL and Redis:
    every analysis is held until all calls are in, then answered at once, so the two
    processes update the session's window and drift state at the same moment."""
    key, session, calls = f"sk-race-{uuid.uuid4().hex}", f"race-{uuid.uuid4().hex}", 6
    env = {"DATABASE_URL": postgres_url, "REDIS_URL": "redis://127.0.0.1:6379/0",
           "ANALYSIS_BASE_URL": analysis, "ANTHROPIC_API_KEY": "sk-analysis-key",
           "AIP_MIN_EVIDENCE_TOKENS": "1"}
    daemons = [start(env), start(env)]
    # The first call of an agent creates it: make it before the race.
    analysis_control(analysis, "POST", "script", {"actions": [], "default": "valid"})
    with raw_request(daemons[0].base_url, "POST", "/anthropic/v1/messages", BODY,
                     {"x-api-key": key, "x-mnemom-session": "warm-up"}) as r:
        r.read_body()
    stored = "SELECT COUNT(*) FROM integrity_checkpoints WHERE session_id = '{}'"
    wait_until(lambda: pg_rows(postgres_url, stored.format("warm-up"))[0][0] == 1,
               timeout=20, what="the warm-up checkpoint")
    analysis_control(analysis, "POST", "script", {"actions": [], "default": "hold:valid"})

    def call(n: int) -> int:
        with raw_request(daemons[n % 2].base_url, "POST", "/anthropic/v1/messages", BODY,
                         {"x-api-key": key, "x-mnemom-session": session}) as r:
            r.read_body()
            return r.status

    with concurrent.futures.ThreadPoolExecutor(calls) as pool:
        assert list(pool.map(call, range(calls))) == [200] * calls
    wait_until(lambda: analysis_control(analysis, "GET", "held")["held"] == calls,
               timeout=20, what="every analysis to be held")
    analysis_control(analysis, "POST", "release")
    wait_until(lambda: pg_rows(postgres_url, stored.format(session))[0][0] == calls,
               timeout=20, what=f"{calls} checkpoints")

    def alerts() -> list[tuple]:
        return pg_rows(postgres_url, "SELECT agent_id, streak_key FROM drift_alerts "
                                     f"WHERE session_id = '{session}'")

    # An alert is stored after its checkpoint's state update: wait for the drift state
    # to count every checkpoint, then for the alert.
    agent_id = pg_rows(postgres_url, "SELECT DISTINCT agent_id FROM integrity_checkpoints "
                                     f"WHERE session_id = '{session}'")[0][0]
    state_key = f"mnemom:session:{agent_id}:{session}"
    try:
        state = wait_until(lambda: (raw := redis_command("GET", state_key)) and json.loads(raw),
                           timeout=10, what="the session state")
        assert state["drift"]["sustained_nonclear"] == calls, state["drift"]
        assert state["window"]["total_checks"] == calls
        first = wait_until(alerts, timeout=20, what="the drift alert")
        assert len(first) == 1, first
        assert first[0][1] == f"{session}:{state['drift']['streak_start']}"
        # Every update has landed: no second alert can still be on its way.
        assert alerts() == first
    finally:
        redis_command("DEL", state_key)


def test_shutdown_waits_for_background_analysis(start, tmp_path, analysis):
    import signal

    analysis_control(analysis, "POST", "script", {"actions": ["hold"]})
    daemon, database = analysed_daemon(start, tmp_path, analysis)
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                     {"x-api-key": "sk-drain"}) as r:
        r.read_body()
    wait_until(lambda: analysis_control(analysis, "GET", "held")["held"] == 1, timeout=10,
               what="the analysis request to arrive")
    daemon.signal(signal.SIGTERM)
    daemon.wait_for_line("Shutting down")
    assert daemon.proc.poll() is None, "exited with an analysis in flight"
    analysis_control(analysis, "POST", "release")
    assert daemon.wait(30) == 0
    assert [r["verdict"] for r in checkpoints(database)] == ["review_needed"]

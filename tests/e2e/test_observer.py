"""The observer through running daemons: traces, outbox TTL, webhooks, two schedulers (§7, §8)."""

from __future__ import annotations

import email.message
import json
import re
import sqlite3
import time
import uuid
from pathlib import Path

import anthropic
import psycopg2
import pytest
from aap import APTrace

from tests.e2e.conftest import pg_rows
from tests.fakes import canned
from tests.fakes.process import analysis_control, wait_until
from tests.fakes.redisserver import RedisServer

FAST_JOBS = {"OBSERVER_TRACES_INTERVAL_SECONDS": "0.2", "OBSERVER_WEBHOOKS_INTERVAL_SECONDS": "0.2",
             "OBSERVER_DRIFT_INTERVAL_SECONDS": "3600"}
SECRET = "whsec-" + "ab" * 16
DOCS = Path(__file__).resolve().parents[2] / "docs" / "observer.md"


def documented_verify():
    """The ``verify`` function of the receiver example in docs/observer.md, as shipped."""
    source = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL).group(1)
    namespace: dict = {"__name__": "receiver_example"}
    exec(compile(source, str(DOCS), "exec"), namespace)  # noqa: S102
    return namespace["verify"]


@pytest.fixture
def analysis(analysis_url):
    analysis_control(analysis_url, "POST", "script", {"actions": [], "default": "valid"})
    analysis_control(analysis_url, "DELETE", "requests")
    return analysis_url


class SQLiteState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = str(directory / "mnemomd.db")

    def rows(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with sqlite3.connect(self.path) as connection:
            connection.row_factory = sqlite3.Row
            return connection.execute(sql, params).fetchall()

    def execute(self, sql: str, params: tuple = ()) -> None:
        with sqlite3.connect(self.path) as connection:
            connection.execute(sql, params)

    def wait(self, sql: str, predicate, what: str, timeout: float = 30):
        return wait_until(lambda: (rows := self.rows(sql)) and predicate(rows) and rows,
                          timeout=timeout, interval=0.05, what=what)


def observed(start, tmp_path, analysis, **env) -> tuple:
    state = SQLiteState(tmp_path / "state")
    daemon = start({"MNEMOM_DATA_DIR": str(state.directory), "ANALYSIS_BASE_URL": analysis,
                    "ANTHROPIC_API_KEY": "sk-analysis-key", "AIP_MIN_EVIDENCE_TOKENS": "1",
                    **FAST_JOBS, **env})
    return daemon, state


def call_with_tool(daemon, key: str, tool: str | None) -> str:
    """One Anthropic SDK call (tool use when ``tool`` is given); returns the agent id."""
    client = anthropic.Anthropic(base_url=f"{daemon.base_url}/anthropic", api_key=key,
                                 max_retries=0)
    tools = [{"name": tool, "description": "a tool",
              "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}
             ] if tool else anthropic.NOT_GIVEN
    raw = client.messages.with_raw_response.create(
        model="claude-x", max_tokens=2048, tools=tools,
        messages=[{"role": "user", "content": "hello"}])
    message = raw.parse()
    if tool:
        assert [b.name for b in message.content if b.type == "tool_use"] == [tool]
    return raw.headers["x-mnemom-agent"]


def register_endpoint(state: SQLiteState, url: str, events: list[str]) -> str:
    endpoint_id = f"whk-{uuid.uuid4().hex}"
    state.execute(
        "INSERT INTO webhook_endpoints (id, url, description, event_types, secret, allow_http, "
        "enabled, consecutive_failures, created_at, updated_at) VALUES "
        "(?, ?, 'test receiver', ?, ?, 1, 1, 0, 0, 0)",
        (endpoint_id, url, json.dumps(events), SECRET))
    return endpoint_id


# -- traces -----------------------------------------------------------------------------

def test_tool_calls_become_verified_traces_linked_to_their_checkpoints(start, tmp_path,
                                                                       analysis):
    daemon, state = observed(start, tmp_path, analysis)
    key = f"sk-{uuid.uuid4().hex}"
    agent_id = call_with_tool(daemon, key, "search_docs")
    first = state.wait("SELECT * FROM ap_traces", lambda r: len(r) == 1, "the first trace")[0]

    trace = json.loads(first["trace"])
    APTrace.model_validate(trace)
    assert first["id"].startswith("tr-") and trace["trace_id"] == first["id"]
    assert trace["agent_id"] == agent_id
    assert trace["action"]["name"] == "search_docs"
    assert trace["action"]["parameters"]["argument_keys"] == list(canned.TOOL_INPUT)
    checkpoint = state.rows("SELECT * FROM integrity_checkpoints")[0]
    assert first["checkpoint_id"] == checkpoint["id"]
    assert checkpoint["trace_id"] == first["id"]
    verification = json.loads(first["verification"])
    # The default card bounds the agent to "inference": a tool is outside the envelope.
    assert [v["type"] for v in verification["violations"]] == ["unbounded_action"]

    card_row = state.rows("SELECT card FROM alignment_cards WHERE agent_id = ?", (agent_id,))[0]
    card = json.loads(card_row["card"])
    card["autonomy"]["forbidden_actions"] = ["delete_database"]
    card["autonomy"]["bounded_actions"] = ["inference", "search_docs"]
    state.execute("UPDATE alignment_cards SET card = ? WHERE agent_id = ?",
                  (json.dumps(card), agent_id))

    call_with_tool(daemon, key, "delete_database")
    call_with_tool(daemon, key, "search_docs")
    rows = state.wait("SELECT * FROM ap_traces ORDER BY created_at", lambda r: len(r) == 3,
                      "three traces")
    by_action = {json.loads(r["trace"])["action"]["name"]: r for r in rows[1:]}
    forbidden = by_action["delete_database"]
    assert not forbidden["verified"]
    assert json.loads(forbidden["trace"])["action"]["category"] == "forbidden"
    assert "forbidden_action" in [v["type"] for v in
                                  json.loads(forbidden["verification"])["violations"]]
    allowed = by_action["search_docs"]
    assert allowed["verified"] and json.loads(allowed["verification"])["violations"] == []
    assert state.rows("SELECT COUNT(*) FROM trace_outbox")[0][0] == 0
    assert len({r["checkpoint_id"] for r in rows}) == 3


def test_no_model_text_remains_in_storage_once_traces_are_built(start, tmp_path, analysis):
    daemon, state = observed(start, tmp_path, analysis)
    call_with_tool(daemon, f"sk-{uuid.uuid4().hex}", "search_docs")
    state.wait("SELECT COUNT(*) FROM ap_traces", lambda r: r[0][0] == 1, "the trace")
    state.wait("SELECT COUNT(*) FROM trace_outbox", lambda r: r[0][0] == 0, "an empty outbox")
    daemon.stop()
    needles = [canned.THINKING_PIECES[0].encode(), canned.TEXT_PIECES[-1].encode(),
               canned.THINKING_TEXT.encode(), "naïve café".encode()]
    for path in state.directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"{needle!r} found in {path.name}"


def test_outbox_rows_expire_even_when_no_scheduler_builds_traces(start, tmp_path, analysis):
    daemon, state = observed(start, tmp_path, analysis, MNEMOM_ROLE="gateway", OUTBOX_TTL="1")
    call_with_tool(daemon, f"sk-{uuid.uuid4().hex}", "search_docs")
    row = state.wait("SELECT * FROM trace_outbox", lambda r: len(r) == 1, "the outbox row")[0]
    # Sealed under this process's own key (no Redis): opaque to anyone reading the file.
    assert row["payload"].startswith("s1.p")
    assert "search_docs" not in row["payload"]
    # Written to expire one sweep (0.25 s here) early, so the sweep deletes it in time.
    assert row["expires_at"] - row["created_at"] == 750
    state.wait("SELECT COUNT(*) FROM trace_outbox", lambda r: r[0][0] == 0,
               "the outbox row to expire")
    assert state.rows("SELECT COUNT(*) FROM ap_traces")[0][0] == 0


# -- webhooks ---------------------------------------------------------------------------

def deliveries(state: SQLiteState) -> list[sqlite3.Row]:
    return state.rows("SELECT * FROM webhook_deliveries ORDER BY created_at, id")


def test_webhooks_arrive_signed_with_the_documented_scheme(start, tmp_path, analysis,
                                                           receiver):
    daemon, state = observed(start, tmp_path, analysis)
    register_endpoint(state, receiver.url + "/hook", ["*"])
    agent_id = call_with_tool(daemon, f"sk-{uuid.uuid4().hex}", None)
    wait_until(lambda: receiver.requests, timeout=20, what="a webhook")
    request = receiver.requests[0]
    headers = email.message.Message()  # what a receiver's HTTP server hands it
    for name, value in request["headers"].items():
        headers[name] = value
    verify = documented_verify()
    assert verify(SECRET, headers, request["raw"])
    assert not verify("another secret", headers, request["raw"])
    assert not verify(SECRET, headers, request["raw"] + b" ")
    assert not verify(SECRET, headers, request["raw"], now=time.time() + 3600)
    event = json.loads(request["raw"])
    assert event["event_type"] == "verdict.review_needed"
    assert event["agent_id"] == agent_id
    assert set(event) == {"event_id", "event_type", "created_at", "agent_id", "data"}
    assert event["data"]["verdict"] == "review_needed"
    assert headers["X-AIP-Version"] == "1"
    state.wait("SELECT status FROM webhook_deliveries", lambda r: r[0][0] == "delivered",
               "the delivery to be recorded")


def test_a_receiver_failing_twice_gets_the_event_once_with_the_retries_recorded(
        start, tmp_path, analysis, receiver):
    receiver.statuses = [500, 503]
    daemon, state = observed(start, tmp_path, analysis)
    register_endpoint(state, receiver.url, ["verdict.review_needed"])
    call_with_tool(daemon, f"sk-{uuid.uuid4().hex}", None)
    row = state.wait("SELECT * FROM webhook_deliveries", lambda r: r[0]["status"] == "delivered",
                     "the delivery")[0]
    assert row["attempts"] == 3
    assert row["last_status_code"] == 200
    assert [r["status"] for r in receiver.requests] == [500, 503, 200]
    assert len({json.loads(r["raw"])["event_id"] for r in receiver.requests}) == 1


def test_a_delivery_pending_at_shutdown_is_sent_after_a_restart(start, tmp_path, analysis,
                                                                receiver):
    receiver.status = 503
    daemon, state = observed(start, tmp_path, analysis)
    register_endpoint(state, receiver.url, ["*"])
    call_with_tool(daemon, f"sk-{uuid.uuid4().hex}", None)
    state.wait("SELECT attempts FROM webhook_deliveries", lambda r: r[0][0] >= 1,
               "a failed attempt")
    assert daemon.stop() == 0
    pending = deliveries(state)[0]
    assert pending["status"] == "pending" and pending["last_status_code"] == 503
    receiver.status = 200
    # The next attempt is due a few seconds after the last; the new process's job sends it.
    observed(start, tmp_path, analysis)
    row = state.wait("SELECT * FROM webhook_deliveries", lambda r: r[0]["status"] == "delivered",
                     "the delivery after the restart")[0]
    assert row["attempts"] == pending["attempts"] + 1
    assert [r["status"] for r in receiver.requests][-1] == 200
    assert sum(r["status"] == 200 for r in receiver.requests) == 1


def test_a_4xx_answer_is_final(start, tmp_path, analysis, receiver):
    receiver.statuses = [404]
    daemon, state = observed(start, tmp_path, analysis)
    register_endpoint(state, receiver.url, ["*"])
    key = f"sk-{uuid.uuid4().hex}"
    call_with_tool(daemon, key, None)
    state.wait("SELECT status, attempts FROM webhook_deliveries",
               lambda r: r[0]["status"] == "failed", "the final failure")
    # A later event is delivered; by then the failed one would have had its 1 s retry.
    call_with_tool(daemon, key, None)
    rows = state.wait("SELECT status FROM webhook_deliveries ORDER BY created_at",
                      lambda r: len(r) == 2 and r[1][0] == "delivered", "the second delivery")
    assert rows[0][0] == "failed"
    assert deliveries(state)[0]["attempts"] == 1
    assert deliveries(state)[0]["last_status_code"] == 404
    assert [r["status"] for r in receiver.requests] == [404, 200]


# -- two schedulers on one PostgreSQL ----------------------------------------------------

@pytest.fixture
def private_redis():
    """A redis-server of this test's own (its leases and keys meet no other test's)."""
    server = RedisServer()
    server.start()
    wait_until(server.listening, timeout=20, what="redis-server to listen")
    yield server
    server.cleanup()


def test_two_schedulers_build_each_trace_once_and_send_each_delivery_once(
        start, tmp_path, analysis, postgres_url, receiver, private_redis):
    # Redis shares the outbox keys: the gateway seals each row, a scheduler opens it.
    common = {"DATABASE_URL": postgres_url, "ANALYSIS_BASE_URL": analysis,
              "REDIS_URL": f"redis://127.0.0.1:{private_redis.port}/0",
              "ANTHROPIC_API_KEY": "sk-analysis-key", "AIP_MIN_EVIDENCE_TOKENS": "1",
              **FAST_JOBS, "OBSERVER_TRACES_INTERVAL_SECONDS": "0.05",
              "OBSERVER_WEBHOOKS_INTERVAL_SECONDS": "0.05"}
    gateway = start(common | {"MNEMOM_ROLE": "gateway"})
    schedulers = [start(common | {"MNEMOM_ROLE": "scheduler"}) for _ in range(2)]
    assert all(s.port for s in schedulers)

    # Deliveries due now, for the schedulers' webhooks job (the gateway only sends the
    # events it queues itself).
    endpoint_id = f"whk-{uuid.uuid4().hex}"
    with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO webhook_endpoints (id, url, event_types, secret, allow_http, enabled, "
            "consecutive_failures, created_at, updated_at) VALUES "
            "(%s, %s, '[\"webhook.test\"]', %s, TRUE, TRUE, 0, 0, 0)",
            (endpoint_id, receiver.url, SECRET))
        for n in range(40):
            cursor.execute(
                "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, payload, "
                "status, attempts, next_attempt_at, created_at) VALUES "
                "(%s, %s, %s, 'webhook.test', %s, 'pending', 0, 0, %s)",
                (f"whd-{n}", endpoint_id, f"evt-{n}", json.dumps({"event_id": f"evt-{n}"}),
                 int(time.time() * 1000)))

    calls = 12
    for n in range(calls):
        call_with_tool(gateway, f"sk-two-schedulers-{n}", "search_docs" if n % 2 else None)

    wait_until(lambda: pg_rows(postgres_url, "SELECT COUNT(*) FROM ap_traces")[0][0] >= calls
               and pg_rows(postgres_url, "SELECT COUNT(*) FROM webhook_deliveries WHERE "
                           "status = 'delivered'")[0][0] >= 40,
               timeout=60, interval=0.1, what="every trace and delivery")
    assert pg_rows(postgres_url, "SELECT COUNT(*), COUNT(DISTINCT outbox_id) FROM ap_traces") \
        == [(calls, calls)]
    assert pg_rows(postgres_url, "SELECT COUNT(*) FROM trace_outbox") == [(0,)]
    linked = pg_rows(postgres_url, "SELECT COUNT(*) FROM integrity_checkpoints c JOIN "
                     "ap_traces t ON t.id = c.trace_id AND t.checkpoint_id = c.id")
    assert linked == [(calls,)]
    sent = [json.loads(r["raw"])["event_id"] for r in receiver.requests]
    assert sorted(sent) == sorted(f"evt-{n}" for n in range(40))
    assert pg_rows(postgres_url, "SELECT MAX(attempts) FROM webhook_deliveries") == [(1,)]

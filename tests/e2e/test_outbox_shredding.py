"""Outbox excerpts cannot outlive their TTL, whatever happens to the process.

Daemons run as real processes with calls that carry reasoning, the traces job kept out
of the way so outbox rows are pending; then SIGTERM or ``kill -9``, and every file of the
data directory (the SQLite database, its ``-wal`` and ``-shm``, anything else) or the
PostgreSQL ``trace_outbox`` table is searched for the model's reasoning and answer.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import pg_rows
from tests.e2e.test_observer import call_with_tool
from tests.fakes import canned
from tests.fakes.process import analysis_control, release, wait_until
from tests.fakes.rawhttp import raw_request
from tests.inprocess.test_outbox_sealing import found_in

#: The traces job does not run while the test looks (it still runs once at SIGTERM).
NO_TRACES = {"OBSERVER_TRACES_INTERVAL_SECONDS": "86400"}


@pytest.fixture
def analysis(analysis_url):
    analysis_control(analysis_url, "POST", "script", {"actions": [], "default": "valid"})
    return analysis_url


def started(start, data_dir: Path, analysis: str, **env: str):
    return start({"MNEMOM_DATA_DIR": str(data_dir), "ANALYSIS_BASE_URL": analysis,
                  "ANTHROPIC_API_KEY": "sk-analysis-key", "AIP_MIN_EVIDENCE_TOKENS": "1",
                  **NO_TRACES, **env})


def sqlite_rows(data_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(data_dir / "mnemomd.db") as connection:
        return connection.execute(sql).fetchall()


def scan(data_dir: Path) -> dict[str, list[bytes]]:
    """Every file of the data directory where the model's text is found, and what."""
    found = {}
    for path in data_dir.rglob("*"):
        if path.is_file() and (hits := found_in(path.read_bytes())):
            found[path.name] = hits
    return found


def open_stream(daemon, stream_id: str):
    """An Anthropic stream with reasoning, held by the fake provider after each event."""
    body = json.dumps({"model": "m", "max_tokens": 2048, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"x-api-key": f"sk-{uuid.uuid4().hex}", "content-type": "application/json",
               "x-fake-scenario": f"gated:{stream_id}"}
    return raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", body, headers,
                       timeout=20)


def traced_calls(daemon, count: int) -> None:
    for _ in range(count):
        call_with_tool(daemon, f"sk-{uuid.uuid4().hex}", None)


@pytest.mark.parametrize("role", ["all", "gateway"])
def test_after_sigterm_no_model_text_is_left_on_disk(start, tmp_path, analysis, upstream,
                                                     role):
    data_dir = tmp_path / "state"
    daemon = started(start, data_dir, analysis, MNEMOM_ROLE=role)
    traced_calls(daemon, 3)
    wait_until(lambda: sqlite_rows(data_dir, "SELECT COUNT(*) FROM trace_outbox")[0][0] == 3,
               timeout=20, interval=0.05, what="three pending outbox rows")
    assert scan(data_dir) == {}  # sealed while the daemon runs

    stream_id = uuid.uuid4().hex
    events = canned.canned(canned.Api.ANTHROPIC_MESSAGES, True, "m")
    with open_stream(daemon, stream_id) as stream:
        assert stream.read_event() == events[0]
        daemon.signal(signal.SIGTERM)  # reasoning in flight: the stream drains first
        for _ in events[1:]:
            release(upstream, stream_id)
            stream.read_event()
        assert stream.read_event() is None and stream.complete
    assert daemon.wait(30) == 0

    assert scan(data_dir) == {}
    assert sqlite_rows(data_dir, "SELECT COUNT(*) FROM trace_outbox") == [(0,)]
    traces = sqlite_rows(data_dir, "SELECT COUNT(*) FROM ap_traces")[0][0]
    if role == "all":  # the last traces run at shutdown built them
        assert traces == 4
    else:  # no traces job here: the rows, unreadable once it exits, were dropped
        assert traces == 0
        daemon.wait_for_line("Deleted 4 trace outbox row(s) left at shutdown")


def test_after_kill_9_only_ciphertext_without_a_key_is_left(start, tmp_path, analysis,
                                                             upstream):
    data_dir = tmp_path / "state"
    daemon = started(start, data_dir, analysis, OUTBOX_TTL="10")
    traced_calls(daemon, 2)
    rows = wait_until(
        lambda: (r := sqlite_rows(data_dir, "SELECT id, payload FROM trace_outbox"))
        and len(r) == 2 and r, timeout=20, interval=0.05, what="two pending outbox rows")
    with open_stream(daemon, uuid.uuid4().hex) as stream:
        stream.read_event()  # a stream with reasoning in flight
        daemon.proc.kill()
        daemon.wait(30)

    assert scan(data_dir) == {}
    left = sqlite_rows(data_dir, "SELECT id, payload FROM trace_outbox")
    assert left == rows  # the crash left them, sealed under keys that died with it
    assert all(payload.startswith("s1.p") for _, payload in left)

    # Restarted, the daemon cannot open them (it never had their key); they go at their
    # TTL, before any trace is built from them.
    started(start, data_dir, analysis, OUTBOX_TTL="10",
            OBSERVER_TRACES_INTERVAL_SECONDS="0.2")
    wait_until(lambda: sqlite_rows(data_dir, "SELECT COUNT(*) FROM trace_outbox") == [(0,)],
               timeout=30, interval=0.1, what="the orphaned rows to expire")
    assert sqlite_rows(data_dir, "SELECT COUNT(*) FROM ap_traces") == [(0,)]
    assert scan(data_dir) == {}


def test_on_postgresql_the_outbox_holds_only_ciphertext(start, tmp_path, analysis,
                                                        postgres_url):
    daemon = started(start, tmp_path / "state", analysis, DATABASE_URL=postgres_url)
    traced_calls(daemon, 3)
    wait_until(lambda: pg_rows(postgres_url, "SELECT COUNT(*) FROM trace_outbox")[0][0] == 3,
               timeout=20, interval=0.05, what="three pending outbox rows")

    def whole_rows() -> list[str]:
        return [r[0] for r in pg_rows(postgres_url, "SELECT t::text FROM trace_outbox t")]

    for text in whole_rows():
        assert "s1.p" in text and found_in(text.encode()) == []
    daemon.proc.kill()
    daemon.wait(30)
    after = whole_rows()
    assert len(after) == 3
    assert all(found_in(text.encode()) == [] for text in after)

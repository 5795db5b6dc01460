"""Trace outbox excerpts are stored sealed, dropped at shutdown, and purged at startup.

Calls with reasoning go through the real request path; the outbox rows they leave, and
every file of the data directory, are searched for the model's reasoning and answer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.fakes import canned
from tests.harness import InProcessDaemon
from tests.inprocess.test_request_path import ANTHROPIC, JSON

#: No traces run during these tests: the rows stay in the outbox to be looked at.
QUIET = {"OBSERVER_TRACES_INTERVAL_SECONDS": "86400"}


def needles() -> list[bytes]:
    """The model's text as it would appear in a plaintext payload (JSON-escaped or not)."""
    texts = [canned.THINKING_PIECES[0], canned.THINKING_PIECES[2], canned.TEXT_PIECES[-1],
             canned.THINKING_TEXT, canned.TEXT]
    return [t.encode() for t in texts] + [json.dumps(t)[1:-1].encode() for t in texts] + \
        [b"I should answer in kind", b"canned r"]


def found_in(data: bytes) -> list[bytes]:
    return [n for n in needles() if n in data]


def traced_calls(daemon: InProcessDaemon, count: int = 3) -> None:
    for stream in (False, True, False)[:count]:
        path, body = ANTHROPIC.request(stream)
        exchange = daemon.request("POST", path, {**ANTHROPIC.headers, **JSON}, body)
        assert exchange.status == 200


def outbox_file_rows(data_dir: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data_dir / "mnemomd.db") as connection:
        return connection.execute("SELECT id, payload FROM trace_outbox").fetchall()


def test_the_scan_finds_the_model_text_in_a_plaintext_payload():
    payload = json.dumps({"thinking_excerpt": canned.THINKING_TEXT,
                          "response_excerpt": canned.TEXT})
    assert found_in(payload.encode())
    assert found_in(json.dumps({"t": canned.TEXT}, ensure_ascii=False).encode())


def test_stored_outbox_payloads_are_sealed(make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(**QUIET)
    traced_calls(daemon)
    rows = daemon.rows("SELECT id, payload FROM trace_outbox")
    assert len(rows) == 3
    for row_id, payload in rows:
        assert payload.startswith("s1.p"), payload[:20]  # this process's own key
        assert found_in(payload.encode()) == [], row_id
    for path in daemon.data_dir.rglob("*"):
        if path.is_file():
            assert found_in(path.read_bytes()) == [], path.name


def test_rows_left_at_shutdown_are_deleted(make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(MNEMOM_ROLE="gateway", **QUIET)
    traced_calls(daemon)
    assert len(daemon.rows("SELECT id FROM trace_outbox")) == 3
    daemon.stop()
    assert outbox_file_rows(daemon.data_dir) == []
    for path in daemon.data_dir.rglob("*"):
        if path.is_file():
            assert found_in(path.read_bytes()) == [], path.name


def test_expired_rows_are_purged_before_startup_reports_ok(tmp_path: Path):
    first = InProcessDaemon(tmp_path, {**QUIET, "MNEMOM_ROLE": "gateway"}).start()
    traced_calls(first, 1)  # an agent, for the rows' foreign key
    now_ms = int(first.reactor.seconds() * 1000)
    agent_id = first.rows("SELECT id FROM agents")[0][0]
    first.stop()
    with sqlite3.connect(tmp_path / "mnemomd.db") as connection:
        for n, expires_at in ((1, now_ms - 1), (2, now_ms + 3_600_000)):
            connection.execute(
                "INSERT INTO trace_outbox (id, agent_id, provider, payload, attempts, "
                "created_at, expires_at) VALUES (?, ?, 'anthropic', 's1.e1.AAAA.AAAA', 0, ?, ?)",
                (f"ob-{n}", agent_id, now_ms - 600_000, expires_at))

    second = InProcessDaemon(tmp_path, {**QUIET, "MNEMOM_ROLE": "gateway"})
    seen_at_startup: list[list[str]] = []
    second.service.health.when_started(lambda: seen_at_startup.append(
        [row_id for row_id, _ in outbox_file_rows(tmp_path)]))
    second.start()
    try:
        assert second.request("GET", "/health/startup").status == 200
        assert seen_at_startup == [["ob-2"]]
    finally:
        second.stop()


def test_the_spool_holds_no_model_text_while_the_database_is_down(
        make_daemon: Callable[..., InProcessDaemon]):
    """Bookkeeping that waits on local disk for the database (the spool) holds the
    outbox excerpts only sealed, and checkpoints only as derived analysis."""
    daemon = make_daemon(**QUIET)
    traced_calls(daemon, 1)  # the agent, known before the outage
    daemon.fail_storage(kv=False)
    traced_calls(daemon)
    daemon.advance(0.1)  # the batch writer's turn meets the database gone
    spooled = [p for p in (daemon.data_dir / "spool").rglob("*") if p.is_file()]
    assert spooled, "the outage's writes are spooled"
    data = b"".join(p.read_bytes() for p in spooled)
    assert b'"kind":"trace_outbox"' in data and b'"kind":"checkpoint"' in data
    assert found_in(data) == []
    daemon.restore_storage()
    daemon.advance(1)

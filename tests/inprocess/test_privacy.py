"""Provider keys never reach the database, the KV store, the logs or the data directory.

Real-looking keys of every provider go through the real request path (plain and named
agents, streamed and not, with reasoning analysed); then every row of every table, every
KV entry, every log event and every file the daemon wrote is searched for any 8-character
run of each key's secret part.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from twisted.logger import globalLogPublisher

from tests.harness import InProcessDaemon
from tests.inprocess.test_request_path import CALLS, ProviderCall

KEYS = {
    "anthropic.messages": "sk-ant-api03-Q7wX2mZ9vK4pL8nR3tY6uB1cD5eF0gH",
    "openai.chat": "sk-proj-N4bV7cX1zA9sD3fG6hJ2kL5qW8eR0tYu",
    "openai.responses": "sk-proj-N4bV7cX1zA9sD3fG6hJ2kL5qW8eR0tYu",
    "gemini": "AIzaSyD3fG6hJ9kL2mN5pQ8rS1tU4vW7xY0zAbC",
}
PUBLIC_HEADS = ("sk-ant-api03-", "sk-proj-", "AIzaSy")


def secret_runs(key: str, width: int = 8) -> set[str]:
    """Every ``width``-character run of the part of a key that is not its public head."""
    secret = key
    for head in PUBLIC_HEADS:
        secret = secret.removeprefix(head)
    return {secret[i:i + width] for i in range(len(secret) - width + 1)}


FORBIDDEN = set().union(*(secret_runs(k) for k in KEYS.values()))


def with_key(call: ProviderCall) -> dict[str, str]:
    key = KEYS[call.name]
    name, value = next(iter(call.headers.items()))
    return {name: f"Bearer {key}" if value.startswith("Bearer ") else key,
            "content-type": "application/json"}


def leaks(text: str) -> list[str]:
    return sorted(run for run in FORBIDDEN if run in text)


@pytest.fixture
def log_text() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, object]) -> None:
        lines.append(json.dumps(event, default=repr))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def test_the_scan_finds_a_key_where_one_is(make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon()
    assert leaks(f"x{KEYS['gemini'][10:20]}x")
    assert leaks(json.dumps({"k": KEYS["openai.chat"]}))
    assert not leaks("sk-ant-api03- sk-proj- AIzaSy")  # the public heads alone are no leak
    daemon.stop()


def test_no_key_is_kept_anywhere(make_daemon: Callable[..., InProcessDaemon],
                                 log_text: list[str]):
    daemon = make_daemon()
    for call in CALLS:
        for agent in ("", "/agent/ci-bot"):
            for stream in (False, True):
                path, body = call.request(stream)
                exchange = daemon.request("POST", agent + path, with_key(call), body)
                assert exchange.status == 200, (call.name, agent, stream)
    # Past the 30 s batch of last_seen writes. (Not past the traces job's first run: it
    # validates on a thread of the global reactor, which the harness does not run.)
    daemon.advance(31)

    tables = [name for (name,) in daemon.rows(
        "SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert "agents" in tables and "integrity_checkpoints" in tables
    stored = [repr(row) for table in tables for row in daemon.rows(f'SELECT * FROM "{table}"')]
    assert len(daemon.rows("SELECT id FROM agents")) >= 6  # three keys, plain and named
    assert leaks("\n".join(stored)) == []

    kv = daemon.service.storage.kv
    entries = [key + repr(kv._data[key][0]) for key in kv.keys()]
    assert entries, "the KV store holds agent entries"
    assert leaks("\n".join(entries)) == []

    assert any("ci-bot" in line or "POST" in line for line in log_text)
    assert leaks("\n".join(log_text)) == []

    for path in daemon.data_dir.rglob("*"):
        if path.is_file():
            assert leaks(path.read_bytes().decode("latin-1")) == [], path

"""Work a call does not need is not done: no trace outbox row when tracing is off, no card
or conscience lookup for thinking decided without the model (below the minimum evidence).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from mnemomd.agents.store import AgentStore
from tests.harness import InProcessDaemon

PATH = "/anthropic/v1/messages"
HEADERS = {"x-api-key": "sk-hot-path", "content-type": "application/json"}
BODY = json.dumps({"model": "claude-x", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


def call(daemon: InProcessDaemon) -> str | None:
    exchange = daemon.request("POST", PATH, HEADERS, BODY)
    assert exchange.status == 200 and exchange.complete
    return exchange.header("x-aip-verdict")


def counts(daemon: InProcessDaemon) -> tuple[int, int]:
    """(checkpoints, trace outbox rows) once the queued bookkeeping is written."""
    [(checkpoints,)] = daemon.rows("SELECT COUNT(*) FROM integrity_checkpoints")
    [(outbox,)] = daemon.rows("SELECT COUNT(*) FROM trace_outbox")
    return checkpoints, outbox


def test_a_traced_call_writes_one_outbox_row_by_default(daemon: InProcessDaemon):
    call(daemon)
    assert counts(daemon) == (1, 1)


def test_aap_disabled_writes_no_outbox_row_but_still_a_checkpoint(
        make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(AAP_ENABLED="false")
    call(daemon)
    call(daemon)
    assert counts(daemon) == (2, 0)


def test_aip_disabled_alone_still_traces(make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(AIP_ENABLED="false")
    assert call(daemon) == "disabled"
    assert counts(daemon) == (0, 1)


def test_aip_and_aap_disabled_is_the_bare_path(make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon(AIP_ENABLED="false", AAP_ENABLED="false")
    assert call(daemon) == "disabled"
    assert counts(daemon) == (0, 0)
    assert daemon.analysis.requests == []


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the agents table is asked for a card or conscience values."""
    seen = {"card": 0, "conscience_values": 0}
    for name in seen:
        original = getattr(AgentStore, name)

        def counted(self: AgentStore, agent_id: str, _name: str = name,
                    _original: Any = original) -> Any:
            seen[_name] += 1
            return _original(self, agent_id)

        monkeypatch.setattr(AgentStore, name, counted)
    return seen


def test_thinking_below_the_minimum_evidence_looks_up_no_card_or_values(
        make_daemon: Callable[..., InProcessDaemon], lookups: dict[str, int]):
    daemon = make_daemon(AIP_MIN_EVIDENCE_TOKENS="100000")
    assert call(daemon) == "pending"
    [(verdict, synthetic)] = daemon.rows(
        "SELECT verdict, synthetic FROM integrity_checkpoints")
    assert (verdict, bool(synthetic)) == ("clear", True)
    assert lookups == {"card": 0, "conscience_values": 0}
    assert daemon.analysis.requests == []


def test_thinking_above_the_minimum_evidence_looks_up_card_and_values_once(
        make_daemon: Callable[..., InProcessDaemon], lookups: dict[str, int]):
    daemon = make_daemon()  # the harness analyses the smallest thinking
    call(daemon)
    call(daemon)  # the second is served by the KV cache
    assert counts(daemon)[0] == 2
    assert lookups == {"card": 1, "conscience_values": 1}
    assert len(daemon.analysis.requests) == 2

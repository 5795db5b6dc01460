"""The startup heap is collected, then frozen, once the daemon is up."""

from __future__ import annotations

from pathlib import Path

import pytest

import mnemomd.service
from mnemomd.ops.memory import freeze_startup_heap
from tests.harness import InProcessDaemon


class RecordingCollector:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def collect(self) -> int:
        self.calls.append("collect")
        return 0

    def freeze(self) -> None:
        self.calls.append("freeze")

    def get_freeze_count(self) -> int:
        return 42


def test_freeze_collects_first_then_freezes_and_reports_the_count():
    collector = RecordingCollector()
    assert freeze_startup_heap(collector) == 42
    assert collector.calls == ["collect", "freeze"]


@pytest.mark.parametrize("asked", [True, False])
def test_the_service_freezes_its_heap_once_started_only_when_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asked: bool):
    frozen: list[bool] = []
    monkeypatch.setattr(mnemomd.service, "freeze_startup_heap", lambda: frozen.append(True) or 1)
    daemon = InProcessDaemon(tmp_path / "d")
    if asked:
        daemon.service.freeze_heap_when_started()
    try:
        daemon.start()
        assert daemon.service.health.started
        assert frozen == ([True] if asked else [])
    finally:
        daemon.stop()

"""Log lines: JSON shape, allow-listed fields only, level filtering."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel, LogPublisher

from mnemomd.ops.logging import make_observer


def capture(log_format="json", level="info"):
    out = io.StringIO()
    publisher = LogPublisher()
    publisher.addObserver(make_observer(out, log_format, "mnemomd-all", level))
    return out, Logger(namespace="test", observer=publisher)


def test_json_line_has_required_fields():
    out, log = capture()
    log.info("GET {path} {status}", path="/v1/messages", status=200, request_id="r1",
             agent_id="smolt-1", provider="anthropic", duration_ms=1.5)
    record = json.loads(out.getvalue())
    assert record["level"] == "info"
    assert record["service"] == "mnemomd-all"
    assert record["message"] == "GET /v1/messages 200"
    assert record["timestamp"].endswith("Z")
    for key in ("request_id", "agent_id", "provider", "status", "duration_ms"):
        assert key in record


def test_fields_outside_the_allow_list_never_written():
    out, log = capture()
    log.info("call", headers={"x-api-key": "sk-SECRET"}, body="my prompt PROMPT-TEXT")
    assert "SECRET" not in out.getvalue()
    assert "PROMPT-TEXT" not in out.getvalue()


def test_level_filter():
    out, log = capture(level="warn")
    log.info("quiet")
    log.warn("loud")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["message"] for r in lines] == ["loud"]
    assert lines[0]["level"] == "warn"


def test_failure_recorded_as_error_and_traceback():
    out, log = capture()
    try:
        raise ValueError("boom")
    except ValueError:
        log.failure("it failed")
    record = json.loads(out.getvalue())
    assert record["level"] == "critical"
    assert record["error"] == "ValueError: boom"
    assert "Traceback" in record["traceback"]


def test_text_format_for_humans():
    out, log = capture("text")
    log.emit(LogLevel.info, "hello {port}", port=1)
    assert out.getvalue().rstrip().endswith("INFO  hello 1 [port=1]")

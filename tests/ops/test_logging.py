"""Log lines: JSON shape, allow-listed fields only, level filtering."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from twisted.logger import Logger, LogLevel, LogPublisher, formatEvent

from mnemomd.ops.logging import Renderer, make_observer


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


# -- the renderer: the same text as Twisted's formatEvent, with its fixed parts kept --------

RENDERED_EVENTS = [
    {"log_format": "{method} /{provider}{path} {status}", "method": "POST",
     "provider": "anthropic", "path": "/v1/messages", "status": 200},
    {"log_format": "plain text, no fields"},
    {"log_format": "{value!r} and {value!s} and {value!a}", "value": "é'x"},
    {"log_format": "{ratio:.2f} of {count:>5}", "ratio": 1 / 3, "count": 7},
    {"log_format": "{{literal braces}} {name}", "name": "n"},
    {"log_format": "{missing} field", "other": 1},
    {"log_format": "{obj.attr} dotted", "obj": object()},
    {"log_format": "{items[0]} indexed", "items": ["first"]},
    {"log_format": "{call()} called", "call": lambda: "made"},
    {"log_format": "{unbalanced", "x": 1},
    {"log_format": "{n:{width}}", "n": 3, "width": 4},
    {"log_format": "{bad:%Q}", "bad": 3},
    {"log_format": None, "log_failure": None},
    {"no_format": True},
]


@pytest.mark.parametrize("event", RENDERED_EVENTS, ids=lambda e: str(e.get("log_format")))
def test_renderer_message_is_what_format_event_says(event: dict[str, object]):
    renderer = Renderer()
    assert renderer.message(event) == formatEvent(event)
    assert renderer.message(event) == formatEvent(event)  # parsed once, the same again


@pytest.mark.parametrize("when", [0.0, 1.5, 1_700_000_000.123, 1_700_000_000.9994,
                                  1_700_000_001.0, 4_102_444_799.999])
def test_renderer_timestamp_is_the_iso_time_to_the_millisecond(when: float):
    expected = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
    assert Renderer().timestamp(when) == expected.replace("+00:00", "Z")


def test_renderer_keeps_a_bounded_number_of_formats():
    renderer = Renderer(max_formats=2)
    for i in range(5):
        event = {"log_format": f"line {i} {{n}}", "n": i}
        assert renderer.message(event) == f"line {i} {i}"
    assert len(renderer._formats) == 2

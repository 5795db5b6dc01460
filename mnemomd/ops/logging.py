"""One JSON object per line on stdout, through ``twisted.logger``.

Only an allow-list of event fields is ever written, so a log call that happens to carry a
request, a header map or a body in its event dict cannot leak it: keys, prompts and
thinking never reach the logs, at any level.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from string import Formatter
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogBeginner,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)

#: Event fields copied into log lines. Anything else in an event is dropped.
LOGGED_FIELDS = (
    "request_id", "agent_id", "provider", "method", "path", "status", "duration_ms",
    "overhead_ms", "streaming", "bytes_sent", "host", "port", "listen", "role", "version",
    "reason", "in_flight", "grace_seconds", "config_path", "problems", "warning",
    "dependency", "down_seconds", "failures",
)

LEVEL_NAMES = {
    LogLevel.debug: "debug", LogLevel.info: "info", LogLevel.warn: "warn",
    LogLevel.error: "error", LogLevel.critical: "critical",
}
CONFIG_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
                 "error": LogLevel.error}


def _failure_fields(event: LogEvent) -> dict[str, str]:
    failure = event.get("log_failure")
    if failure is None:
        return {}
    return {"error": f"{failure.type.__name__}: {failure.getErrorMessage()}",
            "traceback": failure.getTraceback()}


#: A parsed format string: (literal text, field name or None, format spec, conversion).
Parsed = tuple[tuple[str, str | None, str, str | None], ...]
#: Distinct format strings a renderer keeps parsed (the code has a few hundred at most).
MAX_FORMATS = 1024


class Renderer:
    """``formatEvent`` and the ISO timestamp of an event, with their fixed parts kept.

    A log line's format string is a literal in the code, so it is parsed once, not per
    line; a line's timestamp only changes its milliseconds within a second. Anything
    unusual (a field that is not a plain name, a missing field, a format that does not
    parse) goes to Twisted's ``formatEvent``, which renders it as it always has.
    """

    def __init__(self, max_formats: int = MAX_FORMATS) -> None:
        self._formats: dict[str, Parsed | None] = {}
        self._max_formats = max_formats
        self._second = -1
        self._second_text = ""

    def _parse(self, fmt: str) -> Parsed | None:
        parsed = self._formats.get(fmt, False)
        if parsed is not False:
            return parsed  # type: ignore[return-value]
        try:
            parts: Parsed | None = tuple(Formatter().parse(fmt))
        except ValueError:
            parts = None
        if parts is not None and any(
                name is not None and (not name.isidentifier() or "{" in spec)
                for _, name, spec, _ in parts):
            parts = None
        if len(self._formats) < self._max_formats:
            self._formats[fmt] = parts
        return parts

    def message(self, event: LogEvent) -> str:
        fmt = event.get("log_format")
        parts = self._parse(fmt) if isinstance(fmt, str) else None
        if parts is None:
            return formatEvent(event)
        out: list[str] = []
        try:
            for literal, name, spec, conversion in parts:
                out.append(literal)
                if name is None:
                    continue
                value = event[name]
                if conversion == "r":
                    value = repr(value)
                elif conversion == "s":
                    value = str(value)
                elif conversion == "a":
                    value = ascii(value)
                elif conversion is not None:
                    return formatEvent(event)
                out.append(format(value, spec))
        except Exception:  # noqa: BLE001 - a missing field or a bad spec: Twisted says so
            return formatEvent(event)
        return "".join(out)

    def timestamp(self, when: float) -> str:
        """``2024-01-02T03:04:05.678Z`` for ``when`` (seconds since the epoch)."""
        milliseconds = int(when * 1000)
        second, millis = divmod(milliseconds, 1000)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{millis:03d}Z"


def event_record(event: LogEvent, service: str,
                 renderer: Renderer | None = None) -> dict[str, Any]:
    """The dict written for one event: fixed fields, allow-listed extras, failure."""
    if renderer is None:
        renderer = Renderer()
    record: dict[str, Any] = {
        "timestamp": renderer.timestamp(event.get("log_time", 0.0)),
        "level": LEVEL_NAMES.get(event.get("log_level", LogLevel.info), "info"),
        "service": service,
        "message": renderer.message(event),
    }
    namespace = event.get("log_namespace")
    if namespace:
        record["logger"] = namespace
    for name in LOGGED_FIELDS:
        if name in event:
            record[name] = event[name]
    record.update(_failure_fields(event))
    return record


def json_line(event: LogEvent, service: str, renderer: Renderer | None = None) -> str:
    return json.dumps(event_record(event, service, renderer), default=str,
                      ensure_ascii=False) + "\n"


def text_line(event: LogEvent, service: str, renderer: Renderer | None = None) -> str:
    record = event_record(event, service, renderer)
    extras = " ".join(f"{k}={record[k]}" for k in LOGGED_FIELDS if k in record)
    line = f"{record['timestamp']} {record['level'].upper():5} {record['message']}"
    if extras:
        line += f" [{extras}]"
    if "error" in record:
        line += f"\n{record['traceback']}"
    return line + "\n"


def make_observer(out: IO[str], log_format: str, service: str,
                  level: str = "info") -> ILogObserver:
    """An observer writing ``log_format`` lines at ``level`` and above to ``out``."""
    render: Callable[[LogEvent, str, Renderer], str] = (
        json_line if log_format == "json" else text_line)
    renderer = Renderer()

    def observe(event: LogEvent) -> None:
        try:
            out.write(render(event, service, renderer))
            out.flush()
        except Exception:  # noqa: BLE001 - a log line must never break the caller
            pass

    predicate = LogLevelFilterPredicate(defaultLogLevel=CONFIG_LEVELS[level])
    return FilteringLogObserver(observe, [predicate])


def start_logging(log_format: str, level: str, service: str, out: IO[str] | None = None,
                  beginner: LogBeginner = globalLogBeginner) -> None:
    """Route all Twisted logging (and warnings) to our observer; called once per process."""
    beginner.beginLoggingTo([make_observer(out or sys.stdout, log_format, service, level)],
                            redirectStandardIO=False)

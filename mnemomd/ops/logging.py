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


def event_record(event: LogEvent, service: str) -> dict[str, Any]:
    """The dict written for one event: fixed fields, allow-listed extras, failure."""
    when = datetime.fromtimestamp(event.get("log_time", 0.0), UTC)
    record: dict[str, Any] = {
        "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": LEVEL_NAMES.get(event.get("log_level", LogLevel.info), "info"),
        "service": service,
        "message": formatEvent(event),
    }
    namespace = event.get("log_namespace")
    if namespace:
        record["logger"] = namespace
    for name in LOGGED_FIELDS:
        if name in event:
            record[name] = event[name]
    record.update(_failure_fields(event))
    return record


def json_line(event: LogEvent, service: str) -> str:
    return json.dumps(event_record(event, service), default=str, ensure_ascii=False) + "\n"


def text_line(event: LogEvent, service: str) -> str:
    record = event_record(event, service)
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
    render: Callable[[LogEvent, str], str] = json_line if log_format == "json" else text_line

    def observe(event: LogEvent) -> None:
        try:
            out.write(render(event, service))
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

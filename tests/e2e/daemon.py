"""Start ``mnemomd`` as a separate process, exactly as an operator would, and watch it.

The daemon logs one JSON object per line; the harness reads them on a thread, finds the
listening port in the startup line (the daemon runs with ``--port 0``), and keeps every
line so tests can search the output afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.process import REPO_ROOT

#: Environment variables of the test run that must not leak into a daemon under test.
_DAEMON_PREFIXES = ("MNEMOM_", "SMOLTBOT_", "ANTHROPIC_", "OPENAI_", "GEMINI_", "LOG_",
                    "UPSTREAM_", "STREAM_", "MAX_REQUEST", "CORS_", "SHUTDOWN_", "AIP_",
                    "NOTIFY_SOCKET", "WATCHDOG_", "LISTEN", "HOST", "PORT")


def mnemomd_command() -> list[str]:
    """The installed console script, as operators run it."""
    script = shutil.which("mnemomd")
    return [script] if script else [sys.executable, "-m", "mnemomd"]


def daemon_environment(tmp: Path, overrides: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DAEMON_PREFIXES)}
    tmp.mkdir(parents=True, exist_ok=True)
    empty_config = tmp / "empty.yaml"
    empty_config.write_text("")
    env.update({"HOME": str(tmp), "MNEMOM_CONFIG": str(empty_config),
                "MNEMOM_DATA_DIR": str(tmp / "data"), "PYTHONUNBUFFERED": "1"})
    env.update(overrides)
    return env


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    port: int | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if self.port is None:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if "listening on" in record.get("message", ""):
                    self.port = int(record["port"]) if record.get("port") else None
                    self._ready.set()
        self._ready.set()

    def started(self) -> bool:
        """``/health/startup`` answers 200."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(b"GET /health/startup HTTP/1.1\r\nHost: x\r\n"
                             b"Connection: close\r\n\r\n")
                return sock.recv(12).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def output(self) -> str:
        return "".join(self.lines)

    def records(self) -> list[dict[str, Any]]:
        """Every stdout line parsed as JSON; a line that is not JSON fails the test."""
        return [json.loads(line) for line in list(self.lines) if line.strip()]

    def wait_for_line(self, needle: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.proc.poll() is not None and not (self._reader and self._reader.is_alive()):
                break
            time.sleep(0.01)
        raise TimeoutError(f"daemon printed no line containing {needle!r}:\n{self.output()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return code

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait(timeout)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


def start_daemon(tmp: Path, env: Mapping[str, str] | None = None,
                 args: Sequence[str] = ("run", "--host", "127.0.0.1", "--port", "0"),
                 command: Sequence[str] | None = None, startup_timeout: float = 30.0,
                 wait_started: bool = True) -> Daemon:
    """Start the daemon and wait until it listens and (by default) until
    ``/health/startup`` says it has finished starting; raises with its output if not."""
    proc = subprocess.Popen([*(command or mnemomd_command()), *args], cwd=REPO_ROOT,
                            env=daemon_environment(tmp, env or {}), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    daemon = Daemon(proc)
    daemon._reader = threading.Thread(target=daemon._read, daemon=True)
    daemon._reader.start()
    if not daemon._ready.wait(startup_timeout) or daemon.proc.poll() is not None:
        daemon.stop(5)
        raise RuntimeError(f"daemon did not start:\n{daemon.output()}")
    if wait_started and daemon.port is not None:
        deadline = time.monotonic() + startup_timeout
        while not daemon.started():
            if time.monotonic() > deadline or daemon.proc.poll() is not None:
                daemon.stop(5)
                raise RuntimeError(f"daemon did not finish starting:\n{daemon.output()}")
            time.sleep(0.02)
    return daemon

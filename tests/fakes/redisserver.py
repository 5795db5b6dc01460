"""A redis-server of the test's own: started, stopped, paused and restarted at will.

The shared Redis of the environment cannot be taken away under a live store; this one
can. It listens on 127.0.0.1 on a port of its own and on a Unix socket in its own
directory, keeps nothing on disk, and is always stopped by ``cleanup()``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.fakes.local import closed_port
from tests.support import unavailable

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def can_connect(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``host:port`` right now."""
    try:
        socket.create_connection((host, port), timeout=0.2).close()
    except OSError:
        return False
    return True


def require_shared_redis() -> str:
    """The URL of the environment's Redis; skips (fails under CI) when it is unreachable."""
    if not can_connect(REDIS_HOST, REDIS_PORT):
        unavailable(f"no Redis at {REDIS_HOST}:{REDIS_PORT}")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}"


class RedisServer:
    """One private redis-server process; ``listening()`` says when it accepts clients."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server is not installed (Debian package redis-server)")
        self.port = closed_port()
        self.dir = Path(tempfile.mkdtemp(prefix="redis-server-"))
        self.socket_path = self.dir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> None:
        """Start the server (again, on the same port); it listens shortly after."""
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--unixsocket",
             str(self.socket_path), "--unixsocketperm", "700", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening(self) -> bool:
        return can_connect("127.0.0.1", self.port)

    def pause(self) -> None:
        """Freeze the process: connections stay open and nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

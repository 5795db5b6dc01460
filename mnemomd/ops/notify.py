"""systemd service notification (sd_notify), written by hand: a datagram to a socket.

``Type=notify`` units learn from ``READY=1`` that startup finished and from
``STOPPING=1`` that shutdown began; ``WATCHDOG=1`` keeps a watchdog-enabled unit alive
only while the reactor is turning.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall


class SystemdNotifier:
    """Sends notifications when ``NOTIFY_SOCKET`` is set; does nothing otherwise."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        path = environ.get("NOTIFY_SOCKET", "")
        if path.startswith("@"):
            path = "\0" + path[1:]
        self._address = path or None
        self._watchdog_interval = self._watchdog_seconds(environ)
        self._watchdog: LoopingCall | None = None

    @staticmethod
    def _watchdog_seconds(environ: Mapping[str, str]) -> float | None:
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid and pid != str(os.getpid()):
            return None
        return int(usec) / 1_000_000 / 2

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, state: str) -> bool:
        """Send one state line; False when there is no socket or sending failed."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(state.encode(), self._address)
        except OSError:
            return False
        return True

    def start_watchdog(self, clock: IReactorTime) -> None:
        if self._watchdog_interval is None or self._address is None:
            return
        self._watchdog = LoopingCall(self.notify, "WATCHDOG=1")
        self._watchdog.clock = clock
        self._watchdog.start(self._watchdog_interval, now=True)

    def stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()

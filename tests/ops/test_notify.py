"""sd_notify datagrams, including the watchdog."""

from __future__ import annotations

import os
import socket

from twisted.internet.task import Clock

from mnemomd.ops.notify import SystemdNotifier


def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    return sock, path


def test_ready_sent_to_socket(tmp_path):
    sock, path = listener(tmp_path)
    with sock:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
        assert notifier.notify("READY=1")
        assert sock.recv(100) == b"READY=1"


def test_no_socket_is_a_no_op():
    assert not SystemdNotifier({}).notify("READY=1")


def test_unreachable_socket_reports_failure(tmp_path):
    assert not SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "none")}).notify("READY=1")


def test_watchdog_pings_at_half_the_interval(tmp_path):
    sock, path = listener(tmp_path)
    clock = Clock()
    with sock:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000",
                                    "WATCHDOG_PID": str(os.getpid())})
        notifier.start_watchdog(clock)
        assert sock.recv(100) == b"WATCHDOG=1"
        clock.advance(0.9)
        sock.setblocking(False)
        try:
            sock.recv(100)
            raise AssertionError("pinged before half the watchdog interval")
        except BlockingIOError:
            pass
        sock.setblocking(True)
        clock.advance(0.1)
        assert sock.recv(100) == b"WATCHDOG=1"
        notifier.stop_watchdog()


def test_watchdog_for_another_pid_is_ignored(tmp_path):
    clock = Clock()
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000",
                                "WATCHDOG_PID": "1"})
    notifier.start_watchdog(clock)
    assert clock.getDelayedCalls() == []

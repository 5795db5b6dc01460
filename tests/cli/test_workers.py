"""The supervisor of ``MNEMOM_WORKERS`` on a fake reactor: which workers it starts, when it
restarts them, when it gives up, what systemd hears, how it stops. Processes are fakes; the
real thing is in tests/e2e/test_workers.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from mnemomd.cli.workers import Supervisor, worker_command, worker_environ
from mnemomd.config import EX_CONFIG, Config, load_config
from mnemomd.ops.notify import SystemdNotifier
from mnemomd.ops.workers import WORKER_ENV, RestartPolicy, WorkerSlot, worker_slot


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:  # noqa: N802
        self.signals.append(name)


class FakePort:
    def stopListening(self) -> Any:  # noqa: N802
        return succeed(None)


class SyncThreads:
    def callInThreadWithCallback(self, on_result, func, *args, **kwargs):  # noqa: N802
        on_result(True, func(*args, **kwargs))


class FakeReactor(Clock):
    """A clock that records spawned processes and runs "threads" at once."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, dict[str, str], FakeProcess]] = []
        self.stopped = False
        self._next_pid = 1000

    def spawnProcess(self, protocol, executable, args, env, childFDs):  # noqa: N802, N803
        self._next_pid += 1
        process = FakeProcess(self._next_pid)
        protocol.transport = process
        protocol.connectionMade()
        self.spawned.append((protocol, env, process))
        return process

    def listenUNIXDatagram(self, path, protocol):  # noqa: N802
        return FakePort()

    def getThreadPool(self) -> SyncThreads:  # noqa: N802
        return SyncThreads()

    def callFromThread(self, func, *args, **kwargs):  # noqa: N802
        func(*args, **kwargs)


class Notifier(SystemdNotifier):
    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[str] = []

    def notify(self, state: str) -> bool:
        self.sent.append(state)
        return True


def make(tmp_path: Path, workers: int = 2, **kwargs: Any):
    reactor, notifier, fatal = FakeReactor(), Notifier(), []
    config = Config(mnemom_workers=workers, redis_url="redis://127.0.0.1:6379/0",
                    host="127.0.0.1", port=0)
    supervisor = Supervisor(config, reactor, {"RUNTIME_DIRECTORY": str(tmp_path),
                                              "WATCHDOG_USEC": "1000", "KEEP": "me"},
                            ["mnemomd", "run"], notifier, fatal=fatal.append,
                            migrate_schema=lambda: succeed([]), **kwargs)
    supervisor.startService()
    return supervisor, reactor, notifier, fatal


def ended(supervisor: Supervisor, index: int, code: int | None = 1,
          sig: int | None = None) -> None:
    supervisor.worker_ended(index, supervisor.pids[index], code, sig)


def test_starts_each_worker_with_its_slot_and_its_own_notify_socket(tmp_path):
    supervisor, reactor, _, _ = make(tmp_path, workers=3)
    slots = [worker_slot(env) for _, env, _ in reactor.spawned]
    assert [s.index for s in slots] == [0, 1, 2]
    assert {s.port for s in slots} == {supervisor.port} and supervisor.port > 0
    assert all(s.supervisor_pid == os.getpid() for s in slots)
    envs = [env for _, env, _ in reactor.spawned]
    assert [e["NOTIFY_SOCKET"] for e in envs] == [supervisor.notify_socket(i) for i in range(3)]
    assert all(e["KEEP"] == "me" and "WATCHDOG_USEC" not in e for e in envs)
    assert all(e["PROMETHEUS_MULTIPROC_DIR"] == supervisor.metrics_dir for e in envs)
    assert Path(supervisor.metrics_dir).is_dir()
    assert Path(supervisor.workdir).parent == tmp_path


def test_ready_once_every_worker_said_it(tmp_path):
    supervisor, _, notifier, _ = make(tmp_path)
    supervisor.worker_notified(0, b"READY=1")
    supervisor.worker_notified(0, b"READY=1")
    assert notifier.sent == []
    supervisor.worker_notified(1, b"STATUS=x\nREADY=1")
    assert notifier.sent == ["READY=1"]
    ended(supervisor, 1, code=None, sig=9)
    supervisor._reactor.advance(1.0)
    supervisor.worker_notified(1, b"READY=1")  # the restarted worker
    assert notifier.sent == ["READY=1"]


def test_a_dead_worker_is_restarted_with_a_growing_delay(tmp_path):
    supervisor, reactor, _, fatal = make(tmp_path, policy=RestartPolicy(base=1.0, cap=4.0,
                                                                        max_deaths=10))
    first = supervisor.pids[1]
    delays = []
    for _ in range(4):
        ended(supervisor, 1)
        spawned = len(reactor.spawned)
        waited = 0.0
        while len(reactor.spawned) == spawned:
            reactor.advance(0.5)
            waited += 0.5
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 4.0]
    assert supervisor.pids[1] != first and supervisor.pids[0] == reactor.spawned[0][2].pid
    assert worker_slot(reactor.spawned[-1][1]).index == 1 and fatal == []


def test_a_worker_that_keeps_dying_stops_everything(tmp_path):
    supervisor, reactor, _, fatal = make(tmp_path, policy=RestartPolicy(max_deaths=3))
    for _ in range(2):
        ended(supervisor, 0)
        reactor.advance(30)  # restarted, and dead again within the window
    assert fatal == []
    ended(supervisor, 0)
    assert fatal == [1]


def test_a_configuration_error_in_a_worker_is_not_retried(tmp_path):
    supervisor, reactor, _, fatal = make(tmp_path)
    ended(supervisor, 1, code=EX_CONFIG)
    reactor.advance(120)
    assert fatal == [EX_CONFIG] and len(reactor.spawned) == 2


def test_an_old_process_ending_is_not_the_current_worker(tmp_path):
    supervisor, reactor, _, _ = make(tmp_path)
    supervisor.worker_ended(0, 1, 0, None)  # a pid this slot no longer has
    assert 0 in supervisor.workers and len(reactor.spawned) == 2


def test_stop_sends_sigterm_waits_for_every_worker_then_cleans_up(tmp_path):
    supervisor, reactor, notifier, _ = make(tmp_path)
    ended(supervisor, 1)  # dies just before the stop: its restart must not happen
    stopping = supervisor.stopService()
    assert notifier.sent[-1] == "STOPPING=1"
    assert reactor.spawned[0][2].signals == ["TERM"]
    reactor.advance(60)
    assert len(reactor.spawned) == 2, "no restart while stopping"
    assert not stopping.called
    ended(supervisor, 0, code=0)
    assert stopping.called and not Path(supervisor.workdir).exists()
    assert supervisor.exit_code == 0


def test_a_worker_past_the_grace_period_is_killed(tmp_path):
    supervisor, reactor, _, _ = make(tmp_path)
    stopping = supervisor.stopService()
    reactor.advance(supervisor._config.listener.shutdown_grace_seconds + 10)
    assert [p.signals for _, _, p in reactor.spawned] == [["TERM", "KILL"]] * 2
    ended(supervisor, 0, code=None, sig=9)
    ended(supervisor, 1, code=None, sig=9)
    assert stopping.called


def test_restart_policy_forgets_deaths_outside_its_window():
    policy = RestartPolicy(base=1.0, cap=30.0, window=100.0, max_deaths=3)
    assert policy.died(0, 0.0) == 1.0
    assert policy.died(0, 10.0) == 2.0
    assert policy.died(1, 10.0) == 1.0  # counted per worker
    assert policy.died(0, 150.0) == 1.0  # the first two are out of the window
    assert policy.died(0, 160.0) == 2.0
    assert policy.died(0, 170.0) is None


def test_worker_slot_round_trip_and_bad_values():
    slot = WorkerSlot(1, 2, 8787, 42, "/run/x/metrics")
    assert worker_slot({WORKER_ENV: slot.encode()}) == slot
    assert worker_slot({}) is None
    for bad in ("nope", '{"index":2,"count":2,"port":1,"supervisor_pid":1,"metrics_dir":"d"}',
                '{"index":0,"count":1,"port":0,"supervisor_pid":1,"metrics_dir":"d"}',
                '{"index":0}'):
        with pytest.raises(ValueError, match=WORKER_ENV):
            worker_slot({WORKER_ENV: bad})
    assert slot.role("all") == "gateway" and WorkerSlot(0, 2, 1, 1, "d").role("all") == "all"
    assert slot.role("gateway") == "gateway"


def test_worker_command_passes_flags_but_not_the_worker_count():
    command = worker_command({"PORT": "9000", "MNEMOM_WORKERS": "4", "HOST": "::"},
                             "/etc/mnemomd/mnemomd.yaml")
    assert command[-3:] == ["--config=/etc/mnemomd/mnemomd.yaml", "--port=9000", "--host=::"]


def test_worker_environ_replaces_systemd_variables():
    slot = WorkerSlot(0, 2, 8787, 42, "/m")
    env = worker_environ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_PID": "1",
                          "LISTEN_FDS": "1", "PATH": "/bin"}, slot, "/w/notify-0.sock")
    assert env == {"PATH": "/bin", WORKER_ENV: slot.encode(),
                   "NOTIFY_SOCKET": "/w/notify-0.sock", "PROMETHEUS_MULTIPROC_DIR": "/m"}


def test_config_refuses_workers_without_a_shared_kv_store(tmp_path):
    from mnemomd.config import ConfigError

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as raised:
        load_config({"MNEMOM_WORKERS": "2"}, {"MNEMOM_DATA_DIR": str(tmp_path)}, str(empty))
    assert raised.value.problems == [
        "MNEMOM_WORKERS=2 needs REDIS_URL: the in-memory KV store is private to one process, "
        "so workers would not share agent caches, nudges, sessions and job leases; set "
        "REDIS_URL or use MNEMOM_WORKERS=1"]
    env = {"MNEMOM_DATA_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:6379/0"}
    for extra, problem in ((
            {"MNEMOM_ROLE": "scheduler"}, "cannot be used with MNEMOM_ROLE=scheduler"),
            ({"LISTEN": "unix:/run/x.sock"}, "the listener must be HOST and PORT")):
        with pytest.raises(ConfigError, match=problem):
            load_config({"MNEMOM_WORKERS": "3"}, env | extra, str(empty))
    assert load_config({"MNEMOM_WORKERS": "3"}, env, str(empty)).daemon.workers == 3

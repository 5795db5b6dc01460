"""``MNEMOM_WORKERS=N``: one supervisor process and N worker processes sharing the port.

The supervisor applies migrations once, then starts each worker as ``mnemomd run`` with
``MNEMOM_WORKER`` naming its slot (:class:`~mnemomd.ops.workers.WorkerSlot`); every worker
is the ordinary daemon built by ``make_service``, listening on its own ``SO_REUSEPORT``
socket. The supervisor serves nothing itself. It:

- gives each worker a ``NOTIFY_SOCKET`` of its own (a datagram socket in a private
  directory), so workers never talk to systemd; it tells systemd ``READY=1`` once every
  worker has said it, and keeps systemd's watchdog itself;
- restarts a worker that dies, after a growing delay (:class:`RestartPolicy`); a worker
  that keeps dying, or exits 78 (a configuration problem), stops everything, loudly;
- on SIGTERM (or SIGINT) sends SIGTERM to every worker, each drains as a single process
  does, and exits once all have;
- owns the metrics directory the workers write to (prometheus-client's multiprocess
  mode), clears a dead worker's live gauges, and deletes it all on exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client.multiprocess import mark_process_dead
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProcessTransport
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd import __version__
from mnemomd.config import EX_CONFIG, SETTINGS_BY_ENV, Config
from mnemomd.http.reuseport import reuse_port_socket, tcp_address
from mnemomd.ops.notify import SystemdNotifier
from mnemomd.ops.workers import METRICS_DIR_ENV, WORKER_ENV, RestartPolicy, WorkerSlot
from mnemomd.storage.database import Database
from mnemomd.storage.migrations import MigrationError, migrate

log = Logger(namespace="mnemomd")

#: Seconds past SHUTDOWN_GRACE_SECONDS before a worker that has not exited is killed.
KILL_MARGIN = 10.0
#: Environment a worker must not inherit: systemd's watchdog and socket activation are
#: the supervisor's.
NOT_INHERITED = ("WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                 "LISTEN_FDNAMES")
#: How often a worker checks that its supervisor is still there.
SUPERVISOR_CHECK_SECONDS = 1.0


def worker_command(flags: Mapping[str, str], config_path: str | None) -> list[str]:
    """How the supervisor starts a worker: ``mnemomd run`` with the operator's flags
    (the environment is inherited), from a frozen binary or from Python."""
    if getattr(sys, "frozen", False):
        command = [sys.executable, "run"]
    else:
        command = [sys.executable, "-m", "mnemomd", "run"]
    if config_path:
        command.append(f"--config={config_path}")
    for env, value in flags.items():
        flag = SETTINGS_BY_ENV[env].flag
        if flag and env != "MNEMOM_WORKERS":
            command.append(f"{flag}={value}")
    return command


def worker_environ(environ: Mapping[str, str], slot: WorkerSlot,
                   notify_socket: str) -> dict[str, str]:
    """A worker's environment: the supervisor's, its slot, its own notify socket, the
    metrics directory, and none of systemd's watchdog or socket-activation variables."""
    env = {k: v for k, v in environ.items() if k not in NOT_INHERITED}
    env.update({WORKER_ENV: slot.encode(), "NOTIFY_SOCKET": notify_socket,
                METRICS_DIR_ENV: slot.metrics_dir})
    return env


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self._supervisor = supervisor
        self._index = index
        #: Kept here: the transport forgets its pid once the process has ended.
        self.pid: int | None = None

    def connectionMade(self) -> None:  # noqa: N802
        self.pid = getattr(self.transport, "pid", None)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        value = reason.value
        code = value.exitCode if isinstance(value, ProcessDone | ProcessTerminated) else None
        sig = value.signal if isinstance(value, ProcessTerminated) else None
        self._supervisor.worker_ended(self._index, self.pid, code, sig)


class _NotifyReceiver(DatagramProtocol):
    """One worker's ``NOTIFY_SOCKET``: its sd_notify datagrams reach the supervisor."""

    noisy = False

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self._supervisor = supervisor
        self._index = index

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802
        self._supervisor.worker_notified(self._index, datagram)


class Supervisor(Service):
    """Starts, watches, restarts and stops the workers (see the module docstring)."""

    name = "supervisor"

    def __init__(self, config: Config, reactor: Any, environ: Mapping[str, str],
                 command: Sequence[str], notifier: SystemdNotifier,
                 policy: RestartPolicy | None = None,
                 fatal: Callable[[int], None] | None = None,
                 migrate_schema: Callable[[], Deferred[list[str]]] | None = None) -> None:
        self._config = config
        self._reactor = reactor
        self._environ = environ
        self._command = list(command)
        self._notifier = notifier
        self._policy = policy or RestartPolicy()
        self._fatal = fatal or self._stop_reactor
        self._migrate_schema = migrate_schema or self._migrate
        self.count = config.daemon.workers
        self.address = tcp_address(config.listener.listen_description)
        self.port = self.address.port
        #: Exit status of ``mnemomd run``: 0, or why the supervisor gave up.
        self.exit_code = 0
        self.workdir = ""
        self.workers: dict[int, IProcessTransport] = {}
        #: The pid of each slot's current process.
        self.pids: dict[int, int] = {}
        self.ready: set[int] = set()
        self.announced = False
        self.stopping = False
        self._reserved: socket.socket | None = None
        self._notify_ports: list[IListeningPort] = []
        self._restarts: dict[int, IDelayedCall] = {}
        self._migration_retry: IDelayedCall | None = None
        self._migration_delay = 1.0
        self._all_ended: Deferred[None] | None = None

    @property
    def metrics_dir(self) -> str:
        return os.path.join(self.workdir, "metrics")

    def notify_socket(self, index: int) -> str:
        return os.path.join(self.workdir, f"notify-{index}.sock")

    def _stop_reactor(self, code: int) -> None:
        self.exit_code = code
        self._reactor.callWhenRunning(self._reactor.stop)

    def privilegedStartService(self) -> None:  # noqa: N802
        """Reserve the port before anything else: a port in use ends the supervisor at
        once, and ``PORT=0`` becomes one port every worker shares."""
        super().privilegedStartService()
        try:
            self._reserved = reuse_port_socket(self.address)
        except OSError as e:
            log.critical("Cannot listen on {host}:{port}: {reason}", host=self.address.host,
                         port=self.address.port, reason=e.strerror or str(e))
            raise SystemExit(1) from None
        self.port = self._reserved.getsockname()[1]

    def startService(self) -> None:  # noqa: N802
        if self._reserved is None:
            self.privilegedStartService()
        super().startService()
        self.workdir = tempfile.mkdtemp(prefix="mnemomd-workers-",
                                        dir=self._environ.get("RUNTIME_DIRECTORY") or None)
        os.mkdir(self.metrics_dir)
        for index in range(self.count):
            self._notify_ports.append(self._reactor.listenUNIXDatagram(
                self.notify_socket(index), _NotifyReceiver(self, index)))
        log.info("mnemomd {version} supervising {workers} workers on port {port} (runtime "
                 "directory {directory})", version=__version__, workers=self.count,
                 port=self.port, directory=self.workdir)
        if self._config.storage.migrate_on_start:
            self._prepare_schema(first=True)
        else:
            self._start_all()

    # -- migrations: once, here, before any worker checks the schema

    def _prepare_schema(self, first: bool = False) -> None:
        self._migration_retry = None
        d = self._migrate_schema()
        d.addCallbacks(self._migrated, self._migration_failed, errbackArgs=(first,))
        if first:
            d.addBoth(lambda _: self._start_all())

    def _migrate(self) -> Deferred[list[str]]:
        db = Database(self._reactor, self._config.storage.database_url)
        db.start()
        d = migrate(db, int(self._reactor.seconds() * 1000))

        def close(result: Any) -> Any:
            db.close()
            return result

        return d.addBoth(close)

    def _migrated(self, applied: list[str]) -> None:
        if applied:
            log.info("Applied schema migrations: {migrations}", migrations=", ".join(applied))

    def _migration_failed(self, failure: Failure, first: bool) -> None:
        if failure.check(MigrationError):
            log.critical("Database schema problem: {reason}", reason=failure.getErrorMessage())
            self._fatal(EX_CONFIG)
            return
        # The workers forward calls meanwhile (fail-open) and wait for the schema.
        log.error("Database unavailable for migrations: {reason}; retrying in {delay}s",
                  reason=failure.getErrorMessage(), delay=self._migration_delay)
        if self.running and not self.stopping:
            self._migration_retry = self._reactor.callLater(self._migration_delay,
                                                            self._prepare_schema)
            self._migration_delay = min(self._migration_delay * 2, 60.0)

    # -- workers

    def _start_all(self) -> None:
        if not self.running or self.stopping:
            return
        for index in range(self.count):
            if index not in self.workers:
                self._spawn(index)

    def slot(self, index: int) -> WorkerSlot:
        return WorkerSlot(index, self.count, self.port, os.getpid(), self.metrics_dir)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self.stopping:
            return
        env = worker_environ(self._environ, self.slot(index), self.notify_socket(index))
        transport = self._reactor.spawnProcess(_WorkerProtocol(self, index), self._command[0],
                                               self._command, env,
                                               childFDs={0: 0, 1: 1, 2: 2})
        self.workers[index] = transport
        self.pids[index] = transport.pid
        log.info("Worker {worker} started (pid {pid})", worker=index, pid=transport.pid)

    def worker_notified(self, index: int, datagram: bytes) -> None:
        """A worker's sd_notify message; ``READY=1`` from all of them is the daemon's."""
        states = datagram.decode("utf-8", "replace").split("\n")
        if "READY=1" not in states or index not in self.workers:
            return
        self.ready.add(index)
        log.info("Worker {worker} ready", worker=index)
        if self.announced or len(self.ready) < self.count:
            return
        self.announced = True
        self._release_port()
        log.info("mnemomd {version} listening on {listen} with {workers} workers",
                 version=__version__, listen=f"{self.address.host}:{self.port}",
                 workers=self.count, host=self.address.host, port=self.port)
        self._notifier.notify("READY=1")
        self._notifier.start_watchdog(self._reactor)

    def _release_port(self) -> None:
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    def worker_ended(self, index: int, pid: int | None, code: int | None,
                     sig: int | None) -> None:
        if index not in self.workers or self.pids.get(index) != pid:
            return  # not the current process of this slot
        self.workers.pop(index, None)
        self.pids.pop(index, None)
        self.ready.discard(index)
        if pid is not None and self.workdir:
            self._in_thread(mark_process_dead, pid, self.metrics_dir).addErrback(
                lambda f: log.warn("Cannot clear worker {pid}'s metrics: {reason}", pid=pid,
                                   reason=f.getErrorMessage()))
        if self.stopping:
            log.info("Worker {worker} stopped (exit {code})", worker=index, code=code)
            if not self.workers and self._all_ended is not None:
                self._all_ended.callback(None)
            return
        how = f"signal {sig}" if sig is not None else f"exit {code}"
        if code == EX_CONFIG:
            log.critical("Worker {worker} (pid {pid}) exited with {how}: the configuration "
                         "is wrong; stopping", worker=index, pid=pid, how=how)
            self._fatal(EX_CONFIG)
            return
        delay = self._policy.died(index, self._reactor.seconds())
        if delay is None:
            log.critical("Worker {worker} (pid {pid}) ended with {how} and died "
                         "{deaths} times within {window}s: giving up, stopping every worker",
                         worker=index, pid=pid, how=how, deaths=self._policy.max_deaths,
                         window=self._policy.window)
            self._fatal(1)
            return
        log.error("Worker {worker} (pid {pid}) ended with {how}; restarting it in {delay}s",
                  worker=index, pid=pid, how=how, delay=delay)
        self._restarts[index] = self._reactor.callLater(delay, self._spawn, index)

    # -- stopping

    @inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        self.stopping = True
        self._notifier.notify("STOPPING=1")
        self._notifier.stop_watchdog()
        if self._migration_retry is not None and self._migration_retry.active():
            self._migration_retry.cancel()
        for restart in self._restarts.values():
            if restart.active():
                restart.cancel()
        self._restarts.clear()
        if self.workers:
            log.info("Stopping {workers} workers", workers=len(self.workers))
            self._all_ended = Deferred()
            for transport in list(self.workers.values()):
                self._signal(transport, "TERM")
            grace = self._config.listener.shutdown_grace_seconds + KILL_MARGIN
            kill = self._reactor.callLater(grace, self._kill_all)
            yield self._all_ended
            if kill.active():
                kill.cancel()
        for port in self._notify_ports:
            yield port.stopListening()
        self._release_port()
        if self.workdir:
            yield self._in_thread(shutil.rmtree, self.workdir, True)
        log.info("Stopped")

    def _in_thread(self, func: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """File work (the metrics directory) off the reactor thread."""
        reactor = self._reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), func, *args)

    def _kill_all(self) -> None:
        for index, transport in list(self.workers.items()):
            log.error("Worker {worker} (pid {pid}) still running after the grace period: "
                      "killing it", worker=index, pid=self.pids.get(index))
            self._signal(transport, "KILL")

    @staticmethod
    def _signal(transport: IProcessTransport, name: str) -> None:
        try:
            transport.signalProcess(name)
        except Exception:  # already gone: its processEnded is on its way
            pass


def watch_supervisor(reactor: Any, slot: WorkerSlot) -> LoopingCall:
    """Stop this worker (draining, as on SIGTERM) if its supervisor is gone: a worker
    must not outlive it and keep the port."""
    def check() -> None:
        if os.getppid() != slot.supervisor_pid:
            log.error("Supervisor (pid {pid}) is gone: stopping", pid=slot.supervisor_pid)
            loop.stop()
            reactor.stop()

    loop = LoopingCall(check)
    loop.clock = reactor
    loop.start(SUPERVISOR_CHECK_SECONDS, now=False)
    return loop

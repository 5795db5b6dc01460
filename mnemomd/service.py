"""The one place the daemon is assembled.

``make_service`` is used by ``mnemomd run``, the twistd plugin, the frozen binary and the
tests alike, so there is exactly one way the daemon is wired together. Everything it
needs comes in as an argument: no module-level state. It is the one place that sees the
whole ``Config``: each component is handed its section and the few other values it needs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, fail, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorCore,
    IReactorPluggableNameResolver,
    IReactorSocket,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from mnemomd import __version__
from mnemomd.agents.directory import AGENT_CACHE_TTL, PersistentAgentDirectory
from mnemomd.agents.identity import Agent
from mnemomd.agents.memory import LastKnownState
from mnemomd.agents.policies import PolicyBook, PolicyStore
from mnemomd.agents.store import AgentStore
from mnemomd.api.auth import credentials_from_config
from mnemomd.api.handlers import ApiHandlers
from mnemomd.api.oidc import HttpJsonFetcher, OidcVerifier, settings_from_config
from mnemomd.api.openapi import build_openapi
from mnemomd.api.queries import ManagementStore
from mnemomd.api.resource import ManagementApi
from mnemomd.cloud.heartbeat import Heartbeat, load_or_create_deployment_id, readiness_snapshot
from mnemomd.cloud.license import LicenseState, OnlineValidator, load_trusted_keys
from mnemomd.config import (
    EX_CONFIG,
    ApiConfig,
    CloudConfig,
    Config,
    IntegrityConfig,
    ListenerConfig,
    ObserverConfig,
    StorageConfig,
    output_analysis_allowed,
)
from mnemomd.config.analysis import from_config as analysis_settings
from mnemomd.console.site import ConsoleSite, load_assets
from mnemomd.enforcement.enforcer import NUDGE_FLAG_TTL, Enforcement
from mnemomd.enforcement.expiry import expire_nudges
from mnemomd.enforcement.store import EnforcementStore
from mnemomd.http.reuseport import listen_reuse_port, tcp_address
from mnemomd.http.server import ConnectionLimits, Gateway, GatewayFactory, send_json
from mnemomd.integrity.attestation import SigningKey
from mnemomd.integrity.backends import AnalysisBackend
from mnemomd.integrity.checkpoints import CheckpointStore
from mnemomd.integrity.engine import IntegrityAnalyzer, build_analyzer
from mnemomd.integrity.keys import default_key_path, load_signing_key
from mnemomd.integrity.ledger import AttestationLedger
from mnemomd.integrity.pipeline import (
    CARD_CACHE_TTL,
    WINDOW_TTL,
    IntegrityPipeline,
    OutcomeHook,
)
from mnemomd.kv import (
    KeyValueStore,
    KVCache,
    KVUnavailableError,
    make_kv_store,
    readiness_check,
)
from mnemomd.kv.keyring import OutboxKeyring
from mnemomd.observer.drift import DriftDetector
from mnemomd.observer.lease import lease_owner, lease_store, leased
from mnemomd.observer.retention import retention_run
from mnemomd.observer.traces import SHARED_DUTY, TraceBuilder, sweep_outbox
from mnemomd.ops.dependency import DependencyState
from mnemomd.ops.health import CheckResult, HealthState
from mnemomd.ops.jobs import PeriodicJob
from mnemomd.ops.memory import freeze_startup_heap
from mnemomd.ops.metrics import GatewayMetrics, ReactorLagMonitor
from mnemomd.ops.notify import SystemdNotifier
from mnemomd.ops.workers import WorkerSlot
from mnemomd.policy import read_policy_file
from mnemomd.providers import PROVIDERS, ProviderRegistry
from mnemomd.proxy.handler import ProxyHandler
from mnemomd.proxy.policy import PolicyStep
from mnemomd.proxy.relay import UpstreamClient
from mnemomd.storage.database import Database, TransactionThreads
from mnemomd.storage.database import outage_errors as database_outage_errors
from mnemomd.storage.migrations import MigrationError, check_schema, migrate
from mnemomd.storage.spool import orphan_spools
from mnemomd.storage.traces import OutboxStore, TraceStore, outbox_sweep_interval
from mnemomd.storage.writes import WriteQueue
from mnemomd.webhooks.delivery import WebhookDispatcher, WebhookSender
from mnemomd.webhooks.store import WebhookStore

log = Logger()

#: Seconds a readiness check may take before it counts as failing.
READINESS_TIMEOUT = 2.0


class IDaemonReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorThreads,
                     IReactorPluggableNameResolver, Interface):
    """What the daemon needs of its reactor: run and stop, time, TCP (the listener and
    every outbound client), threads (the database pool, large bodies) and name resolution."""


class GatewayService(Service):
    """Listens, and on stop drains: readiness 503, listener closed, in-flight finished."""

    name = "gateway"

    def __init__(self, listener: ListenerConfig, role: str, reactor: IDaemonReactor,
                 gateway: Gateway, health: HealthState, client: UpstreamClient,
                 notifier: SystemdNotifier, lag: ReactorLagMonitor,
                 reuse_port: bool = False) -> None:
        self._listener = listener
        #: A worker under the supervisor: its own ``SO_REUSEPORT`` socket on the shared
        #: port rather than the endpoint description.
        self._reuse_port = reuse_port
        self._role = role
        self._reactor = reactor
        self.gateway = gateway
        self._health = health
        self._client = client
        self._notifier = notifier
        self._lag = lag
        self.factory = GatewayFactory(gateway, reactor, ConnectionLimits(
            request_timeout=listener.request_timeout,
            max_per_client=listener.max_connections_per_client))
        self.port: IListeningPort | None = None
        self._bound: Deferred[IListeningPort] | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def privilegedStartService(self) -> None:  # noqa: N802
        """Bind before anything else (and before twistd drops privileges).

        A listener that cannot be opened ends the process at once with a clear message
        rather than leaving a daemon that serves nothing.
        """
        super().privilegedStartService()
        failures: list[Failure] = []
        try:
            self._bound = self._listen()
        except Exception:  # an unusable description, key file or systemd index
            self._bound = fail()
        self._bound.addErrback(lambda f: failures.append(f) or f)
        if failures:
            self._bound.addErrback(lambda _: None)
            log.critical("Cannot listen on {listen}: {reason}",
                         listen=self._listener.listen_description,
                         reason=failures[0].getErrorMessage())
            raise SystemExit(1)

    def _listen(self) -> Deferred[IListeningPort]:
        description = self._listener.listen_description
        if self._reuse_port and IReactorSocket.providedBy(self._reactor):
            return maybeDeferred(listen_reuse_port, cast(IReactorSocket, self._reactor),
                                 tcp_address(description), self.factory)
        return endpoints.serverFromString(self._reactor, description).listen(self.factory)

    def startService(self) -> None:  # noqa: N802
        if self._bound is None:
            self.privilegedStartService()
        super().startService()
        self._lag.start()
        assert self._bound is not None
        self._bound.addCallbacks(self._listening, self.listening.errback)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self._health.component_ready("listener")
        address = port.getHost()
        host, port_number = getattr(address, "host", None), getattr(address, "port", None)
        name = getattr(address, "name", address)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        where = f"{host}:{port_number}" if port_number is not None else f"unix:{name}"
        log.info("mnemomd {version} listening on {listen} (role {role})",
                 version=__version__, listen=where, role=self._role,
                 host=host, port=port_number)
        # systemd hears READY=1 when /health/startup would say ok (schema included).
        self._health.when_started(lambda: self._notifier.notify("READY=1"))
        self._notifier.start_watchdog(self._reactor)
        self.listening.callback(port)

    @inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        self._health.shutting_down = True
        self._notifier.notify("STOPPING=1")
        in_flight = self.gateway.in_flight
        log.info("Shutting down: {in_flight} request(s) in flight, grace {grace_seconds}s",
                 in_flight=in_flight.count,
                 grace_seconds=self._listener.shutdown_grace_seconds)
        if self.port is not None:
            yield self.port.stopListening()
        drained = in_flight.wait_idle()
        drained.addTimeout(self._listener.shutdown_grace_seconds, self._reactor)
        try:
            yield drained
        except Exception:
            log.warn("Grace period over with {in_flight} request(s) still in flight",
                     in_flight=in_flight.count)
        self.gateway.close_connections()
        self._notifier.stop_watchdog()
        self._lag.stop()
        yield self._client.close()
        log.info("Stopped")


class MigrationPending(MigrationError):
    """The database needs migrations and this process may not apply them."""


class StorageService(Service):
    """Database pool, schema, KV store and the agent directory's background writes.

    A database that is down at startup does not stop the daemon: the proxy forwards
    calls regardless (fail-open) while the schema step is retried with backoff, and
    ``/health/startup`` reports what it is waiting for. Only an inconsistent schema
    history (edited migration, newer database) is fatal.
    """

    name = "storage"
    MAX_RETRY_SECONDS = 60.0

    def __init__(self, storage: StorageConfig, reactor: IReactorTime, db: Database,
                 kv: KeyValueStore, directory: PersistentAgentDirectory, health: HealthState,
                 fatal: Callable[[int], None], *, failure_mode: str = "fail_open",
                 outages: Sequence[DependencyState] = ()) -> None:
        """``failure_mode`` (``AIP_FAILURE_MODE``) says what readiness makes of a
        database outage: under ``fail_closed`` the gateway cannot serve without it
        until it knows some agent's state; ``outages`` are the database's and the KV
        store's trackers (stopped with the service)."""
        self._storage = storage
        self._reactor = reactor
        self.db = db
        self._outbox = OutboxStore(db)
        self.kv = kv
        self.directory = directory
        self._health = health
        self._fatal = fatal
        self._retry: IDelayedCall | None = None
        self._delay = 1.0
        self._failure_mode = failure_mode
        self._outages = outages
        states = {state.name: state for state in outages}
        health.expect("schema")
        health.add_check("database", self._check_database, required=self._database_required,
                         fallback=self._database_fallback, state=states.get("database"))
        health.add_check("redis", self._check_kv, required=False,
                         fallback=lambda: "reads fall through to the database",
                         state=states.get("redis"))

    def _database_required(self) -> bool:
        """Under ``fail_closed`` with no agent state in memory, every call would be
        refused: the process cannot serve without the database."""
        return self._failure_mode == "fail_closed" and len(self.directory.memory) == 0

    def _database_fallback(self) -> str:
        known = len(self.directory.memory)
        unknown = ("refused (503 gateway_unavailable, fail_closed)"
                   if self._failure_mode == "fail_closed" else
                   "forwarded as observe (fail_open)")
        return (f"last known state of {known} agent(s) in memory; "
                f"agents not in memory are {unknown}")

    def _check_database(self) -> Deferred[CheckResult]:
        d = self.db.ping().addCallback(lambda _: (True, None))
        return d.addTimeout(READINESS_TIMEOUT, self._reactor)

    def _check_kv(self) -> Deferred[CheckResult]:
        return readiness_check(self.kv)().addTimeout(READINESS_TIMEOUT, self._reactor)

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.db.start()
        self.directory.start()
        self._prepare_schema()

    def _prepare_schema(self) -> None:
        self._retry = None
        now_ms = int(self._reactor.seconds() * 1000)
        if self._storage.migrate_on_start:
            d = migrate(self.db, now_ms)
        else:
            d = check_schema(self.db).addCallback(self._require_current)
        d.addCallback(self._purge_outbox)
        d.addCallbacks(self._schema_ready, self._schema_failed)

    @inlineCallbacks
    def _purge_outbox(self, applied: list[str]) -> Any:
        """Outbox rows past their TTL (left by a stopped or crashed process) are deleted
        before startup reports ok: the daemon never serves with them still on disk."""
        purged = yield self._outbox.purge_expired(int(self._reactor.seconds() * 1000))
        if purged:
            yield self.db.scrub_log()
            log.info("Deleted {count} expired trace outbox row(s) at startup", count=purged)
        return applied

    @staticmethod
    def _require_current(pending: list[str]) -> list[str]:
        if pending:
            raise MigrationPending(pending)
        return []

    def _schema_ready(self, applied: list[str]) -> None:
        if applied:
            log.info("Applied schema migrations: {migrations}", migrations=", ".join(applied))
        log.info("Database ready ({engine})", engine=self.db.engine)
        self._health.component_ready("schema")

    def _schema_failed(self, failure: Failure) -> None:
        if failure.check(MigrationPending):
            log.error("Schema migrations pending: {migrations}; run `mnemomd migrate` or set "
                      "MIGRATE_ON_START=true", migrations=", ".join(failure.value.args[0]))
        elif failure.check(MigrationError):
            log.critical("Database schema problem: {reason}", reason=failure.getErrorMessage())
            self._fatal(EX_CONFIG)
            return
        else:
            log.error("Database unavailable ({engine}): {reason}; retrying in {delay}s",
                      engine=self.db.engine, reason=failure.getErrorMessage(),
                      delay=self._delay)
        if self.running:
            self._retry = self._reactor.callLater(self._delay, self._prepare_schema)
            self._delay = min(self._delay * 2, self.MAX_RETRY_SECONDS)

    @inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        try:
            yield self.directory.stop()
        finally:
            yield self.kv.close()
            self.db.close()
            for state in self._outages:
                state.stop()


class WriterService(Service):
    """The write queue of the proxy's bookkeeping (``storage.writes``): stopped right after
    the gateway has drained, before the scheduler (whose last traces run needs the last
    outbox rows) and the storage, so the last calls' writes reach the database or the
    spool."""

    name = "writer"

    def __init__(self, writes: WriteQueue, health: HealthState) -> None:
        self.writes = writes
        #: Waited for before the queue's last drain (the pipeline's bookkeeping).
        self.settle: list[Callable[[], Deferred[Any]]] = []
        health.add_check("spool", self._check, required=False,
                         fallback=self._fallback)

    def _check(self) -> CheckResult:
        writes = self.writes
        state = "shedding" if writes.shedding else "spooling" if writes.outage else "ok"
        # Spooling or shedding is degraded (200): the proxy serves, the record waits on
        # local disk or, shedding, is lost until the database catches up.
        return state == "ok", {"state": state, "depth": writes.spool_depth,
                               "queued": writes.depth}

    def _fallback(self) -> str:
        if self.writes.shedding:
            return "bookkeeping is shed until the spool has room"
        return "bookkeeping is spooled to local disk until the database takes it"

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.writes.start()

    @inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        for settle in self.settle:
            try:
                yield settle()
            except Exception:
                log.failure("Waiting for bookkeeping before the last write failed")
        yield self.writes.stop()


class SchedulerService(Service):
    """The scheduler child of SPEC §2: starts and stops the periodic jobs it is given.

    Every role gets the outbox TTL sweep; ``all`` and ``scheduler`` also get heartbeat and
    license check and the leased observer jobs of SPEC §8.2 (nudges, retention, traces,
    drift, webhooks; see :func:`cloud_jobs` and :func:`shared_jobs`). With
    ``MNEMOM_OFFLINE=true`` heartbeat and license check still tick (and are counted) but
    make no call, so an operator sees the scheduler alive and the network untouched.
    """

    name = "scheduler"

    def __init__(self, jobs: list[PeriodicJob],
                 stopping: list[Callable[[], None]] | None = None,
                 settle: Callable[[], Deferred[Any]] | None = None) -> None:
        self.jobs = jobs
        #: Told first when stopping, so long runs (the traces job draining a backlog)
        #: end after their work in flight instead of running on.
        self.stopping = stopping or []
        #: Run once the jobs have stopped (after the proxy has drained): the outbox rows
        #: this process leaves behind (:func:`settle_outbox`).
        self.settle = settle

    def startService(self) -> None:  # noqa: N802
        super().startService()
        for job in self.jobs:
            job.start(now=job.at_start)

    @inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        for stop in self.stopping:
            stop()
        for job in self.jobs:
            yield job.stop()
        if self.settle is not None:
            try:
                yield self.settle()
            except Exception as e:
                log.warn("Could not settle the trace outbox at shutdown ({reason})",
                         reason=type(e).__name__)


def signing_key(integrity: IntegrityConfig, data_dir: str) -> SigningKey | None:
    """The key that signs checkpoints (``MNEMOM_SIGNING_KEY_FILE``, else created in the data
    directory on first start), or None with ``AIP_ATTESTATION=false``."""
    if not integrity.aip_attestation:
        return None
    if integrity.mnemom_signing_key_file:
        return load_signing_key(integrity.mnemom_signing_key_file, create=False)
    return load_signing_key(default_key_path(data_dir), create=True)


def cloud_jobs(cloud: CloudConfig, observer: ObserverConfig, reactor: IDaemonReactor,
               health: HealthState, metrics: GatewayMetrics, license_state: LicenseState,
               root: MnemomService, *, data_dir: str,
               license_token: str | None) -> list[PeriodicJob]:
    """The heartbeat and the online license check: every scheduler runs its own, once at
    start and then on its interval; both only with a license configured.

    With ``MNEMOM_OFFLINE=true`` the jobs still tick (and are counted) but make no call.
    """
    offline = cloud.mnemom_offline
    token = license_token.strip() if license_token and license_token.strip() else None
    deployment_id = load_or_create_deployment_id(data_dir)
    validator = OnlineValidator(reactor, reactor, cloud.mnemom_api_url, state=license_state,
                                token=token, instance_id=deployment_id)
    root.addCleanup(validator.close)
    heartbeat: Heartbeat | None = None
    if token is not None:
        heartbeat = Heartbeat(reactor, reactor, cloud.heartbeat_url, deployment_id,
                              __version__, reactor.seconds(), readiness_snapshot(health),
                              token)
        root.addCleanup(heartbeat.close)

    def send_heartbeat() -> Deferred[None] | None:
        return None if offline or heartbeat is None else heartbeat.send()

    def check_license() -> Deferred[None] | None:
        return None if offline else validator.check()

    return [
        PeriodicJob("heartbeat", observer.observer_heartbeat_interval_seconds,
                    send_heartbeat, reactor, metrics, at_start=True),
        PeriodicJob("license", observer.observer_license_interval_seconds, check_license,
                    reactor, metrics, at_start=True),
    ]


def shared_jobs(observer: ObserverConfig, reactor: IReactorTime, metrics: GatewayMetrics,
                db: Database, kv: KeyValueStore, dispatcher: WebhookDispatcher,
                decisions: AnalysisBackend | None, keyring: OutboxKeyring, *,
                redis_url: str | None,
                stopping: list[Callable[[], None]] | None = None,
                beside_proxy: bool = False) -> list[PeriodicJob]:
    """The jobs that run in one scheduler process at a time, whatever their number
    (a lease in Redis, or in a shared database). What must be told of a shutdown before
    the jobs are stopped is added to ``stopping``. ``beside_proxy``: they share the
    proxy's process (role ``all``), so the traces job paces itself (``SHARED_DUTY``)."""
    owner = lease_owner()
    leases = lease_store(kv, redis_url, db, reactor)

    def shared(name: str, interval: float, func: Callable[[], Deferred[Any]]) -> PeriodicJob:
        lease_ttl = max(60.0, interval * 2)
        return PeriodicJob(name, interval,
                           leased(leases, name, owner, lease_ttl, func, clock=reactor),
                           reactor, metrics)

    store = EnforcementStore(db)
    agents = AgentStore(db)
    # A run drains the backlog for up to one interval, then the log is scrubbed and the
    # next tick starts the next run.
    builder = TraceBuilder(reactor, OutboxStore(db), agents, owner, keyring, decisions,
                           metrics,
                           max_run_seconds=observer.observer_traces_interval_seconds * 0.9,
                           duty=SHARED_DUTY if beside_proxy else 1.0)
    if stopping is not None:
        stopping.append(builder.stop)
    drift = DriftDetector(reactor, TraceStore(db), agents, CheckpointStore(db))
    return [
        shared("nudges", observer.observer_nudges_interval_seconds,
               lambda: expire_nudges(reactor, store)),
        shared("retention", observer.observer_retention_interval_seconds,
               lambda: scrubbed(db, retention_run(reactor, db, observer.retention_days))),
        shared("traces", observer.observer_traces_interval_seconds,
               lambda: scrubbed(db, builder.run())),
        shared("drift", observer.observer_drift_interval_seconds, drift.run),
        shared("webhooks", observer.observer_webhooks_interval_seconds, dispatcher.run_due),
    ]


#: How long the last traces run at shutdown may keep claiming rows, and when it is cut
#: short whatever it is doing (seconds).
FINAL_TRACES_SECONDS = 5.0
FINAL_TRACES_TIMEOUT = 10.0


def final_traces(reactor: IReactorTime, db: Database, keyring: OutboxKeyring,
                 metrics: GatewayMetrics) -> Callable[[], Deferred[Any]]:
    """The last traces run at shutdown: bounded in time, heuristic decisions only (no
    outbound call while stopping), no lease (claims are per row, so it is safe beside a
    scheduler elsewhere)."""
    def run() -> Deferred[Any]:
        d: Deferred[Any] = TraceBuilder(
            reactor, OutboxStore(db), AgentStore(db), lease_owner(), keyring, None, metrics,
            max_run_seconds=FINAL_TRACES_SECONDS).run()
        return d.addTimeout(FINAL_TRACES_TIMEOUT, reactor)

    return run


@inlineCallbacks
def settle_outbox(db: Database, keyring: OutboxKeyring,
                  final_run: Callable[[], Deferred[Any]] | None) -> Any:
    """At shutdown, after the proxy has drained: build what traces can still be built
    (``final_run``, where this process runs the traces job), then delete the rows sealed
    under this process's own keys, which nobody can open once it has exited, and forget
    the keys. Rows sealed under keys shared through Redis stay for the other processes,
    unreadable once their key expires in Redis. Fires with the rows deleted."""
    if final_run is not None:
        try:
            yield final_run()
        except Exception as e:
            log.warn("The last traces run at shutdown failed ({reason})",
                     reason=type(e).__name__)
    dropped = yield OutboxStore(db).discard_prefixed(keyring.own_prefix)
    keyring.forget()
    if dropped:
        yield db.scrub_log()
        log.info("Deleted {count} trace outbox row(s) left at shutdown: their traces are "
                 "not built", count=dropped)
    return dropped


def scrubbed(db: Database, run: Deferred[Any]) -> Deferred[Any]:
    """``run``, then the database's log scrubbed: a job that deleted outbox excerpts must
    not leave their page images in SQLite's write-ahead log."""
    def scrub(result: Any) -> Any:
        changed = any(result.values()) if isinstance(result, dict) else bool(result)
        if not changed:
            return result
        return db.scrub_log().addCallback(lambda _: result)

    return run.addCallback(scrub)


def decision_backend(trace_decisions: str,
                     analyzer: IntegrityAnalyzer) -> AnalysisBackend | None:
    """The backend that may analyse trace decisions, or None for the heuristic: excerpts
    go only to a backend the operator gave a key for, never to the hybrid endpoint."""
    settings = analyzer.settings
    if trace_decisions != "auto" or settings.provider == "mnemom":
        return None
    if settings.provider == "openai-compatible" or settings.api_key:
        return analyzer.backend
    return None


def events_after(on_outcome: OutcomeHook, kick: Callable[[], None]) -> OutcomeHook:
    """``on_outcome``, then a kick of the webhook dispatcher when the verdict may have
    queued events (nudges, containment changes)."""
    def run(agent: Agent, session_id: str, verdict: str, checkpoint_id: str,
            concerns: list[dict[str, Any]], synthetic: bool = False) -> Deferred[Any]:
        d = maybeDeferred(on_outcome, agent, session_id, verdict, checkpoint_id, concerns,
                          synthetic=synthetic)
        if verdict != "clear":
            d.addBoth(lambda result: (kick(), result)[1])
        return d

    return run


class MnemomService(MultiService):
    """The whole daemon, one child per responsibility (SPEC §2)."""

    def __init__(self, config: Config, reactor: IReactorCore, health: HealthState,
                 metrics: GatewayMetrics) -> None:
        super().__init__()
        self.config = config
        self.health = health
        self.metrics = metrics
        self._reactor = reactor
        #: What ``mnemomd run`` exits with once the reactor stops.
        self.exit_code = 0
        self.license: LicenseState | None = None
        self._cleanups: list[Callable[[], Any]] = []
        self._freeze_heap = False

    def freeze_heap_when_started(self) -> None:
        """Once every component is up, freeze the heap built so far out of the garbage
        collector's way (``ops/memory.py``): for a process that serves, not for tests."""
        self._freeze_heap = True

    def startService(self) -> None:  # noqa: N802
        super().startService()
        if self._freeze_heap:
            self.health.when_started(self._freeze)

    def _freeze(self) -> None:
        frozen = freeze_startup_heap()
        log.info("Startup heap frozen: {objects} objects", objects=frozen)

    def addCleanup(self, cleanup: Callable[[], Any]) -> None:  # noqa: N802
        """Run ``cleanup`` after every child service has stopped."""
        self._cleanups.append(cleanup)

    @inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        # One child at a time, newest first: the gateway drains its calls (and their
        # background analyses) while storage is still there to record them.
        Service.stopService(self)
        for child in reversed(list(self)):
            try:
                yield child.stopService()
            except Exception:
                log.failure("Stopping {name} failed", name=child.name)
        for cleanup in self._cleanups:
            try:
                yield cleanup()
            except Exception:
                log.failure("Cleanup failed")

    def fatal(self, code: int) -> None:
        """Stop the daemon because it cannot work; the process exits with ``code``."""
        self.exit_code = code
        self._reactor.callWhenRunning(self._reactor.stop)

    @property
    def gateway_service(self) -> GatewayService:
        return self.getServiceNamed("gateway")  # type: ignore[return-value]

    @property
    def listening(self) -> Deferred[IListeningPort]:
        return self.gateway_service.listening

    @property
    def storage(self) -> StorageService:
        return self.getServiceNamed("storage")  # type: ignore[return-value]


def make_management_api(api: ApiConfig, reactor: IDaemonReactor, db: Database,
                        directory: PersistentAgentDirectory, dispatcher: WebhookDispatcher,
                        metrics: GatewayMetrics, output_analysis: bool = True,
                        policies: PolicyBook | None = None) -> ManagementApi:
    """The ``/v1`` API over the same storage and KV store as the proxy; ``output_analysis``
    says whether agents may be given ``without_reasoning: analyse_output``."""
    openapi: dict[str, Any] = {}

    def document() -> dict[str, Any]:
        if not openapi:
            openapi.update(build_openapi())
        return openapi

    handlers = ApiHandlers(reactor, ManagementStore(db), EnforcementStore(db),
                           WebhookStore(db), TraceStore(db), directory.invalidate_all,
                           dispatcher.kick, document, output_analysis=output_analysis,
                           policies=policies, attestation=AttestationLedger(db),
                           console_config={
                               "oidc_issuer": api.mnemom_oidc_issuer,
                               "oidc_client_id": api.mnemom_oidc_client_id
                               if api.mnemom_oidc_issuer else None})
    oidc_settings = settings_from_config(api)
    # The operator's own identity provider: its keys are fetched even under
    # MNEMOM_OFFLINE, which only concerns Mnemom's cloud (docs/data-residency.md).
    oidc = OidcVerifier(reactor, oidc_settings, HttpJsonFetcher(reactor)) \
        if oidc_settings is not None else None
    return ManagementApi(reactor, credentials_from_config(api), handlers, send_json, metrics,
                         oidc)


def worker_config(config: Config, worker: WorkerSlot) -> Config:
    """``config`` as one worker under the supervisor runs it: its role (the scheduler's
    jobs in worker 0 only), no migrations (the supervisor applied them before starting
    the workers), the port every worker shares, and one process."""
    daemon = dataclasses.replace(config.daemon, mnemom_role=worker.role(config.daemon.role),
                                 mnemom_workers=1)
    storage = dataclasses.replace(config.storage, migrate_on_start=False)
    address = tcp_address(config.listener.listen_description)
    host = address.host.replace(":", r"\:")
    listener = dataclasses.replace(config.listener, listen=f"tcp:{worker.port}:interface={host}")
    return dataclasses.replace(config, daemon=daemon, storage=storage, listener=listener)


def make_service(config: Config, reactor: IDaemonReactor | None = None,
                 environ: Mapping[str, str] | None = None,
                 metrics: GatewayMetrics | None = None,
                 database_threads: TransactionThreads | None = None,
                 spool_threads: TransactionThreads | None = None,
                 providers: ProviderRegistry = PROVIDERS,
                 worker: WorkerSlot | None = None) -> MnemomService:
    """Build the daemon for ``config``; nothing runs until the service is started.

    ``database_threads`` replaces the database's thread pool and ``spool_threads`` the
    spool's file thread (the in-process test harness runs both on the calling thread);
    production leaves them unset. ``providers``
    is what the proxy routes to and the analysis may use: a build or a test with a
    provider of its own passes ``PROVIDERS.including(...)``, and nothing else changes.
    ``worker`` is this process's slot under the supervisor of ``MNEMOM_WORKERS``
    (:func:`worker_config` says what it changes); None for a single process.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = cast(IDaemonReactor, default_reactor)
    environ = os.environ if environ is None else environ
    if worker is not None:
        config = worker_config(config, worker)
    metrics = metrics or GatewayMetrics(
        multiprocess_dir=worker.metrics_dir if worker is not None else None, threads=reactor)
    role = config.daemon.role
    health = HealthState(reactor, __version__, config.integrity.aip_enabled)
    if worker is not None:
        health.identity = worker.identity(os.getpid())
    root = MnemomService(config, reactor, health, metrics)

    storage = config.storage
    failure_mode = config.analysis.aip_failure_mode
    # Outages of the database and the KV store are told by the operations on them, logged
    # once per change, and read by readiness; callers log no traceback for them.
    outages = (DependencyState("database", reactor, database_outage_errors()),
               DependencyState("redis", reactor, (KVUnavailableError,)))
    db = Database(reactor, storage.database_url, threads=database_threads, state=outages[0])
    kv = make_kv_store(reactor, storage.redis_url, storage.redis_password, metrics,
                       state=outages[1])
    # The last known state of every agent resolved, for when both fail.
    memory = LastKnownState()
    directory = PersistentAgentDirectory(reactor, AgentStore(db),
                                         KVCache(kv, "", AGENT_CACHE_TTL),
                                         config.integrity.aip_default_enforcement,
                                         config.integrity.aip_default_without_reasoning,
                                         memory=memory, outages=outages)
    StorageService(storage, reactor, db, kv, directory, health, root.fatal,
                   failure_mode=failure_mode, outages=outages).setServiceParent(root)
    spool, orphans = orphan_spools(os.path.join(config.daemon.mnemom_data_dir, "spool"),
                                   worker.index if worker is not None else None,
                                   worker.count if worker is not None else 1)
    writes = WriteQueue(reactor, db, spool, metrics, max_pending=storage.write_queue_max_rows,
                        spool_max_bytes=storage.spool_max_bytes, threads=spool_threads,
                        adopt=orphans)
    writer = WriterService(writes, health)

    sender = WebhookSender(reactor)
    dispatcher = WebhookDispatcher(reactor, WebhookStore(db), sender.send, lease_owner(),
                                   metrics=metrics, outages=outages)
    # Cleanups run in order: the send in progress finishes before the pool closes.
    root.addCleanup(dispatcher.stop)
    root.addCleanup(sender.close)

    analyzer, analysis_http = build_analyzer(analysis_settings(config.analysis, providers),
                                             reactor, metrics, providers=providers)
    output_analysis = output_analysis_allowed(config.analysis.analysis_provider, providers)
    outbox_ttl = config.observer.outbox_ttl
    # Outbox payloads are sealed under keys that expire with the rows' TTL: shared through
    # Redis, or held by this process alone with the in-memory store.
    keyring = OutboxKeyring(kv, reactor, outbox_ttl, outbox_sweep_interval(outbox_ttl),
                            shared=kv.kind != "memory")
    if role != "all" and not keyring.shared:
        log.warn("Without REDIS_URL the trace outbox keys stay in each process: a {role} "
                 "process cannot share them with the other half, so no traces are built; "
                 "set REDIS_URL", role=role)
    integrity = IntegrityPipeline(config.integrity, reactor, analyzer, AgentStore(db),
                                  writes, KVCache(kv, "", CARD_CACHE_TTL),
                                  KVCache(kv, "", WINDOW_TTL), metrics,
                                  config.integrity.aap_enabled,
                                  outbox_ttl=outbox_ttl, seal=keyring.seal,
                                  output_analysis=output_analysis, memory=memory,
                                  outages=outages,
                                  signing_key=signing_key(config.integrity,
                                                          config.daemon.mnemom_data_dir))
    root.addCleanup(analysis_http.close)

    enforcement = Enforcement(reactor, EnforcementStore(db, writes),
                              KVCache(kv, "", NUDGE_FLAG_TTL), directory.invalidate)
    integrity.on_outcome = events_after(enforcement.on_outcome, dispatcher.kick)
    integrity.on_events_queued = dispatcher.kick
    writer.settle.append(integrity.settled)

    license_ = config.license
    license_state = LicenseState.from_token(
        license_.mnemom_license_jwt, load_trusted_keys(license_.mnemom_license_public_key),
        required=license_.license_required, clock=reactor, metrics=metrics)
    health.add_check("license", license_state.readiness)
    root.addCleanup(license_state.stop)
    root.license = license_state
    outbox = OutboxStore(db)
    # Every role sweeps the outbox, so its TTL holds whatever else runs (SPEC §8.1); rows
    # are written to expire one sweep early, so none outlives OUTBOX_TTL.
    jobs = [PeriodicJob("outbox_expiry", outbox_sweep_interval(config.observer.outbox_ttl),
                        lambda: scrubbed(db, sweep_outbox(reactor, outbox, metrics)),
                        reactor, metrics)]
    stopping: list[Callable[[], None]] = []
    final_run = None
    if role in ("all", "scheduler"):
        jobs += cloud_jobs(config.cloud, config.observer, reactor, health, metrics,
                           license_state, root, data_dir=config.daemon.mnemom_data_dir,
                           license_token=license_.mnemom_license_jwt)
        jobs += shared_jobs(config.observer, reactor, metrics, db, kv, dispatcher,
                            decision_backend(config.observer.trace_decisions, analyzer),
                            keyring, redis_url=storage.redis_url, stopping=stopping,
                            beside_proxy=role == "all")
        final_run = final_traces(reactor, db, keyring, metrics)
    SchedulerService(jobs, stopping,
                     lambda: settle_outbox(db, keyring, final_run)).setServiceParent(root)
    # Stopped before the scheduler: the last calls' outbox rows are written before its
    # final traces run and the deletion of what is left.
    writer.setServiceParent(root)
    metrics.scheduler_jobs.set(len(jobs))

    proxy_config = config.proxy
    # Tool policies: the file's (checked with the configuration) and the stored ones.
    policy_file = config.proxy.mnemom_policy_file
    policies = PolicyBook(reactor, PolicyStore(db), KVCache(kv, "", CARD_CACHE_TTL),
                          read_policy_file(policy_file) if policy_file else None,
                          outages=outages)
    policy_step = PolicyStep(reactor, policies, metrics, writes, dispatcher.kick)
    integrity.on_tools_called = policy_step.called
    client = UpstreamClient(reactor, proxy_config.upstream_max_connections_per_host)
    proxy = ProxyHandler(proxy_config, reactor, client, directory, metrics, integrity,
                         enforcement, license_state, analysis_timeout=config.analysis.timeout,
                         log_level=config.logging.log_level,
                         failure_mode=failure_mode, providers=providers, outages=outages,
                         policies=policy_step)
    api = make_management_api(config.api, reactor, db, directory, dispatcher, metrics,
                              output_analysis, policies) if role != "scheduler" else None
    # The console is read from the package once, here, never from the reactor.
    console = ConsoleSite(load_assets(), config.api.mnemom_oidc_issuer) \
        if api is not None else None
    gateway = Gateway(reactor, config.listener.max_request_body_bytes, health, metrics,
                      proxy if role != "scheduler" else None, api, console)
    lag = ReactorLagMonitor(reactor, metrics.reactor_lag)
    GatewayService(config.listener, role, reactor, gateway, health, client,
                   SystemdNotifier(environ), lag,
                   reuse_port=worker is not None).setServiceParent(root)
    return root

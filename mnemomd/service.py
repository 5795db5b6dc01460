"""The one place the daemon is assembled.

``make_service`` is used by ``mnemomd run``, the twistd plugin, the frozen binary and the
tests alike, so there is exactly one way the daemon is wired together. Everything it
needs comes in as an argument: no module-level state.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, fail, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd import __version__
from mnemomd.agents.directory import AGENT_CACHE_TTL, PersistentAgentDirectory
from mnemomd.agents.store import AgentStore
from mnemomd.api.auth import credentials_from_config
from mnemomd.api.handlers import ApiHandlers
from mnemomd.api.openapi import build_openapi
from mnemomd.api.queries import ManagementStore
from mnemomd.api.resource import ManagementApi
from mnemomd.cloud.heartbeat import Heartbeat, load_or_create_deployment_id, readiness_snapshot
from mnemomd.cloud.license import LicenseState, OnlineValidator, load_trusted_keys
from mnemomd.config import EX_CONFIG, Config, output_analysis_allowed
from mnemomd.config.analysis import from_config as analysis_settings
from mnemomd.enforcement.enforcer import NUDGE_FLAG_TTL, Enforcement
from mnemomd.enforcement.expiry import expire_nudges
from mnemomd.enforcement.store import EnforcementStore
from mnemomd.http.server import Gateway, GatewayFactory, send_json
from mnemomd.integrity.backends import AnalysisBackend
from mnemomd.integrity.checkpoints import CheckpointStore
from mnemomd.integrity.engine import build_analyzer
from mnemomd.integrity.pipeline import CARD_CACHE_TTL, WINDOW_TTL, IntegrityPipeline
from mnemomd.kv import KeyValueStore, KVCache, make_kv_store, readiness_check
from mnemomd.observer.drift import DriftDetector
from mnemomd.observer.lease import lease_owner, lease_store, leased
from mnemomd.observer.retention import retention_run
from mnemomd.observer.traces import TraceBuilder
from mnemomd.ops.health import CheckResult, HealthState
from mnemomd.ops.jobs import PeriodicJob
from mnemomd.ops.metrics import GatewayMetrics, ReactorLagMonitor
from mnemomd.ops.notify import SystemdNotifier
from mnemomd.proxy.handler import ProxyHandler
from mnemomd.proxy.relay import UpstreamClient
from mnemomd.storage.database import Database, TransactionThreads
from mnemomd.storage.migrations import MigrationError, check_schema, migrate
from mnemomd.storage.traces import OutboxStore, TraceStore, outbox_sweep_interval
from mnemomd.webhooks.delivery import WebhookDispatcher, WebhookSender
from mnemomd.webhooks.store import WebhookStore

log = Logger()

#: Seconds a readiness check may take before it counts as failing.
READINESS_TIMEOUT = 2.0


class GatewayService(Service):
    """Listens, and on stop drains: readiness 503, listener closed, in-flight finished."""

    name = "gateway"

    def __init__(self, config: Config, reactor: Any, gateway: Gateway, health: HealthState,
                 client: UpstreamClient, notifier: SystemdNotifier,
                 lag: ReactorLagMonitor) -> None:
        self._config = config
        self._reactor = reactor
        self.gateway = gateway
        self._health = health
        self._client = client
        self._notifier = notifier
        self._lag = lag
        self.factory = GatewayFactory(gateway, reactor)
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
            endpoint = endpoints.serverFromString(self._reactor,
                                                  self._config.listen_description)
            self._bound = endpoint.listen(self.factory)
        except Exception:  # an unusable description, key file or systemd index
            self._bound = fail()
        self._bound.addErrback(lambda f: failures.append(f) or f)
        if failures:
            self._bound.addErrback(lambda _: None)
            log.critical("Cannot listen on {listen}: {reason}",
                         listen=self._config.listen_description,
                         reason=failures[0].getErrorMessage())
            raise SystemExit(1)

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
                 version=__version__, listen=where, role=self._config.role,
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
                 in_flight=in_flight.count, grace_seconds=self._config.shutdown_grace_seconds)
        if self.port is not None:
            yield self.port.stopListening()
        drained = in_flight.wait_idle()
        drained.addTimeout(self._config.shutdown_grace_seconds, self._reactor)
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

    def __init__(self, config: Config, reactor: Any, db: Database, kv: KeyValueStore,
                 directory: PersistentAgentDirectory, health: HealthState,
                 fatal: Callable[[int], None]) -> None:
        self._config = config
        self._reactor = reactor
        self.db = db
        self.kv = kv
        self.directory = directory
        self._health = health
        self._fatal = fatal
        self._retry: IDelayedCall | None = None
        self._delay = 1.0
        health.expect("schema")
        health.add_check("database", self._check_database)
        health.add_check("redis", self._check_kv)

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
        if self._config.migrate_on_start:
            d = migrate(self.db, now_ms)
        else:
            d = check_schema(self.db).addCallback(self._require_current)
        d.addCallbacks(self._schema_ready, self._schema_failed)

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


class SchedulerService(Service):
    """The scheduler child of SPEC §2: starts and stops the periodic jobs it is given.

    Every role gets the outbox TTL sweep; ``all`` and ``scheduler`` also get heartbeat and
    license check and the leased observer jobs of SPEC §8.2 (nudges, retention, traces,
    drift, webhooks; see :func:`scheduler_jobs`). With ``MNEMOM_OFFLINE=true`` heartbeat
    and license check still tick (and are counted) but make no call, so an operator sees
    the scheduler alive and the network untouched.
    """

    name = "scheduler"

    def __init__(self, jobs: list[PeriodicJob]) -> None:
        self.jobs = jobs

    def startService(self) -> None:  # noqa: N802
        super().startService()
        for job in self.jobs:
            job.start(now=False)

    @inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        for job in self.jobs:
            yield job.stop()


def scheduler_jobs(config: Config, reactor: Any, health: HealthState,
                   metrics: GatewayMetrics, license_state: LicenseState,
                   root: MnemomService, db: Database, kv: KeyValueStore,
                   dispatcher: WebhookDispatcher,
                   decisions: AnalysisBackend | None) -> list[PeriodicJob]:
    offline = config.mnemom_offline
    heartbeat = Heartbeat(reactor, reactor, config.heartbeat_url,
                          load_or_create_deployment_id(config.mnemom_data_dir), __version__,
                          reactor.seconds(), readiness_snapshot(health))
    root.addCleanup(heartbeat.close)
    validator = OnlineValidator(reactor, reactor, config.mnemom_api_url, state=license_state,
                                token=config.mnemom_license_jwt)
    root.addCleanup(validator.close)

    def beat() -> Deferred[None] | None:
        return None if offline else heartbeat.send()

    def check_license() -> Deferred[None] | None:
        return None if offline else validator.check()

    owner = lease_owner()
    leases = lease_store(kv, config.redis_url, db, reactor)

    def shared(name: str, interval: float, func: Callable[[], Any]) -> PeriodicJob:
        """A job that runs in one scheduler process at a time, whatever their number."""
        lease_ttl = max(60.0, interval * 2)
        return PeriodicJob(name, interval,
                           leased(leases, name, owner, lease_ttl, func, clock=reactor),
                           reactor, metrics)

    store = EnforcementStore(db)
    agents = AgentStore(db)
    builder = TraceBuilder(reactor, OutboxStore(db), agents, owner, decisions, metrics)
    drift = DriftDetector(reactor, TraceStore(db), agents, CheckpointStore(db))
    return [
        PeriodicJob("heartbeat", config.observer_heartbeat_interval_seconds, beat, reactor,
                    metrics),
        PeriodicJob("license", config.observer_license_interval_seconds, check_license,
                    reactor, metrics),
        shared("nudges", config.observer_nudges_interval_seconds,
               lambda: expire_nudges(reactor, store)),
        shared("retention", config.observer_retention_interval_seconds,
               lambda: scrubbed(db, retention_run(reactor, db, config.retention_days))),
        shared("traces", config.observer_traces_interval_seconds,
               lambda: scrubbed(db, builder.run())),
        shared("drift", config.observer_drift_interval_seconds, drift.run),
        shared("webhooks", config.observer_webhooks_interval_seconds, dispatcher.run_due),
    ]


def scrubbed(db: Database, run: Deferred[Any]) -> Deferred[Any]:
    """``run``, then the database's log scrubbed: a job that deleted outbox excerpts must
    not leave their page images in SQLite's write-ahead log."""
    def scrub(result: Any) -> Any:
        changed = any(result.values()) if isinstance(result, dict) else bool(result)
        if not changed:
            return result
        return db.scrub_log().addCallback(lambda _: result)

    return run.addCallback(scrub)


def decision_backend(config: Config, analyzer: Any) -> AnalysisBackend | None:
    """The backend that may analyse trace decisions, or None for the heuristic: excerpts
    go only to a backend the operator gave a key for, never to the hybrid endpoint."""
    settings = analyzer.settings
    if config.trace_decisions != "auto" or settings.provider == "mnemom":
        return None
    if settings.provider == "openai-compatible" or settings.api_key:
        return analyzer.backend  # type: ignore[no-any-return]
    return None


def events_after(on_outcome: Callable[..., Any],
                 kick: Callable[[], None]) -> Callable[..., Deferred[Any]]:
    """``on_outcome``, then a kick of the webhook dispatcher when the verdict may have
    queued events (nudges, containment changes)."""
    def run(agent: Any, session_id: str, verdict: str, *args: Any,
            **kwargs: Any) -> Deferred[Any]:
        d = maybeDeferred(on_outcome, agent, session_id, verdict, *args, **kwargs)
        if verdict != "clear":
            d.addBoth(lambda result: (kick(), result)[1])
        return d

    return run


class MnemomService(MultiService):
    """The whole daemon, one child per responsibility (SPEC §2)."""

    def __init__(self, config: Config, reactor: Any, health: HealthState,
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


def make_management_api(config: Config, reactor: Any, db: Database,
                        directory: PersistentAgentDirectory, dispatcher: WebhookDispatcher,
                        metrics: GatewayMetrics) -> ManagementApi:
    """The ``/v1`` API over the same storage and KV store as the proxy."""
    openapi: dict[str, Any] = {}

    def document() -> dict[str, Any]:
        if not openapi:
            openapi.update(build_openapi())
        return openapi

    handlers = ApiHandlers(reactor, ManagementStore(db), EnforcementStore(db),
                           WebhookStore(db), TraceStore(db), directory.invalidate_all,
                           dispatcher.kick, document,
                           output_analysis=output_analysis_allowed(config.analysis_provider))
    return ManagementApi(reactor, credentials_from_config(config), handlers, send_json,
                         metrics)


def make_service(config: Config, reactor: Any = None,
                 environ: Mapping[str, str] | None = None,
                 metrics: GatewayMetrics | None = None,
                 database_threads: TransactionThreads | None = None) -> MnemomService:
    """Build the daemon for ``config``; nothing runs until the service is started.

    ``database_threads`` replaces the database's thread pool (the in-process test harness
    runs transactions on the calling thread); production leaves it unset.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    environ = os.environ if environ is None else environ
    metrics = metrics or GatewayMetrics()
    health = HealthState(reactor, __version__, config.aip_enabled)
    root = MnemomService(config, reactor, health, metrics)

    db = Database(reactor, config.database_url, threads=database_threads)
    kv = make_kv_store(reactor, config.redis_url, config.redis_password, metrics)
    directory = PersistentAgentDirectory(reactor, AgentStore(db),
                                         KVCache(kv, "", AGENT_CACHE_TTL),
                                         config.aip_default_enforcement,
                                         config.aip_default_without_reasoning)
    StorageService(config, reactor, db, kv, directory, health,
                   root.fatal).setServiceParent(root)

    sender = WebhookSender(reactor)
    dispatcher = WebhookDispatcher(reactor, WebhookStore(db), sender.send, lease_owner())
    # Cleanups run in order: the send in progress finishes before the pool closes.
    root.addCleanup(dispatcher.stop)
    root.addCleanup(sender.close)

    analyzer, analysis_http = build_analyzer(analysis_settings(config), reactor, metrics)
    integrity = IntegrityPipeline(config, reactor, analyzer, AgentStore(db),
                                  CheckpointStore(db), KVCache(kv, "", CARD_CACHE_TTL),
                                  KVCache(kv, "", WINDOW_TTL), metrics, OutboxStore(db),
                                  output_analysis_allowed(config.analysis_provider))
    root.addCleanup(analysis_http.close)

    enforcement = Enforcement(reactor, EnforcementStore(db),
                              KVCache(kv, "", NUDGE_FLAG_TTL), directory.invalidate)
    integrity.on_outcome = events_after(enforcement.on_outcome, dispatcher.kick)
    integrity.on_events_queued = dispatcher.kick

    license_state = LicenseState.from_token(
        config.mnemom_license_jwt, load_trusted_keys(config.mnemom_license_public_key),
        required=config.license_required, clock=reactor, metrics=metrics)
    health.add_check("license", license_state.readiness)
    root.addCleanup(license_state.stop)
    root.license = license_state
    outbox = OutboxStore(db)
    # Every role sweeps the outbox, so its TTL holds whatever else runs (SPEC §8.1); rows
    # are written to expire one sweep early, so none outlives OUTBOX_TTL.
    jobs = [PeriodicJob("outbox_expiry", outbox_sweep_interval(config.outbox_ttl),
                        lambda: scrubbed(db, outbox.purge_expired(int(reactor.seconds() * 1000))),
                        reactor, metrics)]
    if config.role in ("all", "scheduler"):
        jobs += scheduler_jobs(config, reactor, health, metrics, license_state, root, db, kv,
                               dispatcher, decision_backend(config, analyzer))
    SchedulerService(jobs).setServiceParent(root)

    client = UpstreamClient(reactor, config.upstream_max_connections_per_host)
    proxy = ProxyHandler(config, reactor, client, directory, metrics, integrity, enforcement,
                         license_state)
    api = make_management_api(config, reactor, db, directory, dispatcher, metrics) \
        if config.role != "scheduler" else None
    gateway = Gateway(reactor, config.max_request_body_bytes, health, metrics,
                      proxy if config.role != "scheduler" else None, api)
    lag = ReactorLagMonitor(reactor, metrics.reactor_lag)
    GatewayService(config, reactor, gateway, health, client, SystemdNotifier(environ),
                   lag).setServiceParent(root)
    return root

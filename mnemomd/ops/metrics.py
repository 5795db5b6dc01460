"""Prometheus metrics, one registry per service instance (no process-global state).

Under ``MNEMOM_WORKERS`` each worker writes its values to files in the directory the
supervisor names (prometheus-client's multiprocess mode, chosen when the worker process
starts), and whichever worker answers ``/metrics`` renders the sum of all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: LLM calls take seconds to minutes; buckets reach 10 minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                    600)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Aggregate(Collector):
    """Every worker's values from the multiprocess directory, except the metrics this
    process computes when asked (``set_function`` gauges: the same in every worker),
    which come from ``local``."""

    def __init__(self, directory: str, local: Iterable[Collector]) -> None:
        self._workers = MultiProcessCollector(None, directory)
        self._local = list(local)

    def collect(self) -> Iterator[Metric]:
        local = [metric for collector in self._local for metric in collector.collect()]
        names = {metric.name for metric in local}
        for metric in self._workers.collect():
            if metric.name not in names:
                yield metric
        yield from local


class GatewayMetrics:
    """The metrics of SPEC §12.2 that this process fills.

    ``multiprocess_dir`` is set in a worker under the supervisor: ``render`` then shows
    the sum over every worker, live or dead (a dead worker's counts stay in the sums;
    gauges marked ``live…`` drop it), and the per-process collectors (memory, CPU, GC)
    are left out, as they describe one process only.
    """

    def __init__(self, registry: CollectorRegistry | None = None,
                 process_collectors: bool = True, multiprocess_dir: str | None = None,
                 threads: IReactorThreads | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._multiprocess_dir = multiprocess_dir
        self._threads = threads
        if process_collectors and multiprocess_dir is None:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.requests = Counter(
            "gateway_requests",
            "Requests to provider routes by provider and status (provider none: no route)",
            ["provider", "status"], registry=self.registry)
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request received to the end of the response (end of stream)",
            ["provider"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.upstream_ttfb = Histogram(
            "gateway_upstream_ttfb_seconds",
            "Time from request sent upstream to upstream response headers",
            ["provider"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.reactor_lag = Histogram(
            "gateway_reactor_lag_seconds",
            "How late the reactor ran a timer: time the event loop was blocked",
            buckets=LAG_BUCKETS, registry=self.registry)
        self.cache_operations = Counter(
            "gateway_cache_operations",
            "Key-value store operations by operation and result (hit, miss, ok, conflict, error)",
            ["operation", "result"], registry=self.registry)
        self.policy_evaluations = Counter(
            "gateway_policy_evaluations",
            "Tool policy evaluations of proxied calls by verdict (pass, warn, fail)",
            ["verdict"], registry=self.registry)
        self.aip_checks = Counter(
            "gateway_aip_checks",
            "Integrity checks by verdict, synthetic outcomes included",
            ["verdict"], registry=self.registry)
        self.aip_analysis_failures = Counter(
            "gateway_aip_analysis_failures",
            "Integrity analyses that failed, by backend and reason (timeout, unreachable, "
            "http_<status>, malformed, circuit_open, ...)",
            ["backend", "reason"], registry=self.registry)
        self.license_state = Gauge(
            "gateway_license_state",
            "1 for the license's current state, 0 for the others (valid, grace, expired, "
            "invalid, not_yet_valid, unlicensed)",
            ["state"], multiprocess_mode="livemostrecent", registry=self.registry)
        self.license_seconds_to_expiry = Gauge(
            "gateway_license_seconds_to_expiry",
            "Seconds until the license expires: negative during the grace period, NaN "
            "without a verified license",
            multiprocess_mode="livemostrecent", registry=self.registry)
        self.cron_runs = Counter(
            "gateway_cron_runs",
            "Background job ticks by job and result (ok, error, skipped: the previous run "
            "was still going)",
            ["job", "result"], registry=self.registry)
        self.cron_duration = Histogram(
            "gateway_cron_duration_seconds",
            "How long each background job run took, failed runs included",
            ["job"], buckets=DURATION_BUCKETS, registry=self.registry)

        self.outbox_depth = Gauge(
            "gateway_outbox_depth",
            "Trace outbox rows by state (ready: waiting for the traces job; parked: failed "
            "too often, kept until their TTL); the whole outbox, as every process sees it",
            ["state"], multiprocess_mode="livemostrecent", registry=self.registry)
        self.outbox_oldest_ready_age = Gauge(
            "gateway_outbox_oldest_ready_age_seconds",
            "Age of the oldest ready trace outbox row (0 when none is ready): a row this old "
            "is lost when it reaches OUTBOX_TTL",
            multiprocess_mode="livemostrecent", registry=self.registry)
        self.outbox_shredded = Counter(
            "gateway_outbox_shredded",
            "Trace outbox rows deleted unread because the key that sealed them had expired "
            "(their TTL was as good as over)",
            registry=self.registry)
        self.scheduler_jobs = Gauge(
            "gateway_scheduler_jobs",
            "Periodic jobs this process runs; under MNEMOM_WORKERS one sample per live "
            "worker, labelled with its pid (worker 0 runs the scheduler's jobs)",
            multiprocess_mode="liveall", registry=self.registry)
        self.webhook_deliveries = Counter(
            "gateway_webhook_deliveries",
            "Webhook delivery attempts by result (delivered, retried, failed: for good), "
            "and endpoints disabled after consecutive failures (disabled)",
            ["result"], registry=self.registry)

        self.write_queue_depth = Gauge(
            "gateway_write_queue_depth",
            "Bookkeeping writes (checkpoints, trace-outbox rows, drift alerts, nudges) "
            "queued in memory for the batch writer; summed over workers",
            multiprocess_mode="livesum", registry=self.registry)
        self.spool_depth = Gauge(
            "gateway_spool_depth",
            "Bookkeeping writes in the durable local spool, waiting for the database; "
            "summed over workers", multiprocess_mode="livesum", registry=self.registry)
        self.spool_bytes = Gauge(
            "gateway_spool_bytes", "Size of the durable local spool on disk (SPOOL_MAX_BYTES "
            "caps it, per process); summed over workers", multiprocess_mode="livesum",
            registry=self.registry)
        self.bookkeeping_writes = Counter(
            "gateway_bookkeeping_writes",
            "Bookkeeping writes by kind and outcome: stored (in the database), spooled "
            "(on local disk), replayed (from the spool into the database), expired "
            "(past their TTL before they could be written), rejected (refused by the "
            "database: a bug)", ["kind", "outcome"], registry=self.registry)
        self.bookkeeping_shed = Counter(
            "gateway_bookkeeping_shed",
            "Bookkeeping writes dropped because the queue and the spool were both full",
            ["kind"], registry=self.registry)

        self.client_connections_closed = Counter(
            "gateway_client_connections_closed",
            "Client connections the front door closed on its own: request_timeout (the "
            "request was not received by REQUEST_TIMEOUT, answered 408), per_client_limit "
            "(over MAX_CONNECTIONS_PER_CLIENT, answered 429)",
            ["reason"], registry=self.registry)

    def render(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Aggregate(self._multiprocess_dir, [self.license_seconds_to_expiry]))
        return generate_latest(registry)

    def render_later(self) -> Deferred[bytes]:
        """``render``, on a thread when it reads every worker's files."""
        if self._multiprocess_dir is None or self._threads is None:
            return succeed(self.render())
        threads = self._threads
        return deferToThreadPool(threads, threads.getThreadPool(), self.render)


class ReactorLagMonitor:
    """Schedules a timer every ``interval`` and records how late it fired.

    A late timer means the reactor was busy with something else: the most direct
    measure of whether anything blocks the event loop.
    """

    def __init__(self, clock: IReactorTime, histogram: Histogram,
                 interval: float = 0.5) -> None:
        self._clock = clock
        self._histogram = histogram
        self._interval = interval
        self._expected: float | None = None
        self.last_lag = 0.0
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def _tick(self) -> None:
        now = self._clock.seconds()
        if self._expected is not None:
            self.last_lag = max(0.0, now - self._expected)
            self._histogram.observe(self.last_lag)
        self._expected = now + self._interval

    def start(self) -> None:
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

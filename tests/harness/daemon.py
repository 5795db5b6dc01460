"""The whole daemon in the test's process: ``make_service`` on a memory reactor, with fakes
for everything it talks to.

:class:`InProcessDaemon` builds the configuration from environment-style settings (the
names an operator uses), hands it to the real ``make_service`` and starts the service as
twistd would. The front door is the ``GatewayFactory`` the service listened with; the
upstream providers and the analysis model are the fakes of ``tests/fakes`` served on the
memory network. Nothing moves until :meth:`InProcessDaemon.flush`, and time passes only
through :meth:`InProcessDaemon.advance`.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from mnemomd.config import Config, load_config
from mnemomd.kv import KVUnavailableError
from mnemomd.providers import PROVIDERS, ProviderRegistry
from mnemomd.service import MnemomService, make_service
from tests.fakes.analysis import FakeAnalysis
from tests.fakes.upstream import FakeUpstreamSite, FakeUpstreamState, make_site
from tests.harness.client import Exchange, HttpClient, RawClient
from tests.harness.network import (
    CLIENT_ADDRESS,
    CallingThread,
    HarnessPort,
    HarnessReactor,
    MemoryNetwork,
)

T = TypeVar("T")
#: What a KV store implements (``kv.base.MeteredStore``): replaced to make it fail.
KV_OPERATIONS = ("_do_get", "_do_set", "_do_set_if_absent", "_do_delete", "_do_incr",
                 "_do_compare_and_delete", "_do_extend_if_equal", "_do_compare_and_set",
                 "_do_ping")

GATEWAY_HOST = "gateway.test"
UPSTREAM_HOST = "upstream.test"
ANALYSIS_HOST = "analysis.test"
#: The key the gateway itself holds for the analysis model.
ANALYSIS_KEY = "sk-analysis-key"
#: Longest a stop may take on the clock (grace periods included) before it is a hang.
MAX_STOP_SECONDS = 3600


class FakeUpstream:
    """The fake provider of ``tests.fakes.upstream``, driven in process."""

    def __init__(self, site: FakeUpstreamSite) -> None:
        self.site = site
        self.state: FakeUpstreamState = site.state

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every provider-side request as it arrived (``body_base64`` decoded as ``body``)."""
        return [{**r, "body": base64.b64decode(r["body_base64"])} for r in self.state.requests]

    def release(self, stream_id: str) -> None:
        """One more event of a ``gated:<id>`` stream, as ``POST /_fake/release/<id>`` does."""
        gate = self.state.gates.get(stream_id)
        if gate is None:
            self.state.early_releases[stream_id] = self.state.early_releases.get(stream_id, 0) + 1
        else:
            gate.release()


class _AnalysisResource(Resource):
    isLeaf = True

    def __init__(self, fake: FakeAnalysis) -> None:
        super().__init__()
        self._fake = fake

    def render(self, request: Request) -> bytes | int:
        return self._fake.handle(request)


def release_analysis(fake: FakeAnalysis, answer: Any = None) -> int:
    """Answer every held analysis request, as ``POST /_fake/release`` does, with its held
    action or with ``answer`` (an action or a verdict dict)."""
    held, fake.held = fake.held, []
    for request, dialect, action in held:
        fake.answer(request, dialect, action if answer is None else answer)
    return len(held)


def harness_settings(data_dir: Path) -> dict[str, str]:
    """The settings every in-process daemon starts from: fakes for every outside party,
    nothing online, analysis of the smallest thinking."""
    upstream = f"http://{UPSTREAM_HOST}"
    return {
        "MNEMOM_DATA_DIR": str(data_dir),
        "HOST": "127.0.0.1",
        "PORT": "8787",
        "ANTHROPIC_BASE_URL": upstream,
        "OPENAI_BASE_URL": upstream,
        "GEMINI_BASE_URL": upstream,
        "ANALYSIS_BASE_URL": f"http://{ANALYSIS_HOST}",
        "ANTHROPIC_API_KEY": ANALYSIS_KEY,
        "AIP_MIN_EVIDENCE_TOKENS": "1",
        "MNEMOM_OFFLINE": "true",
    }


@implementer(ILogObserver)
class _ErrorLog:
    """Keeps the daemon's log events at ``error`` and above, for tests to look at."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.error:
            self.events.append(event)


class InProcessDaemon:
    """``make_service(config, reactor=…)`` with the test in charge of bytes and time."""

    def __init__(self, data_dir: Path, settings: Mapping[str, str] | None = None, *,
                 providers: ProviderRegistry = PROVIDERS,
                 configure: Callable[[Config], Config] | None = None) -> None:
        """``settings`` are environment-style names over the harness's own; ``providers``
        goes to ``make_service`` (a test's registry with a provider of its own), and
        ``configure`` changes the loaded configuration last, for what the settings table
        has no row for (that provider's base URL, or choosing it as analysis backend)."""
        self.reactor = HarnessReactor()
        self.network = MemoryNetwork(self.reactor)
        self.upstream = FakeUpstream(make_site(self.reactor))
        self.network.serve(UPSTREAM_HOST, 80, self.upstream.site)
        self.analysis = FakeAnalysis(self.reactor)
        self.serve(ANALYSIS_HOST, _AnalysisResource(self.analysis))
        self.threads = CallingThread()
        data_dir.mkdir(parents=True, exist_ok=True)
        environ = {**harness_settings(data_dir), **(settings or {})}
        config = load_config(environ=environ, default_config_path=str(data_dir / "absent.yaml"))
        self.config: Config = configure(config) if configure is not None else config
        self.service: MnemomService = make_service(self.config, reactor=self.reactor,
                                                   environ={}, database_threads=self.threads,
                                                   spool_threads=CallingThread(),
                                                   providers=providers)
        self.data_dir = data_dir
        self.errors = _ErrorLog()
        self.client: HttpClient | None = None
        self._started = False
        self._stopping: Deferred[None] | None = None

    def serve(self, name: str, resource: Resource, port: int = 80) -> Site:
        """Serve a ``twisted.web`` resource as ``http://name:port`` on the memory network,
        quietly (no log line per request): another outside party, such as a provider
        a test registers."""
        site = Site(resource, reactor=self.reactor)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        self.network.serve(name, port, site)
        return site

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> InProcessDaemon:
        """Start as twistd would, serve the listener on the network, settle."""
        globalLogPublisher.addObserver(self.errors)
        self.service.privilegedStartService()
        self.service.startService()
        self._started = True
        listener = self.wait(self.service.listening)
        assert isinstance(listener, HarnessPort)
        assert listener.factory is self.service.gateway_service.factory
        self.network.attach(GATEWAY_HOST, listener)
        self.listener = listener
        self.client = HttpClient(self.reactor, f"http://{GATEWAY_HOST}:{listener.getHost().port}")
        self.flush()
        return self

    def shut_down(self) -> Deferred[None]:
        """Begin stopping, as on SIGTERM; fires once every service has stopped."""
        if self._stopping is None:
            self._stopping = self.service.stopService()
        return self._stopping

    def stop(self) -> None:
        """Stop and settle: calls still in flight get their grace period, on the clock."""
        if not self._started:
            return
        self._started = False
        try:
            stopping = self.shut_down()
            self.flush()
            for _ in range(MAX_STOP_SECONDS):
                if stopping.called:
                    break
                self.advance(1)
            self.wait(stopping)
        finally:
            self.network.close()
            globalLogPublisher.removeObserver(self.errors)

    # -- bytes and time ---------------------------------------------------------------------

    def flush(self) -> int:
        """Everything that can happen without time passing happens now."""
        return self.network.flush()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the daemon's clock, then settle."""
        self.reactor.advance(seconds)
        self.flush()

    def wait(self, d: Deferred[T]) -> T:
        """Flush, then the result of ``d``, which must have fired by then."""
        self.flush()
        results: list[Any] = []

        def capture(result: Any) -> Any:
            results.append(result)
            return None if isinstance(result, Failure) else result

        d.addBoth(capture)
        assert results, f"{d!r} has not fired after a flush"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]  # type: ignore[no-any-return]

    # -- what a test does -------------------------------------------------------------------

    def request(self, method: bytes | str, path: bytes | str,
                headers: Mapping[str, str] | None = None,
                body: bytes | None = None) -> Exchange:
        """Send a request to the front door and flush; the exchange holds what came back."""
        assert self.client is not None, "start() the daemon first"
        exchange = self.client.request(method, path, headers, body)
        self.flush()
        return exchange

    def open_raw(self, client_host: str = CLIENT_ADDRESS) -> RawClient:
        """A connection to the front door from ``client_host`` that sends only what the
        test writes into it (``RawClient.send``), settled."""
        client = RawClient()
        self.network.connect_raw(GATEWAY_HOST, self.listener.getHost().port, client,
                                 client_host)
        self.flush()
        return client

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query, through the daemon's own database connection, once the
        bookkeeping queued so far is written (as it would be ~20 ms later)."""
        self.wait(self.service.getServiceNamed("writer").writes.drain())
        return self.wait(self.service.storage.db.fetchall("harness", sql, params))

    def release_analysis(self, answer: Any = None) -> int:
        """Answer the held analysis requests (with ``answer`` if given) and flush."""
        released = release_analysis(self.analysis, answer)
        self.flush()
        return released

    def fail_storage(self, database: bool = True, kv: bool = True) -> None:
        """Make the database (every transaction fails as an unreachable SQLite file
        does) and/or the KV store (every operation fails as an unreachable Redis does)
        go away, until ``restore_storage``."""
        if database:
            self.threads.fail(lambda: sqlite3.OperationalError("unable to open database file"))
        if kv:
            store = self.service.storage.kv

            def unreachable(*args: Any) -> None:
                raise KVUnavailableError("Redis unavailable: Connection refused")

            for name in KV_OPERATIONS:
                setattr(store, name, unreachable)

    def restore_storage(self) -> None:
        self.threads.mend()
        store = self.service.storage.kv
        for name in KV_OPERATIONS:
            store.__dict__.pop(name, None)

    def take_errors(self) -> list[str]:
        """The daemon's log messages at error and above since the last call."""
        events, self.errors.events = self.errors.events, []
        return [formatEvent(event) for event in events]

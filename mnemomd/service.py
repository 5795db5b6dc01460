"""The one place the daemon is assembled.

``make_service`` is used by ``mnemomd run``, the twistd plugin, the frozen binary and the
tests alike, so there is exactly one way the daemon is wired together. Everything it
needs comes in as an argument: no module-level state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd import __version__
from mnemomd.config import Config
from mnemomd.gateway import Gateway, GatewayFactory
from mnemomd.identity import InMemoryAgentDirectory
from mnemomd.ops.health import HealthState
from mnemomd.ops.metrics import GatewayMetrics, ReactorLagMonitor
from mnemomd.ops.notify import SystemdNotifier
from mnemomd.proxy.handler import ProxyHandler
from mnemomd.proxy.relay import UpstreamClient

log = Logger()


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
        endpoint = endpoints.serverFromString(self._reactor, self._config.listen_description)
        failures: list[Failure] = []
        self._bound = endpoint.listen(self.factory)
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
        self._health.started = True
        address = port.getHost()
        host, port_number = getattr(address, "host", None), getattr(address, "port", None)
        name = getattr(address, "name", address)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        where = f"{host}:{port_number}" if port_number is not None else f"unix:{name}"
        log.info("mnemomd {version} listening on {listen} (role {role})",
                 version=__version__, listen=where, role=self._config.role,
                 host=host, port=port_number)
        self._notifier.notify("READY=1")
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
        self._notifier.stop_watchdog()
        self._lag.stop()
        yield self._client.close()
        log.info("Stopped")


class MnemomService(MultiService):
    """The whole daemon; children per SPEC §2 (gateway now; scheduler and ops later)."""

    def __init__(self, config: Config, gateway_service: GatewayService,
                 health: HealthState, metrics: GatewayMetrics) -> None:
        super().__init__()
        self.config = config
        self.health = health
        self.metrics = metrics
        self.gateway_service = gateway_service
        gateway_service.setServiceParent(self)

    @property
    def listening(self) -> Deferred[IListeningPort]:
        return self.gateway_service.listening


def make_service(config: Config, reactor: Any = None,
                 environ: Mapping[str, str] | None = None,
                 metrics: GatewayMetrics | None = None) -> MnemomService:
    """Build the daemon for ``config``; nothing runs until the service is started."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    environ = os.environ if environ is None else environ
    metrics = metrics or GatewayMetrics()
    health = HealthState(reactor, __version__, config.aip_enabled)
    client = UpstreamClient(reactor, config.upstream_max_connections_per_host)
    proxy = ProxyHandler(config, reactor, client, InMemoryAgentDirectory(), metrics)
    gateway = Gateway(reactor, config.role, config.max_request_body_bytes, health, metrics,
                      proxy)
    lag = ReactorLagMonitor(reactor, metrics.reactor_lag)
    gateway_service = GatewayService(config, reactor, gateway, health, client,
                                     SystemdNotifier(environ), lag)
    return MnemomService(config, gateway_service, health, metrics)

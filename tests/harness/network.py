"""A network in memory: a reactor that only records, names that resolve to fake servers,
and connections whose bytes move only when the test pumps them.

Every client connection the daemon opens (the proxy's upstream pool, the analysis backend,
heartbeat and webhooks) goes ``Agent`` → ``HostnameEndpoint`` → name resolver →
``reactor.connectTCP``. On a ``MemoryReactorClock`` that last call is only recorded, and
its name resolver is pluggable, so the production clients need no change to be routed
here: :class:`MemoryNetwork` resolves the names a test gave its servers and completes each
recorded connection with a pair of ``twisted.test.iosim`` transports. A name it does not
know fails to resolve and an unserved port refuses, so nothing ever leaves the process.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorFromThreads,
    IResolutionReceiver,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

#: The clock's reading when a harness starts (2026-01-01T00:00:00Z): timestamps the daemon
#: writes look like real ones, and are the same on every run.
START_TIME = 1_767_225_600.0
#: Where every in-memory client connection comes from.
CLIENT_ADDRESS = "127.0.0.1"
#: Turns of one flush before it gives up: a loop that never quietens down is a bug.
MAX_TURNS = 10_000


@implementer(IListeningPort)
class HarnessPort:
    """A listening port that knows whether it still listens: once it has stopped, the
    memory network refuses connections to it, as a closed socket would."""

    def __init__(self, address: IPv4Address, factory: IProtocolFactory) -> None:
        self._address = address
        self.factory = factory
        self.listening = True
        factory.doStart()

    def startListening(self) -> None:  # noqa: N802
        pass

    def stopListening(self) -> None:  # noqa: N802
        if self.listening:
            self.listening = False
            self.factory.doStop()

    def getHost(self) -> IPv4Address:  # noqa: N802
        return self._address


@implementer(IReactorFromThreads)
class HarnessReactor(MemoryReactorClock):
    """A memory reactor whose clock reads :data:`START_TIME`, whose ports know when they
    stop listening, and that accepts calls "from threads": they run on the next turn, as
    a real reactor's wake-up would run them."""

    def __init__(self) -> None:
        super().__init__()
        self.advance(START_TIME)

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50,  # noqa: N802
                  interface: str = "") -> HarnessPort:
        self.tcpServers.append((port, factory, backlog, interface))
        return HarnessPort(IPv4Address("TCP", interface or "0.0.0.0", port), factory)

    def callFromThread(self, f: Callable[..., Any], *args: Any,  # noqa: N802
                       **kwargs: Any) -> None:
        self.callLater(0, f, *args, **kwargs)


class CallingThread:
    """adbapi's thread pool, run on the calling thread.

    A memory reactor runs no threads, and waiting for real ones would make every flush a
    race. Here a transaction runs the moment adbapi asks for it, with the production SQL
    and connection setup, and its result reaches the waiting Deferred through
    ``callFromThread``, on the reactor's next turn, as it would from a pool thread.
    """

    def __init__(self) -> None:
        self.started = False
        self.transactions = 0
        self._stalled: list[tuple[Any, ...]] | None = None
        self._failing: Callable[[], BaseException] | None = None

    def fail(self, error: Callable[[], BaseException]) -> None:
        """A database that cannot be reached: every transaction fails with ``error()``
        (as the driver raises it) until ``mend``."""
        self._failing = error

    def mend(self) -> None:
        self._failing = None

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def stall(self) -> None:
        """A database that does not answer: transactions wait until ``resume``."""
        self._stalled = []

    def resume(self) -> None:
        stalled, self._stalled = self._stalled or [], None
        for on_result, func, args, kwargs in stalled:
            self.callInThreadWithCallback(on_result, func, *args, **kwargs)

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], None],  # noqa: N802,N803
                                 func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self._stalled is not None:
            self._stalled.append((onResult, func, args, kwargs))
            return
        if self._failing is not None:
            onResult(False, Failure(self._failing()))
            return
        self.transactions += 1
        try:
            result = func(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class MemoryNetwork:
    """Servers by name and port on a :class:`HarnessReactor`, and the connections to them.

    ``connections`` keeps every completed connection as ``(name, port)``, so a test can
    say that nothing reached a server.
    """

    def __init__(self, reactor: HarnessReactor) -> None:
        self._reactor = reactor
        self._addresses: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self._servers: dict[tuple[str, int], HarnessPort] = {}
        self._pumps: list[IOPump] = []
        self._attempts_seen = 0
        self._client_ports = itertools.count(40000)
        self.connections: list[tuple[str, int]] = []
        reactor.installNameResolver(self)

    def serve(self, name: str, port: int, factory: IProtocolFactory) -> HarnessPort:
        """Serve ``factory`` as ``name:port``."""
        address = self._address(name)
        listener = HarnessPort(IPv4Address("TCP", address, port), factory)
        self._servers[(address, port)] = listener
        return listener

    def attach(self, name: str, listener: HarnessPort) -> None:
        """Make a port the reactor was asked to listen on reachable as ``name``."""
        self._servers[(self._address(name), listener.getHost().port)] = listener

    def _address(self, name: str) -> str:
        address = self._addresses.setdefault(name, f"10.0.0.{len(self._addresses) + 1}")
        self._names[address] = name
        return address

    def close(self) -> None:
        """Stop every port (their factories' timers go with them)."""
        for listener in self._servers.values():
            listener.stopListening()
        self._servers.clear()

    # -- IHostnameResolver -------------------------------------------------------------------

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver,  # noqa: N802,N803
                        hostName: str, portNumber: int = 0,  # noqa: N803
                        addressTypes: Sequence[type] | None = None,  # noqa: N803
                        transportSemantics: str = "TCP") -> IResolutionReceiver:  # noqa: N803
        resolutionReceiver.resolutionBegan(_Resolution(hostName))
        address = self._addresses.get(hostName)
        if address is not None:
            resolutionReceiver.addressResolved(IPv4Address("TCP", address, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolutionReceiver

    # -- moving bytes -------------------------------------------------------------------------

    def complete_connections(self) -> bool:
        """Connect (or refuse) every connection attempted since the last call."""
        attempts = self._reactor.tcpClients[self._attempts_seen:]
        first = self._attempts_seen
        self._attempts_seen = len(self._reactor.tcpClients)
        for index, (host, port, factory, _timeout, _bind) in enumerate(attempts, first):
            server = self._servers.get((host, port))
            if server is None or not server.listening:
                factory.clientConnectionFailed(self._reactor.connectors[index],
                                               Failure(ConnectionRefusedError(host, port)))
                continue
            self._connect(host, port, factory, server.factory)
        return bool(attempts)

    def connect_raw(self, name: str, port: int, client: IProtocol,
                    client_host: str = CLIENT_ADDRESS) -> None:
        """Connect ``client`` (a protocol the test drives byte by byte) to ``name:port``,
        from ``client_host``: how a test plays a slow client, or many client addresses."""
        host = self._address(name)
        server = self._servers[(host, port)]
        self._connect(host, port, None, server.factory, client, client_host)

    def _connect(self, host: str, port: int, client_factory: IProtocolFactory | None,
                 server_factory: IProtocolFactory, client_protocol: IProtocol | None = None,
                 client_host: str = CLIENT_ADDRESS) -> None:
        client_address = IPv4Address("TCP", client_host, next(self._client_ports))
        server_address = IPv4Address("TCP", host, port)
        server = server_factory.buildProtocol(client_address)
        client = (client_protocol if client_factory is None
                  else client_factory.buildProtocol(server_address))
        pump = connect(server, FakeTransport(server, True, server_address, client_address),
                       client, FakeTransport(client, False, client_address, server_address),
                       greet=False, clock=self._reactor)
        self._pumps.append(pump)
        self.connections.append((self._names[host], port))

    def pump(self) -> bool:
        """Move what is buffered one step along every open connection; True if anything
        moved (bytes or a disconnection)."""
        moved = False
        for pump in list(self._pumps):
            moved = pump.pump(advanceClock=False) or moved
            if pump.clientIO.disconnected and pump.serverIO.disconnected:
                self._pumps.remove(pump)
        return moved

    @property
    def open_connections(self) -> int:
        return len(self._pumps)

    def flush(self) -> int:
        """Run the reactor's due calls and move bytes until nothing is left to do.

        Time does not pass: only calls due now run. Returns the number of turns taken.
        """
        for turn in range(MAX_TURNS):
            self._reactor.advance(0)
            progressed = self.complete_connections()
            progressed = self.pump() or progressed
            if not progressed and not self._calls_due():
                return turn
        raise AssertionError(f"still busy after {MAX_TURNS} turns without the clock moving")

    def _calls_due(self) -> bool:
        now = self._reactor.seconds()
        return any(call.getTime() <= now for call in self._reactor.getDelayedCalls())

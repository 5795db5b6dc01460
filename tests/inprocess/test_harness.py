"""The harness itself: what it promises the tests built on it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.harness import CallingThread, HarnessReactor, InProcessDaemon, MemoryNetwork
from tests.harness.client import HttpClient
from tests.harness.network import START_TIME


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:  # noqa: N802
        return b"hello"


def network() -> tuple[HarnessReactor, MemoryNetwork]:
    reactor = HarnessReactor()
    return reactor, MemoryNetwork(reactor)


def test_bytes_move_only_when_flushed():
    reactor, net = network()
    net.serve("hello.test", 80, Site(_Hello(), reactor=reactor))
    exchange = HttpClient(reactor, "http://hello.test").request("GET", "/")
    assert not exchange.answered
    net.flush()
    assert (exchange.status, exchange.body, exchange.complete) == (200, b"hello", True)
    assert net.connections == [("hello.test", 80)]


def test_an_unknown_name_does_not_resolve_and_an_unserved_port_refuses():
    reactor, net = network()
    net.serve("hello.test", 80, Site(_Hello(), reactor=reactor))
    unknown = HttpClient(reactor, "http://api.anthropic.com").request("GET", "/")
    closed = HttpClient(reactor, "http://hello.test:81").request("GET", "/")
    net.flush()
    reactor.advance(1)  # a failed attempt is reported after the endpoint's attempt delay
    net.flush()
    assert unknown.failure is not None and unknown.failure.check(DNSLookupError)
    assert closed.failure is not None and closed.failure.check(ConnectionRefusedError)
    assert net.connections == []


def test_a_transaction_runs_at_once_and_its_result_arrives_on_the_next_turn():
    reactor = HarnessReactor()
    threads = CallingThread()
    ran: list[str] = []
    d = deferToThreadPool(reactor, threads, lambda: ran.append("ran") or 42)
    assert ran == ["ran"] and not d.called
    reactor.advance(0)
    assert d.called and d.result == 42


def test_a_failed_transaction_fails_its_deferred():
    reactor = HarnessReactor()
    d = deferToThreadPool(reactor, CallingThread(), lambda: 1 / 0)
    reactor.advance(0)
    failures: list[object] = []
    d.addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(ZeroDivisionError)  # type: ignore[attr-defined]


class _Echo(Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(b"ping")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.transport.write(data)  # type: ignore[union-attr]


@pytest.mark.timeout(30)
def test_flush_refuses_to_spin_forever():
    """Two peers that answer each other for ever never quieten down: flush says so."""
    reactor, net = network()
    net.serve("echo.test", 7, Factory.forProtocol(_Echo))
    HostnameEndpoint(reactor, "echo.test", 7).connect(Factory.forProtocol(_Echo))
    with pytest.raises(AssertionError, match="still busy"):
        net.flush()


def test_time_passes_only_when_the_test_says(daemon: InProcessDaemon):
    daemon.request("GET", "/health/live")
    assert daemon.reactor.seconds() == START_TIME
    daemon.advance(5)
    assert daemon.reactor.seconds() == START_TIME + 5


def test_the_database_is_the_daemons_own_sqlite_file(make_daemon: Callable[..., InProcessDaemon]):
    daemon = make_daemon()
    assert daemon.service.storage.db.engine == "sqlite"
    assert (daemon.data_dir / "mnemomd.db").is_file()
    before = daemon.threads.transactions
    assert daemon.rows("SELECT 1") == [(1,)]
    assert daemon.threads.transactions == before + 1

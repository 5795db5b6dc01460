"""The one outbound HTTP layer: its shape in the source, and its behaviour on real sockets.

Servers are ``twisted.web`` sites on 127.0.0.1 in the test's own reactor, so every check
is about bytes that crossed a socket. Deadlines and body stalls run on a ``task.Clock``:
a test reaches a 10 s timeout by advancing the clock, never by waiting.
"""

from __future__ import annotations

import ast
import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, ssl
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import (
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from twisted.web.client import ResponseDone, _RetryingHTTP11ClientProtocol
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from mnemomd.http.body import BodyStalled, BodyTooLarge, discard_body, read_body
from mnemomd.http.client import ClientSettings, HTTPClient, Reply, is_success
from mnemomd.http.errors import REASONS, OutboundError, failure_reason
from tests.arch.imports import PACKAGE_ROOT, import_graph
from tests.fakes.local import LocalServer, closed_port

# -- the shape of the source ----------------------------------------------------------

#: Twisted's classes that only the outbound layer may subclass.
TWISTED_CLIENT_CLASSES = ("HTTPConnectionPool", "_HTTP11ClientFactory")


def _base_names(node: ast.ClassDef) -> Iterator[str]:
    for base in node.bases:
        if isinstance(base, ast.Name):
            yield base.id
        elif isinstance(base, ast.Attribute):
            yield base.attr


def client_subclasses(root: Path = PACKAGE_ROOT) -> dict[str, list[str]]:
    """For each Twisted client class, every class under ``root`` derived from it.

    Derived through other classes of ours too: a subclass of our pool is a second pool.
    """
    classes: list[tuple[str, set[str]]] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        relative = path.relative_to(root.parent).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes.append((f"{relative}:{node.name}", set(_base_names(node))))
    found: dict[str, list[str]] = {}
    for twisted_class in TWISTED_CLIENT_CLASSES:
        names, members = {twisted_class}, []
        grew = True
        while grew:
            grew = False
            for qualified, bases in classes:
                if qualified not in members and bases & names:
                    members.append(qualified)
                    names.add(qualified.rpartition(":")[2])
                    grew = True
        found[twisted_class] = sorted(members)
    return found


def test_one_pool_and_one_client_factory_in_the_package():
    found = client_subclasses()
    assert found == {"HTTPConnectionPool": ["mnemomd/http/client.py:QuietConnectionPool"],
                     "_HTTP11ClientFactory": ["mnemomd/http/client.py:_QuietClientFactory"]}


def test_the_count_sees_a_second_pool_anywhere(tmp_path: Path):
    root = tmp_path / "mnemomd"
    (root / "http").mkdir(parents=True)
    (root / "cloud").mkdir()
    (root / "http" / "client.py").write_text(
        "from twisted.web import client\n"
        "class Pool(client.HTTPConnectionPool):\n    pass\n", encoding="utf-8")
    (root / "cloud" / "heartbeat.py").write_text(
        "from mnemomd.http.client import Pool\n"
        "class _QuietPool(Pool):\n    pass\n", encoding="utf-8")
    assert client_subclasses(root)["HTTPConnectionPool"] == [
        "mnemomd/cloud/heartbeat.py:_QuietPool", "mnemomd/http/client.py:Pool"]
    assert client_subclasses(root)["_HTTP11ClientFactory"] == []


#: Packages below the proxy that talk HTTP: they use the outbound layer, never the proxy.
NOT_THE_PROXY = ("mnemomd.cloud", "mnemomd.integrity", "mnemomd.observer", "mnemomd.webhooks")


def proxy_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} imports {target}" for module, targets in graph.items()
                  if module.startswith(tuple(p + "." for p in NOT_THE_PROXY))
                  or module in NOT_THE_PROXY
                  for target in targets if target.startswith("mnemomd.proxy"))


def test_clients_import_nothing_from_the_proxy():
    assert proxy_imports(import_graph()) == []


def test_the_proxy_import_check_sees_one(tmp_path: Path):
    root = tmp_path / "mnemomd"
    for name, source in {"__init__.py": "", "webhooks/__init__.py": "",
                         "webhooks/delivery.py": "from mnemomd.proxy.relay import X\n",
                         "proxy/__init__.py": "", "proxy/relay.py": "X = 1\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source, encoding="utf-8")
    assert proxy_imports(import_graph(root)) == [
        "mnemomd.webhooks.delivery imports mnemomd.proxy.relay"]


# -- the failure mapping --------------------------------------------------------------


#: Twisted client pieces only the outbound layer may use: an unbounded body reader, an Agent
#: or a pool built elsewhere is a second client layer. (Exceptions and the proxy's
#: replay-aware protocol are not clients of their own.)
CLIENT_PIECES = frozenset({"readBody", "Agent", "HTTPConnectionPool", "ProxyAgent",
                           "ContentDecoderAgent", "RedirectAgent", "BrowserLikeRedirectAgent"})
CLIENT_MODULES = ("twisted.web.client", "twisted.web._newclient")


def outside_uses(root: Path = PACKAGE_ROOT) -> list[str]:
    """``module: name`` for each client piece imported outside ``mnemomd/http``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "http":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in CLIENT_MODULES:
                found += [f"{path.relative_to(root)}: {alias.name}" for alias in node.names
                          if alias.name in CLIENT_PIECES or alias.name == "*"]
            elif isinstance(node, ast.Import):
                found += [f"{path.relative_to(root)}: {alias.name}" for alias in node.names
                          if alias.name in CLIENT_MODULES]
    return found


def test_no_client_piece_is_used_outside_the_outbound_layer():
    assert outside_uses() == []


def test_the_piece_check_sees_an_unbounded_reader(tmp_path: Path):
    root = tmp_path / "mnemomd"
    (root / "proxy").mkdir(parents=True)
    (root / "http").mkdir()
    (root / "http" / "client.py").write_text("from twisted.web.client import Agent\n")
    (root / "proxy" / "handler.py").write_text(
        "from twisted.web.client import ResponseDone, readBody\n")
    (root / "proxy" / "relay.py").write_text("import twisted.web.client\n")
    assert outside_uses(root) == ["proxy/handler.py: readBody",
                                  "proxy/relay.py: twisted.web.client"]


def test_failures_map_to_the_reasons_callers_log():
    refused = Failure(ConnectionRefusedError())
    cases = [
        (refused, "unreachable"),
        (Failure(DNSLookupError("no.such.host")), "unreachable"),
        (Failure(ResponseFailed([Failure(ResponseDone())])), "unreachable"),
        (Failure(TimeoutError()), "timeout"),  # the connect timeout
        (Failure(CancelledError()), "cancelled"),
        (Failure(ResponseNeverReceived([Failure(CancelledError())])), "cancelled"),
        (Failure(ResponseNeverReceived([Failure(ConnectionDone())])), "unreachable"),
        (Failure(BodyTooLarge(10)), "oversize"),
        (Failure(BodyStalled(5)), "stalled"),
        (Failure(OutboundError("bad_url", "UnicodeEncodeError")), "bad_url"),
        (Failure(ValueError("anything else")), "internal"),
    ]
    for failure, reason in cases:
        assert failure_reason(failure) == reason, failure
        assert reason in REASONS


# -- the body reader, on a fake response ----------------------------------------------


class _Transport:
    """The body transport a response hands its protocol: records being stopped."""

    def __init__(self) -> None:
        self.stopped = False

    def stopProducing(self) -> None:  # noqa: N802
        self.stopped = True


class _Response:
    """Just enough of ``IResponse`` to deliver a body by hand."""

    def __init__(self, length: int | object = UNKNOWN_LENGTH) -> None:
        self.length = length
        self.code = 200
        self.transport = _Transport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:  # noqa: N802
        self.protocol = protocol
        protocol.makeConnection(self.transport)


def results(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_body_up_to_the_limit_is_read_whole():
    response = _Response()
    got = results(read_body(response, 6))
    response.protocol.dataReceived(b"abc")
    response.protocol.dataReceived(b"def")
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert got == [b"abcdef"]


def test_body_past_the_limit_fails_and_closes_the_connection():
    response = _Response()
    got = results(read_body(response, 5))
    response.protocol.dataReceived(b"abc")
    assert got == [] and not response.transport.stopped
    response.protocol.dataReceived(b"def")
    assert response.transport.stopped
    assert got[0].check(BodyTooLarge) and got[0].value.limit == 5
    response.protocol.connectionLost(Failure(ResponseFailed([])))  # ignored: already failed


def test_announced_length_past_the_limit_is_refused_unread():
    response = _Response(length=6)
    got = results(read_body(response, 5))
    assert got[0].check(BodyTooLarge)
    assert response.transport.stopped


def test_a_broken_body_fails_with_how_it_broke():
    response = _Response()
    got = results(read_body(response, 100))
    response.protocol.dataReceived(b"ab")
    response.protocol.connectionLost(Failure(ResponseFailed([Failure(ResponseDone())])))
    assert got[0].check(ResponseFailed)


def test_silence_past_the_stall_timeout_fails_and_each_chunk_rearms_it():
    clock = Clock()
    response = _Response()
    got = results(read_body(response, 100, clock, stall_timeout=5))
    clock.advance(4)
    response.protocol.dataReceived(b"ab")  # 4 s in: the 5 s start again
    clock.advance(4.9)
    assert got == [] and not response.transport.stopped
    clock.advance(0.1)
    assert got[0].check(BodyStalled) and got[0].value.seconds == 5
    assert response.transport.stopped


def test_a_finished_body_leaves_no_stall_timer_behind():
    clock = Clock()
    response = _Response()
    got = results(read_body(response, 100, clock, stall_timeout=5))
    response.protocol.dataReceived(b"ab")
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert got == [b"ab"] and clock.getDelayedCalls() == []


def test_cancelling_a_read_closes_the_connection():
    response = _Response()
    d = read_body(response, 100)
    got = results(d)
    d.cancel()
    assert response.transport.stopped
    assert got[0].check(CancelledError)


def test_discarding_ends_well_however_the_body_ends():
    for ending in ("complete", "too long", "broken"):
        response = _Response()
        got = results(discard_body(response, 4))
        response.protocol.dataReceived(b"abc")
        if ending == "too long":
            response.protocol.dataReceived(b"de")
            assert response.transport.stopped, ending
        reason = ResponseDone() if ending == "complete" else ResponseFailed([])
        response.protocol.connectionLost(Failure(reason))
        assert got == [None], ending


def test_discarding_still_fails_when_cancelled():
    response = _Response()
    d = discard_body(response, 100)
    got = results(d)
    d.cancel()
    assert got[0].check(CancelledError) and response.transport.stopped


# -- the client, against real local servers -------------------------------------------


class Server(LocalServer):
    """Answers every POST as ``mode`` says, and remembers which connection carried it.

    Modes: ``ok`` (``hello``), ``status:<code>``, ``big:<n>`` (n bytes, chunked),
    ``big_cl:<n>`` (n bytes with a Content-Length), ``hang`` (never answers) and
    ``stall`` (the head, announcing 1000 bytes, then silence).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.channels: list[object] = []
        self.open_requests: list[Deferred[None]] = []

    def handle(self, request: Request) -> bytes | int:
        mode, _, arg = self.mode.partition(":")
        if mode in ("hang", "stall"):
            self.open_requests.append(request.notifyFinish())
        self.channels.append(request.channel)
        self.record({"path": request.path, "body": request.content.read(),
                     "user_agent": request.getHeader(b"user-agent")})
        if mode in ("hang", "stall"):
            if mode == "stall":
                request.setHeader(b"content-length", b"1000")
                request.write(b"")  # the head goes out, no body byte follows
            return NOT_DONE_YET
        if mode == "status":
            request.setResponseCode(int(arg))
            return b"not today"
        if mode == "big":
            for _ in range(int(arg) // 1000):
                request.write(b"x" * 1000)
            request.finish()
            return NOT_DONE_YET
        if mode == "big_cl":
            return b"x" * int(arg)
        return b"hello"


def self_signed_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
            + cert.public_bytes(serialization.Encoding.PEM))


class TLSServer(Server):
    """The same server behind TLS, with a certificate nobody trusts."""

    def start(self) -> TLSServer:
        options = ssl.PrivateCertificate.loadPEM(self_signed_pem()).options()
        self._port = reactor.listenSSL(0, self._factory, options, interface="127.0.0.1")
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._port.getHost().port}"


HEADERS = Headers({b"user-agent": [b"mnemomd-test"]})


class ClientTests(unittest.TestCase):
    def setUp(self) -> None:
        self.server = Server().start()
        self.addCleanup(self.server.stop)
        self.clock = Clock()

    def client(self, **kwargs: Any) -> HTTPClient:
        kwargs.setdefault("clock", self.clock)
        client = HTTPClient(reactor, **kwargs)
        self.addCleanup(client.close)
        return client

    def exchange(self, client: HTTPClient, url: str | None = None,
                 **kwargs: Any) -> Deferred[Reply]:
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("max_body", 1000)
        return client.exchange(b"POST", url or self.server.url + "/x", HEADERS, b"{}",
                               **kwargs)

    @inlineCallbacks
    def failed(self, d: Deferred[Any]) -> Any:
        """The OutboundError ``d`` fails with (the test fails if it succeeds)."""
        try:
            result = yield d
        except OutboundError as error:
            return error
        self.fail(f"expected an OutboundError, got {result!r}")

    @inlineCallbacks
    def test_a_reply_carries_status_and_body_and_the_request_arrives_unchanged(self):
        reply = yield self.exchange(self.client())
        self.assertEqual(reply, Reply(200, b"hello"))
        self.assertEqual(self.server.requests, [
            {"path": b"/x", "body": b"{}", "user_agent": b"mnemomd-test"}])

    @inlineCallbacks
    def test_an_error_status_is_a_reply_and_its_body_can_be_dropped(self):
        self.server.mode = "status:503"
        client = self.client()
        kept = yield self.exchange(client)
        dropped = yield self.exchange(client, keep_body=is_success)
        self.assertEqual((kept, dropped), (Reply(503, b"not today"), Reply(503, b"")))

    @inlineCallbacks
    def test_a_body_past_the_cap_is_oversize(self):
        client = self.client()
        for mode in ("big:3000", "big_cl:3000"):
            self.server.mode = mode
            error = yield self.failed(self.exchange(client, max_body=2000))
            self.assertEqual(error.reason, "oversize", mode)
        self.server.mode = "big:2000"  # exactly the cap is fine
        reply = yield self.exchange(client, max_body=2000)
        self.assertEqual(len(reply.body), 2000)

    @inlineCallbacks
    def test_a_stalled_body_fails_and_its_connection_is_closed(self):
        self.server.mode = "stall"
        client = self.client()
        response = yield client.request(b"POST", self.server.url + "/x", HEADERS, b"{}")
        self.assertEqual(response.length, 1000)
        reading = read_body(response, 2000, self.clock, stall_timeout=5)
        got = results(reading)
        self.clock.advance(4.9)
        self.assertEqual(got, [])
        self.clock.advance(0.1)
        self.assertTrue(got[0].check(BodyStalled))
        yield self.assertFailure(self.server.open_requests[0], Exception)  # dropped

    @inlineCallbacks
    def test_connection_refused_is_unreachable_and_names_its_cause(self):
        error = yield self.failed(self.exchange(
            self.client(clock=None), f"http://127.0.0.1:{closed_port()}/x"))
        self.assertEqual((error.reason, error.cause), ("unreachable", "ConnectionRefusedError"))

    @inlineCallbacks
    def test_a_server_that_never_answers_times_out_on_the_clock(self):
        self.server.mode = "hang"
        arrived = self.server.arrived()
        got = results(self.exchange(self.client(), timeout=10))
        yield arrived
        self.clock.advance(9.9)
        self.assertEqual(got, [])
        self.clock.advance(0.1)
        self.assertTrue(got[0].check(OutboundError))
        self.assertEqual(got[0].value.reason, "timeout")
        yield self.assertFailure(self.server.open_requests[0], Exception)  # dropped

    @inlineCallbacks
    def test_a_call_abandoned_by_its_caller_is_cancelled_not_unreachable(self):
        self.server.mode = "hang"
        arrived = self.server.arrived()
        calling = self.exchange(self.client())
        got = results(calling)
        yield arrived
        calling.cancel()
        self.assertEqual((got[0].value.reason, got[0].value.cause),
                         ("cancelled", "ResponseNeverReceived"))
        yield self.assertFailure(self.server.open_requests[0], Exception)  # dropped

    @inlineCallbacks
    def test_a_body_stalled_past_the_deadline_times_out(self):
        self.server.mode = "stall"
        arrived = self.server.arrived()
        got = results(self.exchange(self.client(), timeout=10))
        yield arrived
        self.clock.advance(10)
        self.assertEqual(got[0].value.reason, "timeout")
        yield self.assertFailure(self.server.open_requests[0], Exception)  # dropped

    @inlineCallbacks
    def test_urls_that_cannot_be_sent_are_bad_urls(self):
        client = self.client()
        for url in ("http://h\u00e9te.example/x", "ftp://127.0.0.1/x"):
            error = yield self.failed(self.exchange(client, url))
            self.assertEqual(error.reason, "bad_url", url)
        self.assertEqual(self.server.requests, [])

    @inlineCallbacks
    def test_an_untrusted_certificate_is_a_tls_failure(self):
        server = TLSServer().start()
        self.addCleanup(server.stop)
        error = yield self.failed(self.exchange(self.client(clock=None), server.url + "/x"))
        self.assertEqual(error.reason, "tls")
        self.assertEqual(server.requests, [])

    @inlineCallbacks
    def test_connections_are_reused_without_a_log_line_each(self):
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client = self.client(settings=ClientSettings(max_per_host=1))
        for _ in range(3):
            yield self.exchange(client)
        self.assertEqual(len(self.server.requests), 3)
        self.assertEqual(len(set(map(id, self.server.channels))), 1)
        self.assertEqual([formatEvent(e) for e in events
                          if "Starting factory" in formatEvent(e)
                          or "Stopping factory" in formatEvent(e)], [])

    @inlineCallbacks
    def test_a_reused_connection_goes_through_the_clients_reuse_rule(self):
        reused: list[object] = []

        def on_reuse(connection: Any, fresh: Any) -> Any:
            reused.append(connection)
            return _RetryingHTTP11ClientProtocol(connection, fresh)

        client = self.client(on_reuse=on_reuse)
        yield self.exchange(client)
        self.assertEqual(reused, [])
        yield self.exchange(client)
        self.assertEqual(len(reused), 1)
        self.assertEqual(len(set(map(id, self.server.channels))), 1)

    @inlineCallbacks
    def test_an_endpoint_factory_decides_where_connections_go(self):
        """The egress hook: every URL is sent to one place, as through a proxy."""
        port = int(self.server.url.rpartition(":")[2])

        @implementer(IAgentEndpointFactory)
        class Egress:
            def endpointForURI(self, uri: Any) -> HostnameEndpoint:  # noqa: N802
                return HostnameEndpoint(reactor, "127.0.0.1", port)

        client = self.client(endpoints=Egress())
        reply = yield self.exchange(client, "http://api.example.invalid/routed")
        self.assertEqual(reply, Reply(200, b"hello"))
        self.assertEqual(self.server.requests[0]["path"], b"/routed")

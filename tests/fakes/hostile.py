"""Hostile requests: an endless, varied stream of malformed or abusive HTTP requests, and a
client that sends one and reads whatever comes back.

Used by the end-to-end hostile-client tests and the ``hostile`` fault probe
(``python -m bench.faults hostile``): each request is named by what is wrong with it, so a
failure says which kind went unanswered or got a 5xx.
"""

from __future__ import annotations

import gzip
import json
import random
import selectors
import socket
import time
from collections.abc import Callable, Iterator

KEY = "sk-hostile-e2e"
BODY = json.dumps({"model": "claude-x", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


def _request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
             body: bytes = b"", length: bool = True) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: gateway"]
    lines += [name + b": " + value for name, value in headers]
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _anthropic(body: bytes = BODY, key: bytes = b"sk-a", **extra: bytes) -> bytes:
    headers = [(b"x-api-key", key), (b"content-type", b"application/json")]
    headers += [(name.encode(), value) for name, value in extra.items()]
    return _request(b"POST", b"/anthropic/v1/messages", headers, body)


GEMINI = b"/gemini/v1beta/models/g:generateContent"
GEMINI_BODY = b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'


def hostile_requests(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """Named hostile requests, an endless varied stream."""
    makers: list[tuple[str, Callable[[], bytes]]] = [
        ("bad method", lambda: _request(rng.choice([b"FOO", b"G\x00ET", b"\xff\xfe", b"PRI"]),
                                        b"/anthropic/v1/messages", [])),
        ("huge header", lambda: _request(b"GET", b"/health", [(b"x-big", b"a" * 70_000)])),
        ("many headers", lambda: _request(b"GET", b"/health",
                                          [(b"x-h%d" % i, b"v") for i in range(600)])),
        ("huge request line", lambda: _request(b"GET", b"/" + b"a" * 70_000, [])),
        ("NUL in path", lambda: _request(b"GET", b"/anthropic/v1/mo\x00dels", [])),
        ("NUL in header", lambda: _anthropic(**{"x-note": b"a\x00b"})),
        ("NUL in key", lambda: _anthropic(key=b"sk\x00a")),
        ("NUL in body", lambda: _anthropic(body=BODY[:-1] + b',"x":"\x00"}')),
        ("UTF-8 key", lambda: _anthropic(key="sk-\u20ac\u4e16".encode())),
        ("Latin-1 key", lambda: _anthropic(key=b"sk-\xe9\xff")),
        ("gemini query key", lambda: _request(
            b"POST", GEMINI + rng.choice([b"?key=%E2%82%AC", b"?key=%FF", b"?key=\xe2\x82\xac",
                                          b"?key=%00", b"?alt=sse&key=%C0%80"]),
            [(b"content-type", b"application/json")], GEMINI_BODY)),
        ("UTF-8 header value", lambda: _anthropic(**{"anthropic-beta": "\u20ac".encode()})),
        ("broken chunked", lambda: _request(
            b"POST", b"/anthropic/v1/messages", [(b"x-api-key", b"k"),
                                                 (b"transfer-encoding", b"chunked")],
            rng.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nabc\r\n", b"-1\r\n\r\n",
                        b"ffffffffffffffffffff\r\n"]), length=False)),
        ("CL and TE", lambda: _request(
            b"POST", b"/anthropic/v1/messages", [(b"x-api-key", b"k"),
                                                 (b"transfer-encoding", b"chunked")],
            b"0\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n")),
        ("bad content-length", lambda: _request(
            b"POST", b"/anthropic/v1/messages",
            [(b"content-length", rng.choice([b"-1", b"abc", b"1, 2", b"99999999999999999"]))],
            length=False)),
        ("1e400", lambda: _anthropic(body=BODY[:-1] + b',"metadata":{"w":1e400}}')),
        ("NaN", lambda: _anthropic(body=BODY[:-1] + b',"temperature":NaN}')),
        ("deep JSON", lambda: _anthropic(body=b"[" * 100_000 + b"]" * 100_000)),
        ("deep object", lambda: _anthropic(body=b'{"a":' * 5000 + b"1" + b"}" * 5000)),
        ("not JSON", lambda: _anthropic(body=bytes(rng.getrandbits(8) for _ in range(200)))),
        ("oversized body", lambda: _anthropic(body=b"x" * 70_000)),
        ("absolute URL", lambda: _request(b"GET", b"http://169.254.169.254/latest", [])),
        ("path tricks", lambda: _request(b"GET", rng.choice(
            [b"/anthropic/../v1/agents", b"/anthropic/%2e%2e/x", b"/a\\b", b"*", b"//x"]), [])),
        ("bad agent name", lambda: _request(b"POST", b"/anthropic/agent/\xff\xfe/v1/messages",
                                            [(b"x-api-key", b"k")], BODY)),
        ("bad session", lambda: _anthropic(**{"x-mnemom-session": b"\xff" * 300})),
        ("API garbage", lambda: _request(b"POST", b"/v1/agents?\xff=%ZZ",
                                         [(b"authorization", b"Bearer \xe2\x82\xac")],
                                         b"[" * 10_000)),
        ("garbage bytes", lambda: bytes(rng.getrandbits(8) for _ in range(300)) + b"\r\n\r\n"),
        ("TLS on plain port", lambda: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
                                      + b"\x00" * 100 + b"\r\n\r\n"),
        ("obs-fold header", lambda: b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n"
                                    b"Connection: close\r\n\r\n"),
        ("HTTP/0.9", lambda: b"GET /health\r\n\r\n"),
        ("bad gzip", lambda: _anthropic(body=rng.choice([b"\x1f\x8b\x08\x00garbage",
                                                          b"not gzip at all", b"\x1f\x8b"]),
                                        **{"content-encoding": b"gzip"})),
        ("gzip bomb header", lambda: _anthropic(body=gzip.compress(b"{" * 60_000),
                                                **{"content-encoding": b"gzip"})),
        ("wrong method", lambda: _request(
            rng.choice([b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT"]),
            rng.choice([b"/anthropic/v1/messages", b"/openai/v1/chat/completions",
                        b"/v1/agents", b"/health/ready", b"/metrics"]),
            [(b"x-api-key", b"k")], BODY)),
    ]
    while True:
        name, make = rng.choice(makers)
        yield name, make()


def send_hostile(port: int, name: str, data: bytes) -> tuple[str, bytes]:
    """Send one request; what came back before the connection closed (or 20 s passed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:  # no half-close: a client that shuts its side is a client that has gone
            sock.sendall(data)
        except OSError:
            pass  # refused mid-send: what matters is the answer it got
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except OSError:
            pass
        return name, reply



#: The head a slow client sends, one byte at a time (its body never comes).
SLOW_HEAD = (b"POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\n"
             b"content-type: application/json\r\ncontent-length: 100000\r\n\r\n")


def slow_heads(port: int, sockets: int, give_up_after: float,
               each_turn: Callable[[], None] = lambda: None,
               ) -> list[tuple[bytes, float | None]]:
    """Open ``sockets`` connections and send ``SLOW_HEAD`` on them one byte per turn,
    each byte one that would reset an idle timer, until the daemon has closed them all
    or ``give_up_after`` seconds have passed; ``each_turn`` runs once a turn. For each
    connection: what the daemon answered, and the seconds from connect to its close
    (None: never closed)."""
    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    replies: dict[socket.socket, bytes] = {}
    closed_after: dict[socket.socket, float] = {}
    for _ in range(sockets):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        opened[sock] = time.monotonic()
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        replies[sock] = b""
    sent = 0
    give_up = time.monotonic() + give_up_after
    try:
        while len(closed_after) < sockets and time.monotonic() < give_up:
            if sent < len(SLOW_HEAD):
                for sock in opened:
                    if sock not in closed_after:
                        try:
                            sock.send(SLOW_HEAD[sent:sent + 1])
                        except OSError:
                            pass
                sent += 1
            for key, _ in selector.select(timeout=0.2):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                replies[sock] += data
                if not data:
                    closed_after[sock] = time.monotonic() - opened[sock]
                    selector.unregister(sock)
            each_turn()
    finally:
        for sock in opened:
            sock.close()
    return [(replies[sock], closed_after.get(sock)) for sock in opened]

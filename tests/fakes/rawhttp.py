"""A tiny blocking HTTP/1.1 client that shows exactly what came over the wire.

Unlike higher-level clients it exposes chunk boundaries, tolerates (and
reports) truncated bodies and can read SSE events one at a time, which is
what streaming tests need to check pacing, splitting and aborts.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterable
from typing import Self
from urllib.parse import urlsplit

__all__ = ["IncompleteBody", "RawHTTPResponse", "raw_request"]


class IncompleteBody(Exception):
    """The connection ended before the body was complete."""

    def __init__(self, received: bytes, reason: str) -> None:
        super().__init__(f"body incomplete after {len(received)} bytes: {reason}")
        self.received = received
        self.reason = reason


class RawHTTPResponse:
    """One response read incrementally from a socket.

    ``chunks`` lists the payload of every chunk of a chunked body as it was
    framed by the server, so tests can see how the body was written.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self._eof = False
        self._error: str | None = None
        self._body = bytearray()  # de-framed bytes not yet returned by read_event
        self._received = bytearray()  # all de-framed body bytes so far
        self._remaining: int | None = None  # content-length bytes left
        self.chunks: list[bytes] = []
        self.complete = False
        self.status, self.reason, self.headers = self._read_head()
        length = self.header("content-length")
        self.chunked = "chunked" in (self.header("transfer-encoding") or "").lower()
        if self.status in (204, 304) or 100 <= self.status < 200:
            self.complete = True  # these statuses never carry a body
        elif not self.chunked and length is not None:
            self._remaining = int(length)
            self.complete = self._remaining == 0

    # -- low level ---------------------------------------------------------

    def _fill(self) -> bool:
        """Receive more bytes; False once the peer closed or reset."""
        if self._eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError as exc:
            self._eof, self._error = True, f"reset: {exc}"
            return False
        if not data:
            self._eof, self._error = True, "closed"
            return False
        self._buffer += data
        return True

    def _read_line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            if not self._fill():
                raise IncompleteBody(bytes(self._received), self._error or "closed")
        end = self._buffer.find(b"\r\n")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise IncompleteBody(
                    bytes(self._received) + bytes(self._buffer), self._error or "closed"
                )
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _read_head(self) -> tuple[int, str, list[tuple[str, str]]]:
        status_line = self._read_line().decode("latin-1")
        _version, code, *reason = status_line.split(" ", 2)
        headers: list[tuple[str, str]] = []
        while line := self._read_line():
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        return int(code), reason[0] if reason else "", headers

    # -- public ------------------------------------------------------------

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of header ``name`` (case-insensitive), else ``default``."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), default)

    def read_piece(self) -> bytes | None:
        """Next piece of body: a whole chunk, or whatever arrived for other framings.

        Returns ``None`` at the end of the body and raises
        :class:`IncompleteBody` if the connection ends first.
        """
        if self.complete:
            return None
        if self.chunked:
            size_line = self._read_line()
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self._read_line():  # trailers
                    pass
                self.complete = True
                return None
            data = self._read_exact(size)
            if self._read_exact(2) != b"\r\n":
                raise IncompleteBody(bytes(self._received), "bad chunk terminator")
            self.chunks.append(data)
        elif self._remaining is not None:
            if not self._buffer and not self._fill():
                raise IncompleteBody(bytes(self._received), self._error or "closed")
            data = bytes(self._buffer[: self._remaining])
            del self._buffer[: len(data)]
            self._remaining -= len(data)
            self.complete = self._remaining == 0
        else:
            if not self._buffer and not self._fill():
                self.complete = True
                return None
            data = bytes(self._buffer)
            self._buffer.clear()
        self._received += data
        self._body += data
        return data

    def read_body(self) -> bytes:
        """The rest of the body (raises :class:`IncompleteBody` if cut short)."""
        while self.read_piece() is not None:
            pass
        data = bytes(self._body)
        self._body.clear()
        return data

    def read_until_closed(self) -> tuple[bytes, bool]:
        """Read until the body ends or the connection dies: ``(all body bytes, complete?)``."""
        try:
            while self.read_piece() is not None:
                pass
        except IncompleteBody:
            return bytes(self._received), False
        return bytes(self._received), True

    def read_event(self, separators: Iterable[bytes] = (b"\r\n\r\n", b"\n\n")) -> bytes | None:
        """Next whole SSE event (terminator included), ``None`` at the end of the body."""
        seps = tuple(separators)
        while True:
            hits = [(pos, len(sep)) for sep in seps if (pos := self._body.find(sep)) >= 0]
            if hits:
                pos, size = min(hits)
                event = bytes(self._body[: pos + size])
                del self._body[: pos + size]
                return event
            if self.read_piece() is None:
                if self._body:
                    raise IncompleteBody(bytes(self._received), "body ended inside an event")
                return None

    @property
    def received(self) -> bytes:
        """Every de-framed body byte received so far."""
        return bytes(self._received)

    @property
    def connection_error(self) -> str | None:
        """How the connection ended early (``"closed"`` or ``"reset: ..."``), if it did."""
        return self._error

    def has_pending_data(self) -> bool:
        """Whether undelivered bytes are buffered or waiting on the socket right now."""
        if self._buffer or self._body:
            return True
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def raw_request(
    base_url: str,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    recv_buffer: int | None = None,
) -> RawHTTPResponse:
    """Send one HTTP/1.1 request on a fresh socket and read the response head.

    ``recv_buffer`` shrinks the socket's receive buffer (set before connecting)
    so back-pressure reaches the server quickly.
    """
    parts = urlsplit(base_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if recv_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
    try:
        sock.connect((host, port))
        lines = [
            f"{method} {path} HTTP/1.1",
            f"host: {parts.netloc}",
            f"content-length: {len(body)}",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return RawHTTPResponse(sock)
    except BaseException:
        sock.close()
        raise

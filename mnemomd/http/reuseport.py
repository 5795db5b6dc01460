"""A listening TCP socket of one's own on a shared port (``SO_REUSEPORT``).

Each worker of ``MNEMOM_WORKERS`` opens its own socket on the same address, and the
kernel spreads new connections across them; a worker that dies takes only its own
socket's queue with it. Twisted's endpoints do not set ``SO_REUSEPORT``, so the socket is
made here and handed to the reactor (``adoptStreamPort``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.protocol import Factory

#: Pending connections per worker socket, as Twisted's own default.
BACKLOG = 50


class ListenAddressError(ValueError):
    """A listener the workers cannot share."""


@dataclass(frozen=True)
class TCPAddress:
    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET


def _split(description: str) -> list[str]:
    """Split an endpoint description on ``:``, honouring ``\\:`` escapes."""
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def tcp_address(description: str) -> TCPAddress:
    """The host and port of a ``tcp:`` / ``tcp6:`` endpoint description
    (``tcp:8787:interface=0.0.0.0``); :class:`ListenAddressError` for any other kind."""
    kind, *rest = _split(description)
    if kind not in ("tcp", "tcp6") or not rest:
        raise ListenAddressError(
            f"workers share a TCP port, so the listener must be HOST and PORT or "
            f"LISTEN=tcp:PORT[:interface=HOST], not {kind}:")
    host = "::" if kind == "tcp6" else "0.0.0.0"
    port: int | None = None
    for part in rest:
        name, sep, value = part.partition("=")
        if not sep and port is None and name.isdigit():
            port = int(name)
        elif sep and name == "port" and value.isdigit():
            port = int(value)
        elif sep and name == "interface":
            host = value
        elif sep and name == "backlog" and value.isdigit():
            continue
        else:
            raise ListenAddressError(f"unsupported part {part!r} in the listener {kind}:")
    if port is None or port > 65535:
        raise ListenAddressError(f"the listener {kind}: has no valid port")
    return TCPAddress(host, port)


def reuse_port_socket(address: TCPAddress) -> socket.socket:
    """A bound, non-blocking socket with ``SO_REUSEPORT`` set, not yet listening."""
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address.host, address.port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_reuse_port(reactor: IReactorSocket, address: TCPAddress, factory: Factory,
                      backlog: int = BACKLOG) -> IListeningPort:
    """Listen on ``address`` with a socket of this process's own; raises ``OSError`` when
    the address cannot be bound."""
    sock = reuse_port_socket(address)
    try:
        sock.listen(backlog)
        # The reactor duplicates the descriptor; this copy is closed either way.
        return reactor.adoptStreamPort(sock.fileno(), address.family, factory)
    finally:
        sock.close()

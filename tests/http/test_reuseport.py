"""Listener descriptions the workers can share, and the shared socket itself."""

from __future__ import annotations

import socket

import pytest

from mnemomd.http.reuseport import ListenAddressError, TCPAddress, reuse_port_socket, tcp_address


@pytest.mark.parametrize(("description", "address"), [
    ("tcp:8787:interface=0.0.0.0", TCPAddress("0.0.0.0", 8787)),
    ("tcp:0:interface=127.0.0.1", TCPAddress("127.0.0.1", 0)),
    ("tcp:port=9000", TCPAddress("0.0.0.0", 9000)),
    ("tcp6:9000", TCPAddress("::", 9000)),
    (r"tcp:9000:interface=\:\:1", TCPAddress("::1", 9000)),
    ("tcp:9000:backlog=100:interface=10.0.0.1", TCPAddress("10.0.0.1", 9000)),
])
def test_tcp_descriptions(description, address):
    assert tcp_address(description) == address


@pytest.mark.parametrize(("description", "message"), [
    ("unix:/run/mnemomd/http.sock", "not unix:"),
    ("ssl:8443:privateKey=k.pem", "not ssl:"),
    ("systemd:domain=INET:index=0", "not systemd:"),
    ("tcp:interface=127.0.0.1", "has no valid port"),
    ("tcp:99999", "has no valid port"),
    ("tcp:80:reuse=yes", "unsupported part"),
])
def test_other_listeners_are_refused(description, message):
    with pytest.raises(ListenAddressError, match=message):
        tcp_address(description)


def test_two_sockets_share_one_port():
    first = reuse_port_socket(TCPAddress("127.0.0.1", 0))
    try:
        port = first.getsockname()[1]
        second = reuse_port_socket(TCPAddress("127.0.0.1", port))
        second.listen(1)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        second.close()
    finally:
        first.close()

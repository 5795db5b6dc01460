"""``REDIS_URL`` parsing: pure, so the configuration layer can reject a bad URL at startup
with one clear message instead of a connection that never works."""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_REDIS_PORT = 6379


class RedisTarget(NamedTuple):
    """A parsed ``REDIS_URL``. For unix sockets ``host`` is the socket path, ``port`` None."""

    host: str
    port: int | None
    db: int
    password: str | None
    username: str | None
    unix: bool


def _parse_db(text: str, source: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"REDIS_URL: database number in the {source} must be a "
                         f"non-negative integer")
    return int(text)


def parse_redis_target(url: str) -> RedisTarget:
    """Everything needed to connect, including an ACL username; see :func:`parse_redis_url`.

    Error messages never repeat the URL, which may contain a password.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("REDIS_URL is empty")
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"REDIS_URL is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme == "rediss":
        raise ValueError(
            "REDIS_URL: TLS (rediss://) is not supported; run a local TLS tunnel "
            "(for example stunnel or spiped) and point REDIS_URL at it with redis://")
    if scheme not in ("redis", "unix"):
        shown = f"'{scheme}://'" if scheme else "no scheme"
        raise ValueError(f"REDIS_URL: unsupported scheme {shown}; use "
                         f"redis://[user:password@]host[:port][/db] or unix:///path/to/socket")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"db"})
    if unknown:
        raise ValueError(f"REDIS_URL: unsupported query parameter(s): {', '.join(unknown)}; "
                         f"only db is accepted")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if username == "default":
        username = None  # AUTH with the password alone authenticates as "default"
    if password == "":
        password = None
    db = _parse_db(query["db"][-1], "query") if "db" in query else 0

    if scheme == "unix":
        path = unquote(parts.path)
        if parts.hostname or port is not None:
            raise ValueError("REDIS_URL: a unix:// URL takes a socket path, not a host: "
                             "use unix:///path/to/redis.sock")
        if not path.startswith("/") or path == "/":
            raise ValueError("REDIS_URL: unix:// needs an absolute socket path "
                             "(unix:///path/to/redis.sock)")
        return RedisTarget(path, None, db, password, username, True)

    host = parts.hostname
    if not host:
        raise ValueError("REDIS_URL: no host given (redis://host[:port][/db])")
    path = parts.path.strip("/")
    if path:
        if "db" in query:
            raise ValueError("REDIS_URL: database number given twice (path and ?db=)")
        db = _parse_db(path, "path")
    if port is None:
        port = DEFAULT_REDIS_PORT
    if port == 0:
        raise ValueError("REDIS_URL: port must be between 1 and 65535")
    return RedisTarget(host, port, db, password, username, False)


def parse_redis_url(url: str) -> tuple[str, int | None, int, str | None]:
    """``(host, port, db, password)`` of a ``REDIS_URL``; ValueError says what is wrong.

    Pure, so the configuration layer can reject a bad URL at startup with one clear message
    instead of a connection that never works. Accepts ``redis://[user:password@]host[:port]
    [/db]`` and ``unix:///path[?db=N]`` (host is then the socket path and port None).
    """
    target = parse_redis_target(url)
    return target.host, target.port, target.db, target.password

"""REDIS_URL parsing: what is accepted, what is refused and why, never echoing a password."""

from __future__ import annotations

import pytest
from twisted.internet import reactor

from mnemomd.kv import RedisKeyValueStore, parse_redis_target, parse_redis_url


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://localhost", ("localhost", 6379, 0, None)),
    ("redis://cache.internal:6380/3", ("cache.internal", 6380, 3, None)),
    ("redis://:p%40ss@10.0.0.5:6379/1", ("10.0.0.5", 6379, 1, "p@ss")),
    ("redis://default:pw@h", ("h", 6379, 0, "pw")),
    ("redis://[::1]:7000", ("::1", 7000, 0, None)),
    ("redis://h?db=4", ("h", 6379, 4, None)),
    ("REDIS://h/", ("h", 6379, 0, None)),
    ("unix:///run/redis/redis.sock", ("/run/redis/redis.sock", None, 0, None)),
    ("unix://:pw@/run/redis.sock?db=2", ("/run/redis.sock", None, 2, "pw")),
])
def test_parse_redis_url(url, expected):
    assert parse_redis_url(url) == expected


def test_parse_keeps_acl_username():
    target = parse_redis_target("redis://gateway:pw@h:6379/0")
    assert (target.username, target.password, target.unix) == ("gateway", "pw", False)


@pytest.mark.parametrize(("url", "message"), [
    ("rediss://:pw@h:6380", "TLS .* not supported.*tunnel"),
    ("http://h", "unsupported scheme 'http://'"),
    ("localhost:6379", "unsupported scheme"),
    ("", "empty"),
    ("redis://", "no host"),
    ("redis://h:notaport", "not a valid URL"),
    ("redis://h:0", "port"),
    ("redis://h/abc", "database number"),
    ("redis://h/1?db=2", "given twice"),
    ("redis://h?ssl=true", "unsupported query parameter.*ssl"),
    ("unix://host/path.sock", "socket path, not a host"),
    ("unix://", "absolute socket path"),
])
def test_parse_redis_url_refuses(url, message):
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url)


def test_parse_errors_never_show_the_password():
    for url in ("rediss://:hunter2@h", "redis://:hunter2@h/x", "ftp://:hunter2@h"):
        with pytest.raises(ValueError) as caught:
            parse_redis_url(url)
        assert "hunter2" not in str(caught.value)


def test_store_rejects_bad_url_at_construction():
    with pytest.raises(ValueError, match="TLS"):
        RedisKeyValueStore(reactor, "rediss://h", None, None)

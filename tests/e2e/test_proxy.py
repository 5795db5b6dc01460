"""What the gateway answers itself, and what it passes through untouched."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import pytest

from tests.e2e.daemon import Daemon
from tests.fakes import canned
from tests.fakes.local import closed_port
from tests.fakes.process import fetch_requests, record_body, record_headers
from tests.fakes.rawhttp import raw_request

JSON = {"content-type": "application/json"}
BODY = json.dumps({"model": "m", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()
AUTH = {"anthropic": {"x-api-key": "sk-a"}, "openai": {"authorization": "Bearer sk-o"},
        "gemini": {"x-goog-api-key": "g-k"}}
PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions",
         "gemini": "/v1beta/models/m:generateContent"}


def call(daemon: Daemon, method: str, path: str, body: bytes = b"",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    with raw_request(daemon.base_url, method, path, body, headers or {}, timeout=20) as r:
        data = r.read_body()
        return r.status, dict(r.headers), data


@pytest.mark.parametrize("provider, header", [
    ("anthropic", "x-api-key"), ("openai", "Authorization"), ("gemini", "x-goog-api-key")])
def test_missing_key_is_401_and_nothing_forwarded(daemon, upstream, provider, header):
    status, headers, body = call(daemon, "POST", f"/{provider}{PATHS[provider]}", BODY, JSON)
    assert status == 401
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": f"Missing {header}", "type": "authentication_error"}
    assert fetch_requests(upstream) == []


def test_gemini_key_in_query_identifies(daemon, upstream):
    status, headers, _ = call(daemon, "POST", f"/gemini{PATHS['gemini']}?key=qk", BODY, JSON)
    assert status == 200
    expected = hashlib.sha256(b"qk").hexdigest()[:8]
    assert headers["x-mnemom-agent"] == f"smolt-{expected}"
    assert fetch_requests(upstream)[0]["query"] == "key=qk"


@pytest.mark.parametrize("path", ["/nope", "/anthropicX/v1/messages", "/v1/unknown", "/"])
def test_unknown_path_is_404_json(daemon, path):
    status, _, body = call(daemon, "GET", path)
    assert status == 404
    assert json.loads(body) == {"error": "Not found", "type": "not_found"}


@pytest.mark.parametrize("path", ["/anthropic/../openai/v1/chat/completions",
                                  "/anthropic/v1/%2e%2e/x", "/anthropic/v1%2Fmessages"])
def test_path_tricks_are_400(daemon, upstream, path):
    status, _, body = call(daemon, "POST", path, BODY, AUTH["anthropic"])
    assert status == 400
    assert json.loads(body)["type"] == "invalid_request_error"
    assert fetch_requests(upstream) == []


def test_absolute_url_in_request_line_is_refused(daemon, upstream):
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(b"GET http://169.254.169.254/anthropic/v1/models HTTP/1.1\r\n"
                     b"Host: x\r\nx-api-key: k\r\n\r\n")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400")
    assert b'"invalid_request_error"' in reply
    assert fetch_requests(upstream) == []


def test_malformed_http_gets_json_400(daemon):
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(b"POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: nope\r\n\r\n")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400")
    assert b"application/json" in reply


def test_oversized_header_line_gets_json_431(daemon):
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 431")
    assert b"application/json" in reply


def test_too_many_header_bytes_get_json_431(daemon):
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 431")


def test_oversized_body_is_413_and_not_forwarded(start, upstream):
    daemon = start({"MAX_REQUEST_BODY_BYTES": "1000"})
    status, _, body = call(daemon, "POST", "/anthropic/v1/messages", b"x" * 1001,
                           AUTH["anthropic"])
    assert status == 413
    assert json.loads(body)["type"] == "request_too_large"
    status, _, _ = call(daemon, "POST", "/anthropic/v1/messages", b"x" * 1000,
                        AUTH["anthropic"] | {"x-fake-scenario": "echo"})
    assert status == 200
    assert len(fetch_requests(upstream)) == 1


def test_chunked_oversized_body_is_413(start, upstream):
    daemon = start({"MAX_REQUEST_BODY_BYTES": "1000"})
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        chunk = b"x" * 600
        sock.sendall(b"POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" +
                     (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2 + b"0\r\n\r\n")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413")
    assert fetch_requests(upstream) == []


def test_non_json_body_forwarded_byte_for_byte(daemon, upstream):
    payload = os.urandom(4096) + b"\xff\xfe not json \x00 {\"half\": "
    headers = AUTH["openai"] | {"content-type": "application/octet-stream",
                                "x-fake-scenario": "echo"}
    status, _, body = call(daemon, "POST", "/openai/v1/files", payload, headers)
    assert status == 200
    assert body == payload
    assert record_body(fetch_requests(upstream)[0]) == payload


def test_invalid_json_forwarded_unchanged(daemon, upstream):
    payload = b'{"model": "m", "messages": [ broken'
    headers = AUTH["anthropic"] | JSON | {"x-fake-scenario": "echo"}
    status, _, body = call(daemon, "POST", "/anthropic/v1/messages", payload, headers)
    assert (status, body) == (200, payload)


@pytest.mark.parametrize("code", [429, 500, 529])
def test_upstream_errors_pass_through(daemon, code):
    headers = AUTH["anthropic"] | JSON | {"x-fake-scenario": f"status:{code}"}
    status, got_headers, body = call(daemon, "POST", "/anthropic/v1/messages", BODY, headers)
    assert status == code
    assert body == canned.error_body(canned.Api.ANTHROPIC_MESSAGES, code)
    assert got_headers["retry-after"] == "7"
    assert got_headers["x-fake-upstream"] == "yes"
    assert got_headers["x-mnemom-agent"].startswith("smolt-")


def test_upstream_down_is_502(start):
    daemon = start({"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{closed_port()}"})
    status, headers, body = call(daemon, "POST", "/anthropic/v1/messages", BODY,
                                 AUTH["anthropic"])
    assert status == 502
    assert json.loads(body)["type"] == "upstream_error"
    assert "refused" in json.loads(body)["error"].lower()
    assert headers["x-mnemom-agent"].startswith("smolt-")


def test_silent_upstream_is_504_after_the_timeout(start):
    daemon = start({"UPSTREAM_TIMEOUT": "0.5"})
    status, _, body = call(daemon, "POST", "/anthropic/v1/messages", BODY,
                           AUTH["anthropic"] | {"x-fake-scenario": "silent"})
    assert status == 504
    assert json.loads(body)["type"] == "upstream_timeout"


def test_header_hygiene_upstream(daemon, upstream):
    headers = AUTH["anthropic"] | JSON | {
        "x-mnemom-session": "run-7", "x-mnemom-debug": "1", "Connection": "keep-alive, X-Hop",
        "X-Hop": "secret-hop", "Keep-Alive": "timeout=5", "anthropic-beta": "b1",
        "Proxy-Authorization": "Basic eA=="}
    status, got, _ = call(daemon, "POST", "/anthropic/v1/messages", BODY, headers)
    assert status == 200
    assert got["x-mnemom-session"] == "run-7"
    names = {name for name, _ in fetch_requests(upstream)[0]["headers"]}
    assert not names & {"x-mnemom-session", "x-mnemom-debug", "x-hop", "keep-alive",
                        "proxy-authorization"}
    record = fetch_requests(upstream)[0]
    assert record_headers(record, "anthropic-beta") == ["b1"]
    assert record_headers(record, "x-api-key") == ["sk-a"]
    assert record_headers(record, "host") == [upstream.removeprefix("http://")]


@pytest.mark.parametrize("value", ["has space", "x" * 129, "semi;colon"])
def test_invalid_session_header_is_400(daemon, upstream, value):
    status, _, body = call(daemon, "POST", "/anthropic/v1/messages", BODY,
                           AUTH["anthropic"] | {"x-mnemom-session": value})
    assert status == 400
    assert "x-mnemom-session" in json.loads(body)["error"]
    assert fetch_requests(upstream) == []


def test_agent_identity_and_sessions(daemon):
    _, plain, _ = call(daemon, "POST", "/anthropic/v1/messages", BODY, AUTH["anthropic"])
    _, named, _ = call(daemon, "POST", "/agent/coder/anthropic/v1/messages", BODY,
                       AUTH["anthropic"])
    assert plain["x-mnemom-agent"] == "smolt-" + hashlib.sha256(b"sk-a").hexdigest()[:8]
    assert named["x-mnemom-agent"] == "smolt-" + hashlib.sha256(b"sk-a\ncoder").hexdigest()[:8]
    hash16 = hashlib.sha256(b"sk-a").hexdigest()[:16]
    assert plain["x-mnemom-session"].startswith(hash16 + "-")
    assert plain["x-smoltbot-session"] == plain["x-mnemom-session"]


def test_query_string_forwarded_unchanged(daemon, upstream):
    path = "/gemini/v1beta/models/m:generateContent?alt=json&x=%2F%20&x=2"
    status, _, _ = call(daemon, "POST", path, BODY, AUTH["gemini"] | JSON)
    assert status == 200
    assert fetch_requests(upstream)[0]["query"] == "alt=json&x=%2F%20&x=2"


def test_cors_preflight_and_exposed_headers(daemon, upstream):
    status, headers, _ = call(daemon, "OPTIONS", "/openai/v1/chat/completions", b"", {
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 204
    assert headers["access-control-allow-origin"] == "*"
    assert headers["access-control-allow-headers"] == "authorization, content-type"
    assert fetch_requests(upstream) == []
    _, headers, _ = call(daemon, "POST", "/openai/v1/chat/completions", BODY,
                         AUTH["openai"] | JSON | {"Origin": "https://app.example"})
    assert "x-mnemom-agent" in headers["access-control-expose-headers"]


def test_cors_allow_list(start):
    daemon = start({"CORS_ALLOWED_ORIGINS": "https://ok.example"})
    _, headers, _ = call(daemon, "OPTIONS", "/openai/v1/x", b"",
                         {"Origin": "https://ok.example"})
    assert headers["access-control-allow-origin"] == "https://ok.example"
    _, headers, _ = call(daemon, "OPTIONS", "/openai/v1/x", b"",
                         {"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in headers


def test_json_response_keeps_its_content_length(daemon):
    with raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", BODY,
                     AUTH["anthropic"] | JSON) as response:
        body = response.read_body()
        assert not response.chunked
        assert int(response.header("content-length")) == len(body)


def test_unrouted_requests_are_logged_and_counted(daemon):
    call(daemon, "GET", "/wp-admin/setup.php?key=LEAKY")
    line = json.loads(daemon.wait_for_line('"status": 404'))
    assert line["path"] == "/wp-admin/setup.php"
    assert "LEAKY" not in daemon.output()
    _, _, metrics = call(daemon, "GET", "/metrics")
    assert b'gateway_requests_total{provider="none",status="404"} 1.0' in metrics


def test_head_and_get_pass_through(daemon, upstream):
    status, _, _ = call(daemon, "GET", "/openai/v1/models", b"", AUTH["openai"])
    assert status == 404  # the fake has no such route: its 404 comes back as is
    assert fetch_requests(upstream)[0]["method"] == "GET"


def test_multipart_upload_forwarded_unparsed(daemon, upstream):
    boundary = "----mnemomd-boundary"
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
               f"fine-tune\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"a.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n"
               f"{{\"x\": 1}}\n\r\n--{boundary}--\r\n").encode()
    headers = AUTH["openai"] | {"content-type": f"multipart/form-data; boundary={boundary}",
                                "x-fake-scenario": "echo"}
    status, _, body = call(daemon, "POST", "/openai/v1/files", payload, headers)
    assert (status, body) == (200, payload)
    broken = b"--not-the-boundary\r\ngarbage"
    status, _, body = call(daemon, "POST", "/openai/v1/files", broken, headers)
    assert (status, body) == (200, broken)

"""The console's files and the answers the front door gives for them, decided purely."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from mnemomd.console.site import (
    answer_for,
    content_security_policy,
    etag_of,
    load_assets,
)

STATIC = Path(resources.files("mnemomd.console") / "static")  # type: ignore[arg-type]
CSP = content_security_policy()
SECURITY = {b"content-security-policy", b"x-content-type-options", b"referrer-policy",
            b"x-frame-options"}


def headers_of(answer) -> dict[bytes, bytes]:
    return dict(answer.headers)


def test_assets_are_read_from_the_package_with_their_types():
    assets = load_assets()
    expected = {"index.html": b"text/html; charset=utf-8",
                "app.js": b"text/javascript; charset=utf-8",
                "views/agents.js": b"text/javascript; charset=utf-8",
                "console.css": b"text/css; charset=utf-8", "icon.svg": b"image/svg+xml"}
    for name, content_type in expected.items():
        assert assets[name].content_type == content_type, name
        packaged = (resources.files("mnemomd.console") / "static" / name).read_bytes()
        assert assets[name].body == packaged and assets[name].etag == etag_of(packaged)


def test_files_of_unknown_types_are_not_served(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.js").write_text("x")
    (tmp_path / "a.js").write_text("x")
    assert set(load_assets(tmp_path)) == {"a.js"}


def test_index_is_served_at_the_prefix_with_security_and_cache_headers():
    answer = answer_for(b"GET", b"/console/", None, load_assets(), CSP)
    headers = headers_of(answer)
    assert answer.status == 200 and answer.body.startswith(b"<!doctype html>")
    assert SECURITY <= set(headers)
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"referrer-policy"] == b"no-referrer"
    assert headers[b"x-frame-options"] == b"DENY"
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"etag"] == etag_of(answer.body)


def test_matching_etag_is_304_and_a_stale_one_gets_the_file():
    assets = load_assets()
    etag = assets["app.js"].etag
    fresh = answer_for(b"GET", b"/console/app.js", b'"old", ' + etag, assets, CSP)
    assert (fresh.status, fresh.body) == (304, b"")
    assert headers_of(fresh)[b"etag"] == etag
    stale = answer_for(b"GET", b"/console/app.js", b'"old"', assets, CSP)
    assert stale.status == 200 and stale.body == assets["app.js"].body


def test_prefix_without_slash_redirects():
    answer = answer_for(b"GET", b"/console", None, load_assets(), CSP)
    assert answer.status == 301 and headers_of(answer)[b"location"] == b"/console/"
    assert SECURITY <= set(headers_of(answer))


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])
def test_only_get_and_head_are_allowed(method):
    answer = answer_for(method, b"/console/app.js", None, load_assets(), CSP)
    assert answer.status == 405 and headers_of(answer)[b"allow"] == b"GET, HEAD"
    assert SECURITY <= set(headers_of(answer))


@pytest.mark.parametrize("path", [b"/console/nope.js", b"/console/views", b"/console/views/",
                                  b"/console/../setup.cfg", b"/console/site.py",
                                  b"/console/static/app.js", b"/console/app.js/"])
def test_anything_but_a_known_file_is_404_with_the_security_headers(path):
    answer = answer_for(b"GET", path, None, load_assets(), CSP)
    assert answer.status == 404
    assert SECURITY <= set(headers_of(answer))
    assert headers_of(answer)[b"content-type"] == b"text/plain; charset=utf-8"


def test_policy_allows_the_identity_provider_for_fetches_only():
    policy = content_security_policy("https://login.example.com/realms/ops").decode()
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["connect-src"] == "'self' https://login.example.com"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["default-src"] == "'none'"
    assert "login.example.com" not in policy.replace(directives["connect-src"], "")
    assert dict(d.strip().split(" ", 1) for d in CSP.decode().split(";"))[
        "connect-src"] == "'self'"


# -- the files themselves -----------------------------------------------------------------

SCRIPTS = sorted(STATIC.rglob("*.js"))
#: Ways of turning text into markup or code that the console never uses.
UNSAFE_SINKS = re.compile(r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write"
                          r"|\beval\(|new Function|setTimeout\(\s*['\"`]|createContextualFragment")


def test_scripts_never_turn_data_into_markup():
    offenders = [f"{path.name}: {m.group(0)}" for path in SCRIPTS
                 for m in UNSAFE_SINKS.finditer(path.read_text(encoding="utf-8"))]
    assert SCRIPTS and offenders == []


def test_files_name_no_other_host():
    """Nothing is loaded from anywhere but the daemon (the SVG namespace is a name only)."""
    for path in STATIC.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            urls = set(re.findall(r"https?://[^\s'\"`)]+", text)) - {"http://www.w3.org/2000/svg"}
            assert urls == set(), path.name


def test_html_has_no_inline_script_or_style():
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
    assert " style=" not in html and "<style" not in html
    assert not re.search(r"\son\w+=", html)

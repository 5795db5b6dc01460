"""Serve the console's static files from the package, with strict browser headers.

The files are read once, at startup, from the package (and so from the frozen binary, the
tarball and the image alike) and kept in memory: serving them never touches the disk on
the reactor. A request names a file only by an exact key of that table, so no path can
reach anything else. Every answer under ``/console`` (404s and refusals included) carries
the same Content-Security-Policy and companion headers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from urllib.parse import urlsplit

from twisted.logger import Logger
from twisted.web import http

log = Logger()

PREFIX = b"/console"
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}
ALLOWED_METHODS = (b"GET", b"HEAD")


@dataclass(frozen=True)
class Asset:
    """One file of the console: its bytes, type and validator."""

    body: bytes
    content_type: bytes
    etag: bytes


def etag_of(body: bytes) -> bytes:
    """A strong validator from the content: it changes exactly when the file does."""
    return b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'


def _walk(folder: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        elif entry.is_file():
            yield f"{prefix}{entry.name}", entry


def load_assets(folder: Traversable | None = None) -> dict[str, Asset]:
    """Every file of ``mnemomd/console/static`` with a known type, by relative name."""
    root = folder if folder is not None else resources.files("mnemomd.console") / "static"
    assets = {}
    for name, entry in _walk(root):
        suffix = name[name.rfind("."):] if "." in name else ""
        content_type = CONTENT_TYPES.get(suffix)
        if content_type is None:
            continue
        body = entry.read_bytes()
        assets[name] = Asset(body, content_type, etag_of(body))
    return assets


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL (the identity provider's origin for the CSP)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(oidc_issuer: str | None = None) -> bytes:
    """Scripts and styles from the console's own files only, no inline code, no frames,
    and fetches only to the daemon itself (and, with OIDC, the identity provider, since
    the code-for-token exchange is a fetch to it)."""
    connect = "'self'" + (f" {origin_of(oidc_issuer)}" if oidc_issuer else "")
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"connect-src {connect}; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'").encode()


def security_headers(csp: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-security-policy", csp), (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"cross-origin-resource-policy", b"same-origin")]


@dataclass(frozen=True)
class Answer:
    """What to send: status, headers and body (the body is left out for HEAD)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""


def text_answer(status: int, message: str, csp: bytes,
                extra: tuple[tuple[bytes, bytes], ...] = ()) -> Answer:
    body = (message + "\n").encode()
    return Answer(status, [*security_headers(csp),
                           (b"content-type", b"text/plain; charset=utf-8"),
                           (b"cache-control", b"no-store"), *extra], body)


def answer_for(method: bytes, path: bytes, if_none_match: bytes | None,
               assets: Mapping[str, Asset], csp: bytes) -> Answer:
    """The answer to a request for ``path`` (``/console`` or below it), decided purely."""
    if method not in ALLOWED_METHODS:
        return text_answer(405, "Method not allowed", csp,
                           ((b"allow", b", ".join(ALLOWED_METHODS)),))
    if path == PREFIX:
        return Answer(301, [*security_headers(csp), (b"location", b"/console/"),
                            (b"content-type", b"text/plain; charset=utf-8")],
                      b"Moved to /console/\n")
    name = path[len(PREFIX) + 1:].decode("latin-1")
    asset = assets.get(name or "index.html")
    if asset is None:
        return text_answer(404, "Not found", csp)
    headers = [*security_headers(csp), (b"content-type", asset.content_type),
               (b"cache-control", b"no-cache"), (b"etag", asset.etag)]
    if if_none_match is not None and asset.etag in _etags(if_none_match):
        return Answer(304, headers)
    return Answer(200, headers, asset.body)


def _etags(header: bytes) -> list[bytes]:
    if header.strip() == b"*":
        return [b"*"]
    return [tag.strip().removeprefix(b"W/") for tag in header.split(b",")]


class ConsoleSite:
    """The Twisted side: writes the answer ``answer_for`` decides."""

    def __init__(self, assets: Mapping[str, Asset], oidc_issuer: str | None = None) -> None:
        self.assets = assets
        self.csp = content_security_policy(oidc_issuer)

    def handle(self, request: http.Request, path: bytes) -> int:
        """Answer one request under ``/console``; returns the status sent."""
        answer = answer_for(request.method, path, request.getHeader(b"if-none-match"),
                            self.assets, self.csp)
        self._send(request, answer)
        return answer.status

    def refuse(self, request: http.Request, status: int, message: str) -> None:
        """A request the front door refused (a path trick): the same headers as the rest."""
        self._send(request, text_answer(status, message, self.csp))

    @staticmethod
    def _send(request: http.Request, answer: Answer) -> None:
        if request._disconnected or request.finished:
            return
        request.setResponseCode(answer.status)
        for name, value in answer.headers:
            request.responseHeaders.setRawHeaders(name, [value])
        if answer.status != 304:
            request.responseHeaders.setRawHeaders(b"content-length",
                                                  [b"%d" % len(answer.body)])
        if request.method != b"HEAD" and answer.body:
            request.write(answer.body)
        request.finish()

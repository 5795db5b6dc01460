"""Request-target checks every route shares: pure functions over raw bytes.

Path tricks (dot segments, encoded slashes, control bytes, absolute URLs) are refused here,
before any router looks at the path, so no route can be reached by a path that appears to
name another.
"""

from __future__ import annotations

import re
from urllib.parse import unquote


class RouteError(Exception):
    """A request target the gateway refuses, with the HTTP answer it deserves."""

    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type


_ENCODED_SEPARATOR = re.compile(rb"%(2f|5c|00)", re.IGNORECASE)
_FORBIDDEN_BYTES = re.compile(rb"[\x00-\x20\x7f\\]")


def split_target(uri: bytes) -> tuple[bytes, bytes]:
    """(path, query with its ``?``) of an origin-form request target."""
    path, sep, query = uri.partition(b"?")
    return path, sep + query


def check_path(path: bytes) -> None:
    """Refuse request targets that could escape the route they appear to name."""
    if not path.startswith(b"/"):
        raise RouteError(400, "Request target must be an absolute path", "invalid_request_error")
    if _FORBIDDEN_BYTES.search(path) or _ENCODED_SEPARATOR.search(path):
        raise RouteError(400, "Invalid characters in path", "invalid_request_error")
    for segment in path.split(b"/"):
        if unquote(segment.decode("latin-1")) in (".", ".."):
            raise RouteError(400, "Dot segments are not allowed in paths",
                             "invalid_request_error")

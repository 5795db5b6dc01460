"""CORS, so browser-based agents can call the gateway directly.

The gateway answers preflights itself (the providers' own CORS rules do not apply to the
gateway's origin) and exposes its ``x-mnemom-*`` headers to scripts.
"""

from __future__ import annotations

EXPOSED_HEADERS = (
    b"x-mnemom-agent, x-mnemom-session, x-mnemom-overhead-ms, x-mnemom-request-id, "
    b"x-smoltbot-agent, x-smoltbot-session, X-AIP-Verdict, X-AIP-Checkpoint-Id, "
    b"X-AIP-Action, X-AIP-Proceed, X-AIP-Synthetic, X-AIP-Enforcement, X-AIP-Nudge-Count, "
    b"request-id, x-request-id, retry-after"
)
ALLOWED_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
DEFAULT_ALLOWED_HEADERS = (
    b"authorization, content-type, x-api-key, x-goog-api-key, anthropic-version, "
    b"anthropic-beta, x-mnemom-session"
)
PREFLIGHT_MAX_AGE = b"86400"


def allowed_origin(origin: bytes | None, allowed: tuple[str, ...]) -> bytes | None:
    """The ``Access-Control-Allow-Origin`` value for this request, or None."""
    if "*" in allowed:
        return b"*"
    if origin is not None and origin.decode("latin-1") in allowed:
        return origin
    return None


def response_headers(origin: bytes | None, allowed: tuple[str, ...]) -> list[tuple[bytes, bytes]]:
    """CORS headers for a real (non-preflight) response."""
    value = allowed_origin(origin, allowed)
    if value is None:
        return []
    headers = [(b"access-control-allow-origin", value),
               (b"access-control-expose-headers", EXPOSED_HEADERS)]
    if value != b"*":
        headers.append((b"vary", b"Origin"))
    return headers


def preflight_headers(origin: bytes | None, requested_headers: bytes | None,
                      allowed: tuple[str, ...]) -> list[tuple[bytes, bytes]]:
    """Headers of the 204 answer to an ``OPTIONS`` preflight."""
    value = allowed_origin(origin, allowed)
    if value is None:
        return []
    headers = [
        (b"access-control-allow-origin", value),
        (b"access-control-allow-methods", ALLOWED_METHODS),
        (b"access-control-allow-headers", requested_headers or DEFAULT_ALLOWED_HEADERS),
        (b"access-control-max-age", PREFLIGHT_MAX_AGE),
    ]
    if value != b"*":
        headers.append((b"vary", b"Origin"))
    return headers

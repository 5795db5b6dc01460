"""Who may call the public attestation operations (docs/attestation.md), no reactor."""

from __future__ import annotations

import pytest

from mnemomd.api.auth import ANONYMOUS, ApiCredentials, AuthRefused, authenticate_public


def test_public_operations_need_no_token_once_a_credential_is_configured():
    configured = ApiCredentials(internal_api_key="k" * 32)
    assert authenticate_public(configured, "203.0.113.9") == ANONYMOUS
    assert authenticate_public(configured, "127.0.0.1", indirect=True) == ANONYMOUS


def test_public_operations_serve_only_loopback_until_a_credential_is_configured():
    none = ApiCredentials()
    assert authenticate_public(none, "127.0.0.1") == ANONYMOUS
    for host, relayed in (("203.0.113.9", False), ("127.0.0.1", True)):
        with pytest.raises(AuthRefused) as refused:
            authenticate_public(none, host, indirect=relayed)
        assert refused.value.status == 403

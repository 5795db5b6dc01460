"""License verification, grace period, live state and the online check (SPEC §11)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import shutil
import tempfile
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest
from twisted.web.server import NOT_DONE_YET, Request

from mnemomd import __version__
from mnemomd.cloud.license import (
    GRACE_SECONDS,
    LicenseInfo,
    LicenseKeyError,
    LicenseRequired,
    LicenseState,
    OnlineValidator,
    load_trusted_keys,
    verify_license,
)
from mnemomd.ops.metrics import GatewayMetrics
from tests.fakes.local import LocalServer, closed_port
from tests.support import captured_logs

NOW = 1_750_000_000.0
DAY = 24 * 3600.0
NAMESPACE = "mnemomd.cloud.license"

ED_KEY = ed25519.Ed25519PrivateKey.generate()
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_ED_KEY = ed25519.Ed25519PrivateKey.generate()
ALGORITHMS = {"EdDSA": ED_KEY, "ES256": EC_KEY, "RS256": RSA_KEY}


def public_pem(private: Any) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "license_id": "lic-001", "plan_id": "enterprise", "exp": int(NOW + 30 * DAY),
        "iat": int(NOW - DAY), "is_offline": True,
        "feature_flags": {"sso": True}, "limits": {"agents": 50},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(private: Any, alg: str, kid: str | None = None, **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**overrides), private, algorithm=alg, headers=headers)


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_file(directory: Any, name: str, private: Any) -> str:
    path = os.path.join(str(directory), name)
    with open(path, "wb") as handle:
        handle.write(public_pem(private))
    return path


def keys_for(tmp_path: Any, private: Any) -> dict[Any, Any]:
    return load_trusted_keys(key_file(tmp_path, "vendor.pem", private))


def license_events(events: list[dict[str, Any]], level: LogLevel | None = None) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace") == NAMESPACE
            and (level is None or e.get("log_level") == level)]


def gauge(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def state_gauges(metrics: GatewayMetrics) -> dict[str, float | None]:
    return {s: gauge(metrics, "gateway_license_state", state=s)
            for s in ("valid", "grace", "expired", "invalid", "not_yet_valid", "unlicensed")}


# --------------------------------------------------------------------------- trusted keys


def test_key_type_decides_the_algorithm(tmp_path):
    for alg, private in ALGORITHMS.items():
        keys = load_trusted_keys(key_file(tmp_path, f"{alg}.pem", private))
        assert list(keys) == [None]
        assert keys[None].algorithm == alg


def test_key_directory_maps_kids_and_ignores_other_files(tmp_path):
    key_file(tmp_path, "2025-a.pem", ED_KEY)
    key_file(tmp_path, "2026-b.pem", RSA_KEY)
    (tmp_path / "README.txt").write_text("vendor keys")
    keys = load_trusted_keys(str(tmp_path))
    assert {k: v.algorithm for k, v in keys.items()} == {"2025-a": "EdDSA", "2026-b": "RS256"}


def test_no_key_path_means_no_trusted_key():
    assert load_trusted_keys(None) == {}
    assert load_trusted_keys("") == {}


@pytest.mark.parametrize("content, message", [
    (b"not a key at all", "is not a PEM public key"),
    (ED_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()), "is a private key"),
    (public_pem(ec.generate_private_key(ec.SECP384R1())), "secp384r1 is not supported"),
    (public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
     "1024 bits is too short"),
])
def test_unusable_key_files_are_named_in_the_error(tmp_path, content, message):
    path = tmp_path / "vendor.pem"
    path.write_bytes(content)
    with pytest.raises(LicenseKeyError) as caught:
        load_trusted_keys(str(path))
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_missing_key_file_and_empty_directory(tmp_path):
    with pytest.raises(LicenseKeyError, match="does not exist"):
        load_trusted_keys(str(tmp_path / "absent.pem"))
    with pytest.raises(LicenseKeyError, match=r"holds no <kid>\.pem file"):
        load_trusted_keys(str(tmp_path))


def test_unreadable_key_file_in_a_directory(tmp_path):
    key_file(tmp_path, "good.pem", ED_KEY)
    (tmp_path / "broken.pem").mkdir()  # open() fails whatever the privileges
    with pytest.raises(LicenseKeyError) as caught:
        load_trusted_keys(str(tmp_path))
    assert str(caught.value) == (
        f"license key {tmp_path / 'broken.pem'} cannot be read: Is a directory")


# --------------------------------------------------------------------------- verification


@pytest.mark.parametrize("alg", sorted(ALGORITHMS))
def test_valid_license_for_each_algorithm(tmp_path, alg):
    private = ALGORITHMS[alg]
    info = verify_license(sign(private, alg), keys_for(tmp_path, private), NOW)
    assert info.status == "valid"
    assert (info.license_id, info.plan_id, info.is_offline) == ("lic-001", "enterprise", True)
    assert info.feature_flags == {"sso": True}
    assert info.limits == {"agents": 50}
    assert info.expires_at == NOW + 30 * DAY
    assert info.seconds_to_expiry == 30 * DAY
    assert info.grace_ends_at == NOW + 30 * DAY + GRACE_SECONDS
    assert info.allows_traffic


def test_feature_flags_as_a_list_of_names(tmp_path):
    token = sign(ED_KEY, "EdDSA", feature_flags=["sso", "audit"])
    info = verify_license(token, keys_for(tmp_path, ED_KEY), NOW)
    assert info.feature_flags == {"sso": True, "audit": True}


def test_wrong_key_is_invalid(tmp_path):
    info = verify_license(sign(OTHER_ED_KEY, "EdDSA"), keys_for(tmp_path, ED_KEY), NOW)
    assert info.status == "invalid"
    assert info.reason == "license signature does not verify with the trusted key"
    assert not info.allows_traffic


def test_tampered_payload_is_invalid(tmp_path):
    header, _, signature = sign(RSA_KEY, "RS256").split(".")
    forged = b64(json.dumps(claims(plan_id="unlimited", exp=int(NOW + 3650 * DAY))).encode())
    info = verify_license(f"{header}.{forged}.{signature}", keys_for(tmp_path, RSA_KEY), NOW)
    assert info.status == "invalid"
    assert info.reason == "license signature does not verify with the trusted key"
    assert info.license_id is None  # nothing from an unverified payload is reported


def test_unknown_kid_in_a_key_directory_is_invalid(tmp_path):
    key_file(tmp_path, "k1.pem", ED_KEY)
    info = verify_license(sign(ED_KEY, "EdDSA", kid="k9"), load_trusted_keys(str(tmp_path)),
                          NOW)
    assert info.status == "invalid"
    assert info.reason == "license token kid 'k9' is not a trusted key"


def test_token_without_kid_against_a_key_directory_is_invalid(tmp_path):
    key_file(tmp_path, "k1.pem", ED_KEY)
    info = verify_license(sign(ED_KEY, "EdDSA"), load_trusted_keys(str(tmp_path)), NOW)
    assert info.status == "invalid"
    assert info.reason == "license token has no kid header to select a key"


def test_key_directory_with_two_kids(tmp_path):
    key_file(tmp_path, "old.pem", ED_KEY)
    key_file(tmp_path, "new.pem", EC_KEY)
    keys = load_trusted_keys(str(tmp_path))
    old = verify_license(sign(ED_KEY, "EdDSA", kid="old", license_id="lic-old"), keys, NOW)
    new = verify_license(sign(EC_KEY, "ES256", kid="new", license_id="lic-new"), keys, NOW)
    assert (old.status, old.license_id) == ("valid", "lic-old")
    assert (new.status, new.license_id) == ("valid", "lic-new")
    # The kid selects the key: a token naming "new" but signed with the "old" key fails.
    crossed = verify_license(sign(ED_KEY, "EdDSA", kid="new"), keys, NOW)
    assert crossed.status == "invalid"


def test_single_key_file_verifies_tokens_that_carry_a_kid(tmp_path):
    info = verify_license(sign(ED_KEY, "EdDSA", kid="2026-01"), keys_for(tmp_path, ED_KEY),
                          NOW)
    assert info.status == "valid"


def test_alg_confusion_hs256_with_the_public_pem_is_rejected(tmp_path):
    pem = public_pem(RSA_KEY)
    keys = load_trusted_keys(key_file(tmp_path, "vendor.pem", RSA_KEY))
    signing_input = (b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "."
                     + b64(json.dumps(claims()).encode()))
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    info = verify_license(f"{signing_input}.{b64(mac)}", keys, NOW)
    assert info.status == "invalid"
    assert info.reason == ("license token algorithm 'HS256' is not allowed; its key only "
                           "verifies RS256")


def test_alg_none_and_a_different_asymmetric_alg_are_rejected(tmp_path):
    keys = keys_for(tmp_path, RSA_KEY)
    unsigned = b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(json.dumps(claims()).encode())
    assert verify_license(unsigned + ".", keys, NOW).status == "invalid"
    es256 = verify_license(sign(EC_KEY, "ES256"), keys, NOW)
    assert es256.status == "invalid"
    assert "only verifies RS256" in es256.reason


@pytest.mark.parametrize("token", ["", "   ", "not-a-jwt", "a.b.c", "e30.e30",
                                   "!!!.###.$$$"])
def test_malformed_token_is_invalid(tmp_path, token):
    info = verify_license(token, keys_for(tmp_path, ED_KEY), NOW)
    assert info.status == "invalid"
    assert token.strip() == "" or "malformed" in info.reason


def test_claims_required_and_typed(tmp_path):
    keys = keys_for(tmp_path, ED_KEY)
    cases = {
        "license has no license_id claim": {"license_id": None},
        "license has no exp claim": {"exp": None},
        "license claim exp is not a valid time": {"exp": "tomorrow"},
        "license claim limits is not an object": {"limits": [1, 2]},
        "license claim is_offline is not a boolean": {"is_offline": "yes"},
    }
    for reason, override in cases.items():
        info = verify_license(sign(ED_KEY, "EdDSA", **override), keys, NOW)
        assert (info.status, info.reason) == ("invalid", reason)


def test_license_info_defaults_are_independent():
    a, b = LicenseInfo.unlicensed(), LicenseInfo.unlicensed()
    a.limits["x"] = 1
    assert b.limits == {}


def test_no_trusted_key_makes_any_token_invalid():
    info = verify_license(sign(ED_KEY, "EdDSA"), {}, NOW)
    assert info.status == "invalid"
    assert "MNEMOM_LICENSE_PUBLIC_KEY" in info.reason


def test_expiry_boundaries_are_computed_here_not_by_pyjwt(tmp_path):
    keys = keys_for(tmp_path, ED_KEY)
    exp = NOW - 10  # already expired by the wall clock too: PyJWT's own check is off
    token = sign(ED_KEY, "EdDSA", exp=int(exp))
    assert verify_license(token, keys, exp - 1).status == "valid"
    assert verify_license(token, keys, exp).status == "grace"
    assert verify_license(token, keys, exp + GRACE_SECONDS - 1).status == "grace"
    assert verify_license(token, keys, exp + GRACE_SECONDS).status == "expired"


def test_not_yet_valid(tmp_path):
    token = sign(ED_KEY, "EdDSA", nbf=int(NOW + 3600))
    info = verify_license(token, keys_for(tmp_path, ED_KEY), NOW)
    assert info.status == "not_yet_valid"
    assert not info.allows_traffic
    # A few seconds of clock skew with the vendor is tolerated.
    assert verify_license(sign(ED_KEY, "EdDSA", nbf=int(NOW + 30)),
                          keys_for(tmp_path, ED_KEY), NOW).status == "valid"


def test_reasons_and_repr_never_carry_the_token(tmp_path):
    keys = keys_for(tmp_path, ED_KEY)
    for token in (sign(ED_KEY, "EdDSA"), sign(OTHER_ED_KEY, "EdDSA"),
                  sign(ED_KEY, "EdDSA", exp=int(NOW - 30 * DAY))):
        info = verify_license(token, keys, NOW)
        for text in (repr(info), json.dumps(info.summary())):
            assert token not in text
            assert token.split(".")[2] not in text


# --------------------------------------------------------------------------- live state


def make_state(tmp_path: Any, clock: Clock, metrics: GatewayMetrics | None = None,
               **overrides: Any) -> LicenseState:
    return LicenseState.from_token(sign(ED_KEY, "EdDSA", **overrides),
                                   keys_for(tmp_path, ED_KEY), required=False, clock=clock,
                                   metrics=metrics)


def test_valid_state(tmp_path, log_events):
    clock, metrics = Clock(), GatewayMetrics(process_collectors=False)
    clock.advance(NOW)
    state = make_state(tmp_path, clock, metrics)
    assert state.allows_traffic()
    assert state.readiness() == (True, {
        "status": "valid", "license_id": "lic-001", "plan_id": "enterprise",
        "expires_at": iso(NOW + 30 * DAY), "grace_ends_at": iso(NOW + 37 * DAY),
        "seconds_to_expiry": 30 * DAY,
        "reason": f"license lic-001 valid until {iso(NOW + 30 * DAY)}"})
    assert state_gauges(metrics)["valid"] == 1
    assert gauge(metrics, "gateway_license_seconds_to_expiry") == 30 * DAY
    assert license_events(log_events, LogLevel.warn) == []
    assert len(license_events(log_events, LogLevel.info)) == 1


def test_expired_within_grace_keeps_working_with_one_warning(tmp_path, log_events):
    clock, metrics = Clock(), GatewayMetrics(process_collectors=False)
    clock.advance(NOW)
    state = make_state(tmp_path, clock, metrics, exp=int(NOW - 2 * DAY))
    for _ in range(5):
        assert state.allows_traffic()
        ok, detail = state.readiness()
        assert ok
    assert state.status == "grace"
    assert detail["status"] == "grace"
    assert detail["seconds_to_expiry"] == -2 * DAY
    assert detail["reason"] == (
        f"license lic-001 expired at {iso(NOW - 2 * DAY)}; grace period until "
        f"{iso(NOW + 5 * DAY)}, then proxy calls are refused: renew it")
    assert state_gauges(metrics) == {"valid": 0, "grace": 1, "expired": 0, "invalid": 0,
                                     "not_yet_valid": 0, "unlicensed": 0}
    assert gauge(metrics, "gateway_license_seconds_to_expiry") == -2 * DAY
    warnings = license_events(log_events, LogLevel.warn)
    assert len(warnings) == 1
    assert warnings[0].startswith("License expired, grace period: ")


def test_expiry_at_this_instant_is_grace_with_zero_seconds_left(tmp_path):
    clock, metrics = Clock(), GatewayMetrics(process_collectors=False)
    clock.advance(NOW)
    state = make_state(tmp_path, clock, metrics, exp=int(NOW))
    assert state.status == "grace"
    assert gauge(metrics, "gateway_license_seconds_to_expiry") == 0


def test_expired_past_grace_refuses_traffic(tmp_path):
    clock, metrics = Clock(), GatewayMetrics(process_collectors=False)
    clock.advance(NOW)
    state = make_state(tmp_path, clock, metrics, exp=int(NOW - 8 * DAY))
    assert state.status == "expired"
    assert not state.allows_traffic()
    ok, detail = state.readiness()
    assert not ok
    assert detail["status"] == "expired"
    assert detail["reason"] == (f"license lic-001 expired at {iso(NOW - 8 * DAY)} and its "
                                f"grace period ended at {iso(NOW - DAY)}")
    assert state_gauges(metrics)["expired"] == 1


def test_grace_turns_into_expired_as_the_clock_moves(tmp_path, log_events):
    clock, metrics = Clock(), GatewayMetrics(process_collectors=False)
    clock.advance(NOW)
    state = make_state(tmp_path, clock, metrics, exp=int(NOW + 3600))
    assert state.allows_traffic() and state.status == "valid"
    clock.advance(3600)  # the boundary timer moves the metric without any request
    assert state_gauges(metrics)["grace"] == 1
    assert state.allows_traffic()
    clock.advance(GRACE_SECONDS - 1)
    assert state.allows_traffic()
    clock.advance(1)
    assert state_gauges(metrics)["expired"] == 1
    assert state_gauges(metrics)["grace"] == 0
    assert not state.allows_traffic()
    assert not state.readiness()[0]
    assert gauge(metrics, "gateway_license_seconds_to_expiry") == -GRACE_SECONDS
    warnings = license_events(log_events, LogLevel.warn)
    assert [w.split(":")[0] for w in warnings] == [
        "License expired, grace period", "License expired, proxy calls are now refused"]
    clock.advance(30 * DAY)
    assert len(license_events(log_events, LogLevel.warn)) == 2
    assert clock.getDelayedCalls() == []  # nothing left to wait for


def test_not_yet_valid_state_becomes_valid_on_time(tmp_path):
    clock, metrics = Clock(), GatewayMetrics(process_collectors=False)
    clock.advance(NOW)
    state = make_state(tmp_path, clock, metrics, nbf=int(NOW + DAY))
    assert state.status == "not_yet_valid"
    assert not state.allows_traffic()
    assert not state.readiness()[0]
    clock.advance(DAY)
    assert state_gauges(metrics)["valid"] == 1
    assert state.allows_traffic()


def test_invalid_state_refuses_traffic(tmp_path, log_events):
    clock, metrics = Clock(), GatewayMetrics(process_collectors=False)
    state = LicenseState.from_token(sign(OTHER_ED_KEY, "EdDSA"), keys_for(tmp_path, ED_KEY),
                                    required=True, clock=clock, metrics=metrics)
    assert not state.allows_traffic()
    assert state.readiness() == (False, {
        "status": "invalid", "reason": "license signature does not verify with the trusted key"})
    assert state_gauges(metrics)["invalid"] == 1
    assert math.isnan(gauge(metrics, "gateway_license_seconds_to_expiry"))
    assert len(license_events(log_events, LogLevel.error)) == 1


def test_license_required_without_token_is_a_startup_error(tmp_path):
    for token in (None, "", "  \n"):
        with pytest.raises(LicenseRequired, match="LICENSE_REQUIRED"):
            LicenseState.from_token(token, keys_for(tmp_path, ED_KEY), required=True,
                                    clock=Clock())


def test_unlicensed_evaluation_install(log_events):
    clock, metrics = Clock(), GatewayMetrics(process_collectors=False)
    state = LicenseState.from_token(None, {}, required=False, clock=clock, metrics=metrics)
    assert state.status == "unlicensed"
    assert state.allows_traffic()
    assert state.readiness() == (True, {"status": "unlicensed",
                                        "reason": "no license configured: evaluation install"})
    assert state_gauges(metrics)["unlicensed"] == 1
    assert math.isnan(gauge(metrics, "gateway_license_seconds_to_expiry"))
    warnings = license_events(log_events, LogLevel.warn)
    assert warnings == ["No license configured: running as an unlicensed evaluation install"]


def test_a_new_token_replaces_the_license(tmp_path):
    clock, metrics = Clock(), GatewayMetrics(process_collectors=False)
    clock.advance(NOW)
    state = make_state(tmp_path, clock, metrics, exp=int(NOW - 8 * DAY))
    assert not state.allows_traffic()
    state.update(verify_license(sign(ED_KEY, "EdDSA", exp=int(NOW + 365 * DAY)),
                                keys_for(tmp_path, ED_KEY), clock.seconds()))
    assert state.allows_traffic()
    assert state_gauges(metrics)["valid"] == 1
    clock.advance(365 * DAY)
    assert state.status == "grace"


# --------------------------------------------------------------------------- online check


class FakeLicenseServer(LocalServer):
    """The vendor's license server on 127.0.0.1, answering as ``script`` says.

    Actions: ``valid``, ``rejected`` (403, as Mnemom's service answers a revoked license),
    ``status:<code>``, ``garbage`` (a 502 that is not JSON) and ``hang`` (never answers).
    """

    def __init__(self) -> None:
        super().__init__()
        self.script: list[str] = []
        self.default = "valid"
        self.start()

    def handle(self, request: Request) -> bytes | int:
        self.record({"path": request.path.decode(),
                     "body": json.loads(request.content.read())})
        action = self.script.pop(0) if self.script else self.default
        request.setHeader(b"content-type", b"application/json")
        if action == "hang":
            return NOT_DONE_YET
        if action.startswith("status:"):
            request.setResponseCode(int(action.split(":")[1]))
            return b'{"error": "unavailable"}'
        if action == "garbage":
            request.setResponseCode(502)
            return b"<html>maintenance</html>"
        if action == "rejected":
            request.setResponseCode(403)
            return b'{"error": "License revoked"}'
        return b'{"valid": true, "license_id": "lic-001", "next_check_seconds": 86400}'


INSTANCE_ID = "5f0c7a52-3a0e-4d55-9a43-2a8c1de0b6a1"


def closed_port_url() -> str:
    return f"http://127.0.0.1:{closed_port()}"


class OnlineValidation(unittest.TestCase):
    """The hourly check against a real HTTP server, with time on a Clock."""

    def setUp(self) -> None:
        self.events = captured_logs(self).events
        self.clock = Clock()
        self.clock.advance(NOW)
        self.metrics = GatewayMetrics(process_collectors=False)
        key_dir = self.temp_dir()
        self.token = sign(ED_KEY, "EdDSA", is_offline=False, exp=int(NOW + 365 * DAY))
        self.state = LicenseState.from_token(self.token, keys_for(key_dir, ED_KEY),
                                             required=True, clock=self.clock,
                                             metrics=self.metrics)
        self.server = FakeLicenseServer()
        self.addCleanup(self.server.stop)

    def temp_dir(self) -> str:
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def validator(self, url: str | None = None) -> OnlineValidator:
        validator = OnlineValidator(reactor, self.clock, url or self.server.url + "/",
                                    state=self.state, token=self.token,
                                    instance_id=INSTANCE_ID)
        self.addCleanup(validator.close)
        return validator

    def assert_token_not_logged(self) -> None:
        for event in self.events:
            for text in (formatEvent(event), repr(event)):
                self.assertNotIn(self.token, text)
                self.assertNotIn(self.token.split(".")[2], text)

    @inlineCallbacks
    def test_posts_the_license_and_caches_a_good_answer(self):
        validator = self.validator()
        yield validator.check()
        self.assertEqual(self.server.requests, [{
            "path": "/v1/license/validate",
            "body": {"license": self.token, "instance_id": INSTANCE_ID,
                     "instance_metadata": {"gateway_version": __version__}}}])
        self.assertEqual(validator.last_good_at, NOW)
        self.assertEqual(validator.last_good.outcome, "valid")
        self.assertEqual(self.state.status, "valid")
        self.clock.advance(3600)
        yield validator.check()
        self.assertEqual(validator.last_good_at, NOW + 3600)
        self.assertEqual(len(self.server.requests), 2)
        self.assert_token_not_logged()

    @inlineCallbacks
    def test_outage_within_grace_keeps_the_good_state_then_turns_invalid(self):
        validator = self.validator()
        yield validator.check()
        self.server.default = "status:503"
        for _ in range(6):
            self.clock.advance(DAY)
            yield validator.check()
            self.assertEqual(validator.last_verdict.outcome, "unavailable")
            self.assertEqual(validator.last_verdict.reason, "http_503")
            self.assertTrue(self.state.allows_traffic())
        self.assertEqual(validator.last_good_at, NOW)
        self.clock.advance(DAY - 1)
        yield validator.check()
        self.assertTrue(self.state.allows_traffic())
        self.clock.advance(1)  # 7 days since the last successful validation
        yield validator.check()
        self.assertFalse(self.state.allows_traffic())
        ok, detail = self.state.readiness()
        self.assertFalse(ok)
        self.assertEqual((detail["status"], detail["license_id"], detail["reason"]),
                         ("invalid", "lic-001",
                          "license could not be validated online for 7 days"))
        self.assertEqual(state_gauges(self.metrics)["invalid"], 1)
        # The server comes back: the license serves again.
        self.server.default = "valid"
        yield validator.check()
        self.assertTrue(self.state.allows_traffic())
        self.assertEqual(state_gauges(self.metrics)["valid"], 1)
        self.assert_token_not_logged()

    @inlineCallbacks
    def test_unreachable_server_without_any_good_answer_counts_from_startup(self):
        validator = self.validator(closed_port_url())
        yield validator.check()
        self.assertEqual(validator.last_verdict.outcome, "unavailable")
        self.assertEqual(validator.last_verdict.reason, "unreachable")
        self.assertIsNone(validator.last_good_at)
        self.assertEqual(self.state.status, "valid")
        self.clock.advance(GRACE_SECONDS)
        yield validator.check()
        self.assertEqual(self.state.status, "invalid")
        self.assert_token_not_logged()

    @inlineCallbacks
    def test_timeout_and_non_json_answers_are_outages(self):
        validator = self.validator()
        self.server.script = ["hang", "garbage"]
        arrived = self.server.arrived()
        checking = validator.check()
        yield arrived
        self.clock.advance(10)
        yield checking
        self.assertEqual(validator.last_verdict.reason, "timeout")
        yield validator.check()
        self.assertEqual(validator.last_verdict.reason, "http_502")
        self.assertEqual(self.state.status, "valid")

    @inlineCallbacks
    def test_rejection_is_invalid_at_once(self):
        validator = self.validator()
        yield validator.check()
        self.server.default = "rejected"
        self.clock.advance(3600)
        yield validator.check()
        self.assertEqual(self.state.status, "invalid")
        self.assertFalse(self.state.allows_traffic())
        ok, detail = self.state.readiness()
        self.assertFalse(ok)
        self.assertEqual(detail["reason"], "license rejected by the license server: "
                                           "http_403: License revoked")
        self.assertEqual(validator.last_good_at, NOW)  # the cache keeps the last good one
        errors = license_events(self.events, LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assert_token_not_logged()

    @inlineCallbacks
    def test_offline_licenses_are_never_sent(self):
        offline = sign(ED_KEY, "EdDSA", is_offline=True)
        self.state.update(verify_license(offline, keys_for(self.temp_dir(), ED_KEY), NOW))
        validator = OnlineValidator(reactor, self.clock, self.server.url, state=self.state,
                                    token=offline)
        self.addCleanup(validator.close)
        yield validator.check()
        self.assertEqual(self.server.requests, [])

    @inlineCallbacks
    def test_validate_reports_the_answer_without_touching_state(self):
        validator = OnlineValidator(reactor, self.clock, self.server.url)
        self.addCleanup(validator.close)
        self.server.script = ["rejected"]
        verdict = yield validator.validate(self.token)
        self.assertEqual((verdict.outcome, verdict.reason, verdict.checked_at),
                         ("rejected", "http_403: License revoked", NOW))
        self.assertEqual(self.server.requests[0]["body"]["license"], self.token)
        self.assertEqual(self.state.status, "valid")
        self.assertNotIn(self.token, repr(validator))

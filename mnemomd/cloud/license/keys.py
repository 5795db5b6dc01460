"""The public keys trusted to sign licenses: loaded from a PEM file or a directory of
``<kid>.pem`` files; the key type fixes the algorithm, so a token cannot choose it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

#: RSA keys shorter than this are refused when loaded; they no longer protect anything.
MIN_RSA_BITS = 2048


class LicenseKeyError(ValueError):
    """A trusted-key file or directory that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key and the one JWT algorithm it may verify.

    The algorithm follows from the key type, never from the token, so a token cannot
    choose how it is checked (no HS256-with-the-public-key, no ``none``).
    """

    kid: str | None
    algorithm: str
    key: Any
    source: str


def _algorithm_for(key: Any, source: str) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise LicenseKeyError(
                f"license key {source}: EC curve {key.curve.name} is not supported "
                "(use P-256 for ES256)")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise LicenseKeyError(
                f"license key {source}: RSA key of {key.key_size} bits is too short "
                f"(at least {MIN_RSA_BITS})")
        return "RS256"
    raise LicenseKeyError(
        f"license key {source}: {type(key).__name__} is not supported "
        "(use an Ed25519, EC P-256 or RSA public key)")


def _load_key_file(path: str, kid: str | None) -> TrustedKey:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise LicenseKeyError(
            f"license key {path} cannot be read: {exc.strerror or exc}") from None
    if b"PRIVATE KEY-----" in data:
        raise LicenseKeyError(
            f"license key {path} is a private key; give the vendor's public key")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise LicenseKeyError(f"license key {path} is not a PEM public key") from None
    return TrustedKey(kid=kid, algorithm=_algorithm_for(key, path), key=key, source=path)


def load_trusted_keys(path: str | None) -> dict[str | None, TrustedKey]:
    """The keys ``MNEMOM_LICENSE_PUBLIC_KEY`` names, by key id.

    A PEM file gives one key under ``None``: it verifies every token. A directory gives one
    key per ``<kid>.pem`` file, so the vendor can rotate keys and the ``kid`` of a token
    picks the one that signed it. No path means no trusted key: any token is then invalid.
    """
    if not path:
        return {}
    if os.path.isdir(path):
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise LicenseKeyError(
                f"license key directory {path} cannot be read: {exc.strerror or exc}"
            ) from None
        keys: dict[str | None, TrustedKey] = {}
        for name in names:
            if not name.endswith(".pem") or name.startswith("."):
                continue
            kid = name[:-len(".pem")]
            if not kid:
                continue
            keys[kid] = _load_key_file(os.path.join(path, name), kid)
        if not keys:
            raise LicenseKeyError(f"license key directory {path} holds no <kid>.pem file")
        return keys
    if not os.path.exists(path):
        raise LicenseKeyError(f"license key {path} does not exist")
    return {None: _load_key_file(path, None)}


# --------------------------------------------------------------------------- verification

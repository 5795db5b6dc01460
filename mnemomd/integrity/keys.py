"""The signing key file: read, or created once (mode 0600), never logged.

Run at build time, before the reactor starts (``make_service``), like the rest of the
configuration; the key stays in memory and is never written anywhere else.
"""

from __future__ import annotations

import os
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from mnemomd.integrity.attestation import AttestationError, SigningKey

KEY_FILE_NAME = "signing-key.pem"


def default_key_path(data_dir: str) -> str:
    return os.path.join(data_dir, KEY_FILE_NAME)


def load_signing_key(path: str, create: bool) -> SigningKey:
    """The key in ``path``; with ``create``, a new one written there first when the file
    does not exist (exclusively, mode 0600, its directory 0700 when made here)."""
    if create and not os.path.exists(path):
        try:
            return write_new_key(path)
        except FileExistsError:
            pass  # another process (a worker) made it first: use that one, it is whole
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as e:
        raise AttestationError(f"cannot read the signing key {path}: {e.strerror}") from None
    try:
        private = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise AttestationError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise AttestationError(f"{path} holds a key that is not Ed25519")
    return SigningKey(private)


def new_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.generate())


def write_key(path: str, key: SigningKey) -> None:
    """``key`` in ``path``, which must not exist yet (exclusively, mode 0600)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    pem = key.private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    # Written whole under a name of its own, then linked into place: a process that finds
    # ``path`` (several workers starting at once) never reads half a key, and a second
    # writer gets FileExistsError instead of replacing the first one's key.
    partial = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(partial, path)
    finally:
        os.unlink(partial)


def write_new_key(path: str) -> SigningKey:
    """A new key in ``path``, which must not exist yet."""
    key = new_key()
    write_key(path, key)
    return key

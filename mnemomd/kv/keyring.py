"""Sealing of trace outbox payloads under short-lived keys (crypto-shredding).

The trace outbox is the one place excerpts of model output are stored, and they must
not be readable once ``OUTBOX_TTL`` has passed, even on a host that was stopped or
crashed before the sweep could delete them. So each payload is sealed (AES-256-GCM)
before it is handed to storage, under a data key that is never written to disk: it lives
in the KV store with a TTL (Redis, shared by every replica; or the in-memory store, this
process only) and in this process's memory until the same moment. Once the key has
expired the ciphertext left in a database file, a backup or a disk image is noise.

Keys rotate per epoch (one sweep interval): the key of epoch ``e`` seals the rows
written from ``e * epoch`` to ``(e + 1) * epoch`` and expires at ``e * epoch + ttl``, so
it is gone by the time the first row it sealed reaches its TTL, and it outlives each
row's own expiry (one sweep before its TTL) by at most one epoch.

With the in-memory KV store (one node), and whenever Redis fails, a row is sealed under
a key of this process alone, whose id names the process: it is never written anywhere,
another process leaves such a row alone (it cannot open it), and the process deletes its
own rows at shutdown, since nobody can read them once it is gone.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mnemomd.kv.base import LOG_NAMESPACE, KeyValueStore

log = Logger(namespace=LOG_NAMESPACE)

#: Version tag that starts every sealed payload.
SEALED_VERSION = "s1"
#: The KV key a shared data key is stored under (plus the TTL in ms and its key id: a
#: replica with another ``OUTBOX_TTL`` never adopts a key that outlives its own TTL).
KEY_NAME = "outbox-key:"
KEY_BYTES = 32
NONCE_BYTES = 12
#: Shared key ids are ``e<epoch>``; this process's own ``p<instance>-<epoch>``.
_KEY_ID = re.compile(r"e[0-9]{1,15}|p[0-9a-f]{12}-[0-9]{1,15}")
_B64 = re.compile(r"[A-Za-z0-9_-]+")


class SealError(ValueError):
    """A sealed payload is malformed, or does not open under its key for its row (it was
    altered, or moved to another row)."""


def epoch_of(now: float, epoch: float) -> int:
    """The epoch a moment belongs to (epochs are ``epoch`` seconds long)."""
    return int(now // epoch)


def key_expiry(index: int, epoch: float, ttl: float) -> float:
    """When the key of epoch ``index`` must be gone: ``ttl`` after the epoch began, so no
    row it sealed is readable past its TTL."""
    return index * epoch + ttl


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not _B64.fullmatch(text):
        raise SealError("sealed payload is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise SealError("sealed payload is not base64url") from e
    if _b64(data) != text:  # one payload has one text: no stray bits in the last letter
        raise SealError("sealed payload is not canonical base64url")
    return data


def _aad(key_id: str, row_id: str) -> bytes:
    """What the ciphertext is bound to: its key id and its row."""
    return f"mnemomd-outbox\x00{key_id}\x00{row_id}".encode()


def seal_with(key_id: str, key: bytes, row_id: str, plaintext: bytes,
              nonce: bytes | None = None) -> str:
    """``s1.<key id>.<nonce>.<ciphertext>``: AES-256-GCM bound to ``row_id``."""
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError("not a key id")
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    sealed = AESGCM(key).encrypt(nonce, plaintext, _aad(key_id, row_id))
    return f"{SEALED_VERSION}.{key_id}.{_b64(nonce)}.{_b64(sealed)}"


def sealed_key_id(text: str) -> str:
    """The key id a sealed payload names; raises SealError when it is not one."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 4 or parts[0] != SEALED_VERSION or not _KEY_ID.fullmatch(parts[1]):
        raise SealError("not a sealed outbox payload")
    return parts[1]


def open_with(key: bytes, row_id: str, text: str) -> bytes:
    """The plaintext of a sealed payload; raises SealError when it does not open."""
    key_id = sealed_key_id(text)
    _, _, nonce_text, sealed_text = text.split(".")
    nonce = _unb64(nonce_text)
    if len(nonce) != NONCE_BYTES:
        raise SealError("sealed payload has a bad nonce")
    try:
        return AESGCM(key).decrypt(nonce, _unb64(sealed_text), _aad(key_id, row_id))
    except InvalidTag:
        raise SealError("sealed payload does not open for its row") from None


class OutboxKeyring:
    """The data keys of the trace outbox: made, shared and forgotten on time.

    ``seal`` fires with the sealed text of a row; ``keys`` with the keys of given key ids,
    None for each that has expired (or was another process's own). Keys are read from the
    KV store once and kept in memory only until they expire.
    """

    def __init__(self, kv: KeyValueStore, clock: IReactorTime, ttl: float, epoch: float, *,
                 shared: bool, new_key: Callable[[], bytes] | None = None) -> None:
        """``ttl`` is ``OUTBOX_TTL``, ``epoch`` how long one key seals new rows (at most
        ``ttl``); ``shared``: keys are shared through ``kv`` (Redis), else they stay in
        this process; ``new_key`` makes a fresh key (tests pass their own)."""
        if not 0 < epoch <= ttl:
            raise ValueError("epoch must be positive and at most the TTL")
        self._kv = kv
        self.shared = shared
        self._clock = clock
        self._ttl = ttl
        self._epoch = epoch
        self._new_key = new_key or (lambda: AESGCM.generate_key(bit_length=KEY_BYTES * 8))
        #: Names this process's own keys (used only when the KV store fails).
        self.instance = uuid.uuid4().hex[:12]
        #: key id -> (key, when it expires); nothing else holds a key in this process.
        self._held: dict[str, tuple[bytes, float]] = {}
        self._kv_failing = False

    @property
    def own_prefix(self) -> str:
        """How every payload sealed under this process's own keys begins."""
        return f"{SEALED_VERSION}.p{self.instance}-"

    def kv_key(self, key_id: str) -> str:
        """Where the shared key ``key_id`` is kept in the KV store."""
        return f"{KEY_NAME}{round(self._ttl * 1000)}:{key_id}"

    def held(self) -> list[str]:
        """Key ids held in memory now (expired ones forgotten first)."""
        self._forget_expired()
        return sorted(self._held)

    def _forget_expired(self) -> None:
        now = self._clock.seconds()
        for key_id in [k for k, (_, expiry) in self._held.items() if expiry <= now]:
            del self._held[key_id]

    def _hold(self, key_id: str, key: bytes, expiry: float) -> bytes:
        self._held[key_id] = (key, expiry)
        return key

    def _current(self) -> tuple[int, float]:
        index = epoch_of(self._clock.seconds(), self._epoch)
        return index, key_expiry(index, self._epoch, self._ttl)

    @inlineCallbacks
    def seal(self, row_id: str, plaintext: bytes) -> Any:
        """Fires with ``plaintext`` sealed for ``row_id`` under the current epoch's key."""
        self._forget_expired()
        index, expiry = self._current()
        key_id = f"e{index}" if self.shared else f"p{self.instance}-{index}"
        if key_id not in self._held and self.shared:
            try:
                yield self._shared_key(key_id, expiry)
                self._kv_state(ok=True)
            except Exception as e:
                self._kv_state(ok=False, reason=type(e).__name__)
                key_id = f"p{self.instance}-{index}"
        if key_id not in self._held:
            self._hold(key_id, self._new_key(), expiry)
        return seal_with(key_id, self._held[key_id][0], row_id, plaintext)

    @inlineCallbacks
    def _shared_key(self, key_id: str, expiry: float) -> Any:
        """The epoch's shared key: made here (SET NX with the key's TTL) or, when another
        replica (or another call of this one) was first, read back, so every replica
        converges on one key per epoch."""
        remaining = expiry - self._clock.seconds()
        if remaining <= 0:
            raise ValueError("the epoch's key would already have expired")
        key = self._new_key()
        stored = yield self._kv.set_if_absent(self.kv_key(key_id), key, remaining)
        if not stored:
            key = yield self._kv.get(self.kv_key(key_id))
            if key is None or len(key) != KEY_BYTES:
                raise ValueError("the epoch's shared key vanished or is malformed")
        return self._hold(key_id, key, expiry)

    def _kv_state(self, ok: bool, reason: str | None = None) -> None:
        """One line per change of state, not one per row."""
        if ok and self._kv_failing:
            log.info("Outbox keys are shared through the key-value store again")
        elif not ok and not self._kv_failing:
            log.warn("Outbox keys cannot be shared through the key-value store ({reason}); "
                     "sealing under this process's own key meanwhile", reason=reason)
        self._kv_failing = not ok

    @inlineCallbacks
    def keys(self, key_ids: Iterable[str]) -> Any:
        """Fires with {key id: key or None}: None when the key has expired, or was
        another process's own. Fails when the KV store cannot be read (the rows must
        then be left alone, not taken for expired)."""
        self._forget_expired()
        found: dict[str, bytes | None] = {}
        for key_id in dict.fromkeys(key_ids):
            if key_id in self._held:
                found[key_id] = self._held[key_id][0]
            elif self.shared and key_id.startswith("e") and _KEY_ID.fullmatch(key_id):
                key = yield self._kv.get(self.kv_key(key_id))
                if key is not None and len(key) == KEY_BYTES:
                    index = int(key_id[1:])
                    self._hold(key_id, key, key_expiry(index, self._epoch, self._ttl))
                    self._forget_expired()  # a key read back past its time is not kept
                found[key_id] = self._held[key_id][0] if key_id in self._held else None
            else:
                found[key_id] = None
        return found

    def is_foreign(self, key_id: str) -> bool:
        """A key this process cannot have: another process's own, or a shared key when
        this process does not share keys. Rows sealed under one are left alone."""
        if key_id.startswith("e"):
            return not self.shared
        return not key_id.startswith(f"p{self.instance}-")

    def forget(self) -> None:
        """Drop every key this process holds (at shutdown)."""
        self._held.clear()

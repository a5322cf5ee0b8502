"""Shared-key encryption of gossip traffic (AES-GCM) with rotation without downtime.

Every datagram and push-pull message is sealed as

    version (1 byte, 0x01) | nonce (12 bytes) | ciphertext + tag (16 bytes)

with the primary key. Decryption tries every installed key, primary first, so a key
can be rotated across a running cluster: `install` the new key everywhere, then
`use` it everywhere (make it primary), then `remove` the old one. A packet that no
key authenticates is dropped and counted by the caller; a node with the wrong key
therefore cannot join.

The nonce comes from an injectable source (os.urandom by default) so that a
simulation handing in its seeded rng stays deterministic. 96-bit random nonces are
safe for far more messages than a key sees between rotations.

Keys live in a file of base64 lines, primary first, readable by the owner only;
they are never passed on the command line, where other users could read them.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD_BYTES = 1 + NONCE_BYTES + TAG_BYTES
"""Bytes a sealed message adds to its plaintext; packet budgets subtract it."""
KEY_SIZES = (16, 24, 32)
# Binds ciphertexts to this protocol, so they cannot be replayed into another one
# that happens to share the key.
_AAD = b"ringfs-gossip-v1"


class KeyringError(Exception):
    """Local misuse of a keyring or key file (bad key, removing the primary...)."""


class DecryptError(Exception):
    """No installed key authenticates the message (wrong key, tampering, garbage)."""


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) not in KEY_SIZES:
        raise KeyringError("a key must be 16, 24 or 32 bytes (AES-128/192/256)")
    return bytes(key)


def generate_key(size: int = 32) -> bytes:
    """A fresh random key of `size` bytes (AES-256 by default)."""
    if size not in KEY_SIZES:
        raise KeyringError("key size must be 16, 24 or 32")
    return os.urandom(size)


class Keyring:
    """The installed keys, the first one primary (used to encrypt)."""

    def __init__(
        self, keys: Iterable[bytes], *, nonce_source: Callable[[int], bytes] = os.urandom
    ) -> None:
        self._keys: list[bytes] = []
        self._ciphers: dict[bytes, AESGCM] = {}
        for key in keys:
            self.install(key)
        if not self._keys:
            raise KeyringError("a keyring needs at least one key")
        self._nonce = nonce_source

    @property
    def primary_key(self) -> bytes:
        return self._keys[0]

    @property
    def keys(self) -> list[bytes]:
        """Installed keys, primary first."""
        return list(self._keys)

    def install(self, key: bytes) -> None:
        """Add a key for decryption (no-op if present); it is not primary yet."""
        key = _check_key(key)
        if key not in self._ciphers:
            self._keys.append(key)
            self._ciphers[key] = AESGCM(key)

    def use(self, key: bytes) -> None:
        """Make an installed key the primary one; others stay valid for decryption."""
        key = _check_key(key)
        if key not in self._ciphers:
            raise KeyringError("install a key before using it")
        self._keys.remove(key)
        self._keys.insert(0, key)

    def remove(self, key: bytes) -> None:
        """Uninstall a key; the primary key cannot be removed."""
        key = _check_key(key)
        if key == self._keys[0]:
            raise KeyringError("cannot remove the primary key; use() another first")
        if key in self._ciphers:
            self._keys.remove(key)
            del self._ciphers[key]

    def encrypt(self, plaintext: bytes) -> bytes:
        """Seal with the primary key: version | nonce | ciphertext+tag."""
        nonce = self._nonce(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES:
            raise KeyringError("nonce source returned the wrong number of bytes")
        sealed = self._ciphers[self._keys[0]].encrypt(nonce, plaintext, _AAD)
        return b"\x01" + nonce + sealed

    def decrypt(self, data: bytes) -> bytes:
        """Open a sealed message with any installed key, primary first."""
        if len(data) < OVERHEAD_BYTES or data[0] != VERSION:
            raise DecryptError("not a sealed message of a known version")
        nonce = data[1 : 1 + NONCE_BYTES]
        body = data[1 + NONCE_BYTES :]
        for key in self._keys:
            try:
                return self._ciphers[key].decrypt(nonce, body, _AAD)
            except InvalidTag:
                continue
        raise DecryptError("no installed key authenticates the message")


def save_keyring_file(path: str | os.PathLike[str], keys: Iterable[bytes]) -> None:
    """Write keys as base64 lines, primary first, creating the file with mode 0600."""
    checked = [_check_key(k) for k in keys]
    if not checked:
        raise KeyringError("refusing to write an empty keyring")
    text = "".join(base64.b64encode(k).decode("ascii") + "\n" for k in checked)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def load_keys(path: str | os.PathLike[str]) -> list[bytes]:
    """Read a key file; refuse it if group or others may read or write it."""
    p = Path(path)
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise KeyringError(f"{p} is accessible by others (mode {mode:o}); chmod 600 it")
    keys = []
    for lineno, line in enumerate(p.read_text(encoding="ascii").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(_check_key(base64.b64decode(line, validate=True)))
        except (binascii.Error, ValueError) as exc:
            raise KeyringError(f"{p}:{lineno}: not a base64 key") from exc
    if not keys:
        raise KeyringError(f"{p} holds no key")
    return keys


def load_keyring_file(
    path: str | os.PathLike[str], *, nonce_source: Callable[[int], bytes] = os.urandom
) -> Keyring:
    """A keyring from a key file (see `load_keys`), its first key primary."""
    return Keyring(load_keys(path), nonce_source=nonce_source)

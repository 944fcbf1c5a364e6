"""Key material: reading key files safely and deriving per-purpose keys with HKDF (cheap, no slow KDF).

The key file holds random bytes (``walkeeper key generate`` writes 32 of them in base64). A KDF
designed to slow down password guessing would cost every archive_command call tens of milliseconds
for no gain on random keys, so HKDF-SHA256 is used throughout.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from walkeeper.errors import KeyMaterialError

MIN_KEY_BYTES = 32
_INFO_ENCRYPTION = b"walkeeper aes-256-gcm master v1"
_INFO_KEY_ID = b"walkeeper key id v1"
_INFO_OBJECT = b"walkeeper object key v1"


def hkdf(key: bytes, info: bytes, salt: bytes | None = None, length: int = 32) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def generate_key() -> str:
    """A new random 256-bit key, base64-encoded, suitable for a key_file."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _material_from_text(raw: bytes, source: str) -> bytes:
    stripped = raw.strip()
    try:
        decoded = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    material = decoded if len(decoded) >= MIN_KEY_BYTES else stripped
    if len(material) < MIN_KEY_BYTES:
        raise KeyMaterialError(
            f"key in {source} is too short: it needs at least {MIN_KEY_BYTES} random bytes",
            hint="create one with: walkeeper key generate --output FILE",
        )
    return material


@dataclass(frozen=True)
class _Key:
    key_id: str
    encryption_key: bytes = field(repr=False)


class Keyring:
    """The keys this process may use: one active key for writing, any known key for reading.

    Several keys are allowed so that a later key rotation only adds entries; objects name the key
    they were written with by ``key_id`` (never the key itself).
    """

    def __init__(self, materials: list[bytes]) -> None:
        if not materials:
            raise KeyMaterialError("no encryption key configured")
        keys = []
        for material in materials:
            key_id = hkdf(material, _INFO_KEY_ID, length=8).hex()
            keys.append(_Key(key_id, hkdf(material, _INFO_ENCRYPTION)))
        self._active = keys[0]
        self._by_id = {k.key_id: k for k in keys}

    def __repr__(self) -> str:
        return f"Keyring(active={self._active.key_id}, known={sorted(self._by_id)})"

    @property
    def active_id(self) -> str:
        return self._active.key_id

    def object_key(self, key_id: str, salt: bytes) -> bytes:
        key = self._by_id.get(key_id)
        if key is None:
            raise KeyMaterialError(
                f"object was encrypted with key id {key_id}, but the configured key has id "
                f"{self._active.key_id}",
                hint="configure the key_file this repository was written with",
            )
        return hkdf(key.encryption_key, _INFO_OBJECT, salt=salt)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read a key file, refusing one that group or others could read."""
        key_path = Path(path)
        try:
            fd = os.open(key_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise KeyMaterialError(f"key file {key_path} does not exist") from None
        except PermissionError:
            raise KeyMaterialError(
                f"key file {key_path} is not readable by this user (uid {os.getuid()})",
                hint="the key file must belong to the user running PostgreSQL",
            ) from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise KeyMaterialError(f"key file {key_path} is not a regular file")
            if mode & 0o077:
                raise KeyMaterialError(
                    f"key file {key_path} is accessible by group or others (mode {stat.S_IMODE(mode):04o})",
                    hint=f"run: chmod 600 {key_path}",
                )
            with os.fdopen(fd, "rb", closefd=False) as handle:
                raw = handle.read(64 * 1024)
        finally:
            os.close(fd)
        return cls([_material_from_text(raw, str(key_path))])

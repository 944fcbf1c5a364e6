"""The object header: magic, version, the JSON fields an object states about itself (docs/format.md), and the
codec settings that decide them (compression, cipher, key).

The header's exact bytes are the associated data of every encrypted frame (format.py), so they are
kept as read (``ObjectHeader.raw``).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from walkeeper.codec.compress import Compression
from walkeeper.codec.keys import Keyring
from walkeeper.core.errors import ConfigError, IntegrityError

MAGIC = b"\x89WKEEP\r\n"
VERSION = 1
FRAME_SIZE = 1024 * 1024
MAX_HEADER = 64 * 1024
_PREAMBLE = struct.Struct(">8sBI")


@dataclass(frozen=True)
class ObjectHeader:
    """What an object says about itself. ``raw`` is the exact bytes used as associated data."""

    name: str
    compression: str
    cipher: str
    key_id: str | None
    salt: bytes | None
    sha256: str | None
    size: int | None
    extra: dict[str, Any]
    raw: bytes
    epk: bytes | None = None  # public-key mode: the writer's ephemeral X25519 public key

    @property
    def length(self) -> int:
        return len(self.raw)


CIPHERS = ("aes-256-gcm", "x25519-aes-256-gcm", "none")
AEAD_CIPHERS = ("aes-256-gcm", "x25519-aes-256-gcm")


@dataclass(frozen=True)
class CodecSettings:
    compression: Compression = field(default_factory=Compression)
    cipher: str = "aes-256-gcm"
    keyring: Keyring | None = None

    def __post_init__(self) -> None:
        if self.cipher not in CIPHERS:
            raise ConfigError(f"unknown encryption method {self.cipher!r} (expected one of {CIPHERS})")
        if self.cipher != "none" and self.keyring is None:
            raise ConfigError(
                f"encryption method {self.cipher} needs a key",
                hint="set [encryption] key_file, or method = \"none\" to store objects unencrypted",
            )
        if self.cipher != "none" and self.keyring is not None:
            wanted = "x25519" if self.cipher == "x25519-aes-256-gcm" else "aes"
            if self.keyring.active_kind != wanted:
                raise ConfigError(
                    f"encryption method {self.cipher} needs " + ("an X25519 key file (public or private)"
                                                                 if wanted == "x25519" else "a symmetric key"),
                    hint="method = \"x25519-aes-256-gcm\" goes with walkeeper key generate --public-key-out; "
                         "\"aes-256-gcm\" with walkeeper key generate",
                )

    def for_metadata(self) -> CodecSettings:
        """Settings for backup and restore point metadata: unencrypted (checksummed) in public-key mode,
        so that a host holding only the public key can list backups, expire and check (README "Keys")."""
        return replace(self, cipher="none") if self.cipher == "x25519-aes-256-gcm" else self


def _build_header(settings: CodecSettings, name: str, sha256: str | None, size: int | None,
                  extra: dict[str, Any] | None) -> tuple[bytes, bytes | None]:
    """The header bytes and the object's key (None without encryption)."""
    salt = os.urandom(16) if settings.cipher != "none" else None
    object_key, key_fields = None, {}
    if salt is not None and settings.keyring is not None:
        object_key, key_fields = settings.keyring.seal_key(salt)
    fields: dict[str, Any] = {
        **key_fields,
        "name": name,
        "compression": settings.compression.method,
        "cipher": settings.cipher,
        "key_id": settings.keyring.active_id if settings.cipher != "none" and settings.keyring else None,
        "salt": salt.hex() if salt else None,
        "frame_size": FRAME_SIZE,
    }
    if sha256 is not None:
        fields["sha256"] = sha256
    if size is not None:
        fields["size"] = size
    if extra:
        fields["extra"] = extra
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return _PREAMBLE.pack(MAGIC, VERSION, len(body)) + body, object_key


def parse_header(data: bytes) -> ObjectHeader:
    """Parse the header at the start of ``data`` (which may hold more than the header)."""
    if len(data) < _PREAMBLE.size:
        raise IntegrityError("object is truncated: shorter than its header")
    magic, version, length = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise IntegrityError("not a walkeeper object (bad magic): corrupted or written by another tool")
    if version != VERSION:
        raise IntegrityError(f"object format version {version} is not supported by this walkeeper")
    if length > MAX_HEADER:
        raise IntegrityError("object header is implausibly large: corrupted")
    end = _PREAMBLE.size + length
    if len(data) < end:
        raise IntegrityError("object is truncated inside its header")
    try:
        fields = json.loads(data[_PREAMBLE.size:end])
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested past the parser's depth
        raise IntegrityError(f"object header is corrupted (not JSON: {exc.__class__.__name__})") from None
    if not isinstance(fields, dict):
        raise IntegrityError("object header is corrupted (not a JSON object)")
    for key, kinds in _HEADER_FIELDS.items():
        value = fields.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise IntegrityError(f"object header is corrupted (field {key!r} is {type(value).__name__})")
    try:
        salt = bytes.fromhex(fields["salt"]) if fields.get("salt") else None
        epk = bytes.fromhex(fields["epk"]) if fields.get("epk") else None
    except ValueError:
        raise IntegrityError("object header is corrupted (salt or epk is not hex)") from None
    return ObjectHeader(
        name=fields["name"], compression=fields["compression"], cipher=fields["cipher"],
        key_id=fields.get("key_id"), salt=salt, sha256=fields.get("sha256"), size=fields.get("size"),
        extra=fields.get("extra") or {}, raw=bytes(data[:end]), epk=epk,
    )


# The header fields a reader relies on, and the JSON types each may have (None: optional or null).
_HEADER_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,), "compression": (str,), "cipher": (str,), "key_id": (str, type(None)),
    "salt": (str, type(None)), "sha256": (str, type(None)), "size": (int, type(None)),
    "extra": (dict, type(None)), "epk": (str, type(None)),
}


def read_header(read: Callable[[int], bytes]) -> ObjectHeader:
    """Read just the header from a stream (cheap duplicate checks read no further)."""
    head = _read_exact(read, _PREAMBLE.size, "header")
    _magic, _version, length = _PREAMBLE.unpack(head)
    if length > MAX_HEADER:
        raise IntegrityError("object header is implausibly large: corrupted")
    return parse_header(head + _read_exact(read, length, "header"))


def _read_exact(read: Callable[[int], bytes], size: int, what: str) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = read(remaining)
        if not chunk:
            raise IntegrityError(f"object is truncated (ends inside its {what})")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)

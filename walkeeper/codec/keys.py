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

from walkeeper.core.errors import KeyMaterialError

MIN_KEY_BYTES = 32
_INFO_ENCRYPTION = b"walkeeper aes-256-gcm master v1"
_INFO_KEY_ID = b"walkeeper key id v1"
_INFO_OBJECT = b"walkeeper object key v1"
_INFO_X25519_ID = b"walkeeper x25519 key id v1"
_INFO_X25519_OBJECT = b"walkeeper x25519 object key v1"
# Public-key mode key files: one line, a prefix naming the kind, then 32 bytes in base64.
PRIVATE_PREFIX = b"walkeeper-x25519-private:"
PUBLIC_PREFIX = b"walkeeper-x25519-public:"
_SEALED_CACHE = 256  # object keys this process sealed with, kept for wal-push's self-check


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


def generate_x25519_pair() -> tuple[str, str]:
    """A new X25519 pair as (private key file text, public key file text)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    private = X25519PrivateKey.generate()
    raw_private = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    raw_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return ((PRIVATE_PREFIX + base64.b64encode(raw_private)).decode(),
            (PUBLIC_PREFIX + base64.b64encode(raw_public)).decode())


@dataclass(frozen=True)
class _Key:
    key_id: str
    encryption_key: bytes | None = field(default=None, repr=False)  # symmetric keys: the master key
    public: bytes | None = None  # X25519 keys: the raw public key
    private: bytes | None = field(default=None, repr=False)  # X25519 keys: None on a public-key-only host

    @property
    def kind(self) -> str:
        return "x25519" if self.public is not None else "aes"


def _x25519_key(material: bytes) -> _Key:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = None
    try:
        if material.startswith(PRIVATE_PREFIX):
            private = base64.b64decode(material[len(PRIVATE_PREFIX):], validate=True)
            public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
                Encoding.Raw, PublicFormat.Raw)
        else:
            public = base64.b64decode(material[len(PUBLIC_PREFIX):], validate=True)
        if len(public) != 32:
            raise ValueError("not 32 bytes")
    except (binascii.Error, ValueError):
        raise KeyMaterialError("an X25519 key file is damaged (expected 32 bytes in base64 after its prefix)",
                               hint="write a new pair with: walkeeper key generate --output PRIVATE "
                                    "--public-key-out PUBLIC") from None
    return _Key(hkdf(public, _INFO_X25519_ID, length=8).hex(), public=public, private=private)


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
            if material.startswith((PRIVATE_PREFIX, PUBLIC_PREFIX)):
                keys.append(_x25519_key(material))
                continue
            key_id = hkdf(material, _INFO_KEY_ID, length=8).hex()
            keys.append(_Key(key_id, hkdf(material, _INFO_ENCRYPTION)))
        self._active = keys[0]
        self._by_id: dict[str, _Key] = {}
        for k in keys:
            known = self._by_id.get(k.key_id)
            if known is None or (known.private is None and k.private is not None):
                self._by_id[k.key_id] = k  # a private key supersedes its own public key
        self._sealed: dict[bytes, bytes] = {}

    @property
    def public_only(self) -> bool:
        """True on a public-key-mode host without the private key: it can write, not read."""
        return self._active.kind == "x25519" and self._by_id[self._active.key_id].private is None

    @property
    def active_kind(self) -> str:
        """"aes" (a symmetric key) or "x25519" (public-key mode) for the key objects are written with."""
        return self._active.kind

    def seal_key(self, salt: bytes) -> tuple[bytes, dict[str, str]]:
        """A new object's key and the header fields a reader needs to derive it again.

        Public-key mode: an ephemeral X25519 key agreement with the active public key, so each
        object has its own random data key and only the private key's holder can derive it.
        """
        if self._active.kind == "aes":
            return self.object_key(self._active.key_id, salt), {}
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        assert self._active.public is not None
        ephemeral = X25519PrivateKey.generate()
        epk = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(self._active.public))
        key = hkdf(shared, _INFO_X25519_OBJECT + epk + self._active.public, salt=salt)
        if len(self._sealed) >= _SEALED_CACHE:
            self._sealed.pop(next(iter(self._sealed)))
        self._sealed[epk] = key
        return key, {"epk": epk.hex()}

    def open_key(self, key_id: str, salt: bytes, epk: bytes | None, *, what: str = "object") -> bytes:
        """The key of an existing object (symmetric or public-key mode)."""
        key = self._by_id.get(key_id)
        if key is None or key.kind == "aes":
            return self.object_key(key_id, salt, what=what)
        if epk is None:
            from walkeeper.core.errors import IntegrityError

            raise IntegrityError(f"{what} lacks its ephemeral public key: corrupted")
        if epk in self._sealed:  # written by this very process (wal-push's self-check)
            return self._sealed[epk]
        if key.private is None:
            raise KeyMaterialError(
                f"this host holds only the public key (key id {key_id}): {what} can be decrypted only where "
                "the private key is configured",
                hint="run this command on a restore host whose [encryption] key_file is the private key",
            )
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

        shared = X25519PrivateKey.from_private_bytes(key.private).exchange(X25519PublicKey.from_public_bytes(epk))
        assert key.public is not None
        return hkdf(shared, _INFO_X25519_OBJECT + epk + key.public, salt=salt)

    def __repr__(self) -> str:
        return f"Keyring(active={self._active.key_id}, known={sorted(self._by_id)})"

    @property
    def active_id(self) -> str:
        return self._active.key_id

    @property
    def key_ids(self) -> list[str]:
        """Every configured key id, the active one first."""
        return [self._active.key_id] + [k for k in self._by_id if k != self._active.key_id]

    def object_key(self, key_id: str, salt: bytes, *, what: str = "object") -> bytes:
        key = self._by_id.get(key_id)
        if key is None or key.encryption_key is None:
            raise KeyMaterialError(
                f"{what} was encrypted with key id {key_id}, which is not among the configured keys "
                f"({', '.join(self.key_ids)})",
                hint=f"add the key file of key id {key_id} to [encryption] key_files (any position but the first)",
            )
        return hkdf(key.encryption_key, _INFO_OBJECT, salt=salt)

    @classmethod
    def from_sources(cls, *, key_file: str | None = None, key_files: list[str] | None = None,
                     key_command: str | None = None, timeout: float = 10.0) -> Keyring:
        """All configured keys in order: key_command first (if any), then key_file, then key_files.

        The first becomes active for writing; all are readable.
        """
        materials: list[bytes] = []
        if key_command:
            materials.append(material_from_command(key_command, timeout))
        for path in ([key_file] if key_file else []) + list(key_files or []):
            materials.append(read_key_file(path))
        return cls(materials)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        return cls([read_key_file(path)])


def read_key_file(path: str | os.PathLike[str]) -> bytes:
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
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(64 * 1024)
        if mode & 0o077 and not raw.startswith(PUBLIC_PREFIX):  # a public key is no secret
            raise KeyMaterialError(
                f"key file {key_path} is accessible by group or others (mode {stat.S_IMODE(mode):04o})",
                hint=f"run: chmod 600 {key_path}",
            )
    finally:
        os.close(fd)
    return _material_from_text(raw, str(key_path))


def material_from_command(command: str, timeout: float) -> bytes:
    """Run ``/bin/sh -c command`` and take its stdout as key material (the PostgreSQL TDE convention).

    The output is never logged, never put into an error message, an environment variable or a
    process title; only the command's stderr is shown when it fails. Costs one fork+exec of a shell
    plus whatever the command does (README "Keys" has the figure), so it runs once per process:
    the pusher and prefetcher build their keyring once at start.
    """
    import contextlib
    import signal
    import subprocess

    try:
        # Own process group: on timeout the whole group is killed, so a grandchild holding the
        # pipe (sh -c 'vault ... | tr') cannot keep us waiting.
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise KeyMaterialError(f"[encryption] key_command could not be started: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise KeyMaterialError(f"[encryption] key_command did not finish within {timeout:g} s",
                               hint="check the key service it calls, or raise [encryption] key_command_timeout"
                               ) from None
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    stderr = done.stderr.decode("utf-8", "replace").strip().splitlines()
    tail = f": {stderr[-1][:300]}" if stderr else " (no message on stderr)"
    if done.returncode != 0:
        raise KeyMaterialError(f"[encryption] key_command failed with exit code {done.returncode}{tail}",
                               hint="run the command by hand as this user to see why")
    stripped = done.stdout.strip()
    if not stripped:
        raise KeyMaterialError("[encryption] key_command printed nothing on stdout",
                               hint="it must print the key (32+ random bytes, base64 or raw)")
    return _material_from_text(done.stdout, "the output of [encryption] key_command")

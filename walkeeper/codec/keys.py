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

    @property
    def key_ids(self) -> list[str]:
        """Every configured key id, the active one first."""
        return [self._active.key_id] + [k for k in self._by_id if k != self._active.key_id]

    def object_key(self, key_id: str, salt: bytes, *, what: str = "object") -> bytes:
        key = self._by_id.get(key_id)
        if key is None:
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
        if mode & 0o077:
            raise KeyMaterialError(
                f"key file {key_path} is accessible by group or others (mode {stat.S_IMODE(mode):04o})",
                hint=f"run: chmod 600 {key_path}",
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(64 * 1024)
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

"""A repository on another host, reached with ssh and written with rsync.

``ssh://user@host[:port]/absolute/path``. The remote host needs an sshd, rsync and the GNU
userland (sh, coreutils ``sync``/``ln``, findutils ``find -printf``): any Linux server.

How each promise is kept:

* Atomic: rsync uploads to a hidden temp name (``.tmp.<name>.<random>``) in the object's directory,
  and a second ssh command publishes it: ``mv`` to replace, or ``ln`` + ``rm`` so that an existing
  object is never replaced (atomic on any POSIX file system with hard links). A killed upload leaves
  only a hidden temp file, never the object; stale temp files older than a day are removed by later
  writes to the same directory.
* Durable: the publish step runs ``sync`` on the file and its directory before reporting success.
* One connection per command (storage/ssh_transport.py): the first call opens an ssh master connection with
  its socket in a private 0700 temp directory; every later ssh and rsync of this storage rides on
  it, and ``close()`` (or interpreter exit) shuts it down.
* Names reach the remote shell only after validation and ``shlex.quote``.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from walkeeper.core.config import SshConfig
from walkeeper.core.errors import AlreadyExists, ConfigError, NotFound, StorageError, TransientError
from walkeeper.storage.base import (
    TEMP_PREFIX,
    Leftover,
    ObjectInfo,
    Source,
    iter_source,
    validate_key,
    validate_leftover,
    validate_prefix,
)
from walkeeper.storage.retry import RetryPolicy
from walkeeper.storage.ssh_transport import EXIT_NOT_FOUND, RemoteFile, SshTransport, check_target

_SAFE_ROOT = re.compile(r"^/[A-Za-z0-9._+@/-]*$")
EXIT_EXISTS = 45  # our remote scripts' "object already exists"
DELETE_BATCH = 200
SMALL_PUT = 64 * 1024 * 1024  # bytes objects up to this go up in one ssh session


class RsyncStorage:
    """Objects as files under ``root`` on ``host``; keys map to relative paths."""

    def __init__(self, user: str | None, host: str, port: int | None, root: str,
                 settings: SshConfig | None = None, retry: RetryPolicy | None = None) -> None:
        check_target(user, host)
        if not _SAFE_ROOT.match(root) or "/../" in f"{root}/" or "/./" in f"{root}/":
            raise ConfigError(
                f"ssh repository path {root!r} must be absolute and use only letters, digits and ._+@-/",
            )
        self.user, self.host, self.port = user, host, port
        self.root = root.rstrip("/") or "/"
        self.settings = settings or SshConfig()
        self._retry = retry or RetryPolicy()
        self._ssh = SshTransport(user, host, port, self.settings)
        self.target, self.where = self._ssh.target, self._ssh.where
        self.url = f"ssh://{self.where}{self.root}"
        self._ssh_base = self._ssh.ssh_base
        self._control_dir = self._ssh.control_dir

    @classmethod
    def from_url(cls, url: str, options: Any = None) -> RsyncStorage:
        parts = urlsplit(url)
        if parts.scheme == "rsync":
            raise ConfigError(
                f"rsync:// daemon repositories are not supported ({url})",
                hint='use repo = "ssh://user@host/absolute/path": an rsync daemon cannot rename '
                     "atomically or refuse to overwrite",
            )
        if parts.scheme != "ssh" or not parts.hostname:
            raise ConfigError(f"invalid ssh repository URL {url!r}", hint='use "ssh://user@host[:port]/absolute/path"')
        if parts.password is not None or parts.query or parts.fragment:
            raise ConfigError(f"ssh repository URL {url!r} must not hold a password, query or fragment",
                              hint="authenticate with [ssh] identity_file")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"invalid port in {url!r}") from None
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        user = unquote(parts.username) if parts.username else None
        settings = getattr(options, "ssh", None) or SshConfig()
        return cls(user, host, port, unquote(parts.path) or "/", settings, RetryPolicy.from_options(options))

    # -- ssh plumbing ---------------------------------------------------------------------

    # -- ssh (storage/ssh_transport.py) ---------------------------------------------------

    def _ensure_master(self) -> None:
        self._ssh.ensure_master()

    def _failure(self, code: int, stderr: str, action: str, key: str | None, *, rsync: bool = False
                 ) -> StorageError:
        return self._ssh.failure(code, stderr, action, key, rsync=rsync)

    def _run(self, script: str, action: str, key: str | None, *, check: bool = True,
             ok: tuple[int, ...] = (0,), input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return self._ssh.run(script, action, key, check=check, ok=ok, input=input)

    def _path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}" if self.root != "/" else f"/{validate_key(key)}"

    # -- the Storage interface ------------------------------------------------------------

    def put(self, key: str, source: Source, *, overwrite: bool = True,
            metadata: dict[str, str] | None = None) -> None:
        """Upload to a hidden temp name, then publish it with a remote rename (or link) and sync.

        A WAL-sized ``bytes`` object goes up in one ssh session (``head -c N`` into the temp file,
        published only if all N bytes arrived); a stream is spooled locally and sent with rsync,
        then published by a second session. Metadata is not kept (readers use the object header).
        """
        path = self._path(key)
        directory = str(PurePosixPath(path).parent)
        tmp = f"{directory}/{TEMP_PREFIX}.{PurePosixPath(path).name}.{secrets.token_hex(4)}"
        t, d = shlex.quote(tmp), shlex.quote(directory)
        if isinstance(source, bytes | bytearray | memoryview) and len(source) <= SMALL_PUT:
            data = bytes(source)
            script = (f"set -e; umask 077; mkdir -p -- {d}; trap 'rm -f -- {t}' EXIT; head -c {len(data)} > {t}; "
                      f"[ \"$(wc -c < {t})\" -eq {len(data)} ] || {{ echo 'upload cut short' >&2; exit 1; }}; "
                      + self._publish(tmp, path, overwrite))
            proc = self._run(script, "storing", key, ok=(0, EXIT_EXISTS), input=data)
        else:
            self._rsync_upload(key, source, tmp, directory)
            script = f"set -e; trap 'rm -f -- {t}' EXIT; " + self._publish(tmp, path, overwrite)
            proc = self._run(script, "storing", key, ok=(0, EXIT_EXISTS))
        if proc.returncode == EXIT_EXISTS:
            raise AlreadyExists(f"object {key} already exists")

    def _rsync_upload(self, key: str, source: Source, tmp: str, directory: str) -> None:
        """Spool, then rsync the spool to ``tmp``; retried here, as the caller's stream cannot be replayed."""
        with tempfile.NamedTemporaryFile(prefix="wk-rsync-") as spool:
            # 1. Spool the stream: rsync needs a file, and memory stays bounded for any size.
            for chunk in iter_source(source):
                spool.write(chunk)
            spool.flush()
            # 2. Upload to the temp name; rsync itself writes to its own temp name and renames.
            mkdir = f"umask 077 && mkdir -p -- {shlex.quote(directory)} && rsync"
            cmd = ["rsync", "-e", shlex.join(self._ssh_base), f"--rsync-path={mkdir}", "--chmod=F600",
                   "--whole-file", f"--timeout={self.settings.io_timeout}", "-q", spool.name,
                   f"{self.target}:{tmp}"]
            delays = self._retry.delays()
            while True:
                try:
                    self._ensure_master()
                    self._rsync(cmd, key, tmp)
                    return
                except TransientError:
                    delay = next(delays, None)
                    if delay is None:
                        raise
                    time.sleep(delay)

    def _rsync(self, cmd: list[str], key: str, tmp: str) -> None:
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
        except FileNotFoundError:
            raise ConfigError("rsync is not installed on this host", hint="install rsync") from None
        if proc.returncode != 0:
            failure = self._failure(proc.returncode, proc.stderr.decode(errors="replace"), "storing", key, rsync=True)
            with contextlib.suppress(StorageError):
                self._run(f"rm -f -- {shlex.quote(tmp)}", "cleaning up", key, check=False)
            raise failure

    @staticmethod
    def _publish(tmp: str, path: str, overwrite: bool) -> str:
        """Shell steps that make a complete temp file the object, durably (runs under set -e)."""
        t, p = shlex.quote(tmp), shlex.quote(path)
        directory = PurePosixPath(path).parent
        d, parent = shlex.quote(str(directory)), shlex.quote(str(directory.parent))
        if overwrite:
            rename = f"mv -f -- {t} {p}"
        else:
            # ln refuses an existing name atomically; without hard links, check then rename (best effort).
            rename = (f"if ln -- {t} {p} 2>/dev/null; then rm -f -- {t}; "
                      f"elif [ -e {p} ]; then exit {EXIT_EXISTS}; else mv -- {t} {p}; fi")
        return (
            f"sync -- {t} 2>/dev/null || sync; "  # 3. the data on disk before the name points at it
            f"{rename}; "  # 4. publish
            f"sync -- {d} {parent} 2>/dev/null || sync; "  # 5. the directory entries on disk
            # 6. Sweep temp files of killed uploads (a day old: no upload takes that long).
            f"find {d} -maxdepth 1 -type f -name '.*' -mmin +1440 -delete 2>/dev/null || true"
        )

    def open(self, key: str) -> BinaryIO:
        """Stream the object with ``cat`` over the shared connection; NotFound only for a missing file."""
        p = shlex.quote(self._path(key))
        self._ensure_master()
        script = (f"if [ -f {p} ]; then exec cat -- {p}; elif [ -e {p} ]; then echo 'not a regular file' >&2; "
                  f"exit 1; else exit {EXIT_NOT_FOUND}; fi")
        err = tempfile.TemporaryFile()  # noqa: SIM115 - owned and closed by RemoteFile
        proc = subprocess.Popen([*self._ssh_base, self.target, "sh -c " + shlex.quote(script)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        first = proc.stdout.read1(1024 * 1024)
        stream = RemoteFile(proc, err, first, self.url, self._failure, key)
        if not first:
            stream.finish()  # raises NotFound or the failure; an empty object reads as empty
        return io.BufferedReader(stream, 1024 * 1024)  # type: ignore[arg-type]

    def get(self, key: str) -> bytes:
        with self.open(key) as handle:
            return handle.read()

    def stat(self, key: str) -> ObjectInfo:
        p = shlex.quote(self._path(key))
        script = f"if [ -e {p} ]; then exec find {p} -maxdepth 0 -type f -printf '%s %T@\\n'; fi; exit {EXIT_NOT_FOUND}"
        proc = self._run(script, "reading", key, ok=(0, EXIT_NOT_FOUND))
        out = proc.stdout.decode().split()
        if proc.returncode == EXIT_NOT_FOUND:
            raise NotFound(f"{key} not found in {self.url}")
        if len(out) != 2:
            raise StorageError(f"{key} in {self.url} is not a regular file")
        return ObjectInfo(key, int(out[0]), float(out[1]))

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """One remote ``find`` under the prefix's directory; sorting and filtering happen here."""
        validate_prefix(prefix)
        directory = prefix.rpartition("/")[0]
        start = shlex.quote(f"{self.root.rstrip('/')}/{directory}" if directory else self.root)
        script = (f"[ -d {start} ] || exit 0; exec find {start} -mindepth 1 -name '.*' -prune -o -type f "
                  f"-printf '%P\\t%s\\t%T@\\n'")
        proc = self._run(script, "listing", prefix or "/")
        base = f"{directory}/" if directory else ""
        items = []
        for line in proc.stdout.decode(errors="replace").splitlines():
            rel, _, rest = line.partition("\t")
            size, _, mtime = rest.partition("\t")
            key = base + rel
            if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                continue
            try:
                validate_key(key)
            except Exception:
                continue  # a stray file no walkeeper key could name
            items.append(ObjectInfo(key, int(size), float(mtime)))
        items.sort(key=lambda info: info.key)
        return iter(items)

    def delete(self, keys: Iterable[str]) -> None:
        paths = [self._path(k) for k in keys]
        for begin in range(0, len(paths), DELETE_BATCH):
            batch = paths[begin:begin + DELETE_BATCH]
            dirs = sorted({str(PurePosixPath(p).parent) for p in batch})
            script = (f"rm -f -- {' '.join(map(shlex.quote, batch))} && "
                      f"(for d in {' '.join(map(shlex.quote, dirs))}; do [ -d \"$d\" ] && sync -- \"$d\"; done; "
                      "true) 2>/dev/null")
            self._run(script, "deleting objects in", None)

    def list_leftovers(self, prefix: str = "") -> Iterator[Leftover]:
        """One remote ``find``: hidden files (our and rsync's temp files) and empty directories."""
        validate_prefix(prefix)
        directory = prefix.rpartition("/")[0]
        start = shlex.quote(f"{self.root.rstrip('/')}/{directory}" if directory else self.root)
        script = (f"[ -d {start} ] || exit 0; exec find {start} -mindepth 1 -name '.*' "
                  f"\\( -type f -printf 'temp\\t%P\\t%s\\t%T@\\n' -o -prune \\) "
                  f"-o -type d -empty -printf 'dir\\t%P\\t0\\t%T@\\n'")
        proc = self._run(script, "listing leftovers in", prefix or "/")
        base = f"{directory}/" if directory else ""
        items = []
        for line in proc.stdout.decode(errors="replace").splitlines():
            kind, rel, size, mtime = [*line.split("\t"), "", "", ""][:4]
            item = Leftover(kind, base + rel, int(size or 0), float(mtime or 0))
            try:
                validate_leftover(item)
            except Exception:
                continue  # a stray name no walkeeper writer could have left
            if item.path.startswith(prefix):
                items.append(item)
        return iter(sorted(items, key=lambda item: item.path))

    def remove_leftover(self, leftover: Leftover) -> None:
        path = self._path_of(validate_leftover(leftover))
        p, d = shlex.quote(path), shlex.quote(str(PurePosixPath(path).parent))
        if leftover.kind == "dir":
            script = f"rmdir -- {p} 2>/dev/null; sync -- {d} 2>/dev/null; true"
        else:
            script = f"rm -f -- {p} && (sync -- {d} 2>/dev/null; true)"
        self._run(script, "removing", leftover.path)

    def _path_of(self, relative: str) -> str:
        return f"{self.root}/{relative}" if self.root != "/" else f"/{relative}"

    def close(self) -> None:
        self._ssh.close()



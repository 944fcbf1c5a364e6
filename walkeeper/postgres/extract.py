"""Restoring a base backup into a directory: safe tar extraction and the restore writer.

Each object streams through the decoder into a safe tar extractor (no absolute paths, no ``..``, no links
that leave the target, regular files/directories/symlinks only). ``global/pg_control`` is written last,
after every checksum was verified and every other file and directory is on disk (fsync; files are synced
in a background thread while the next ones are decoded): a directory left behind by a killed restore or a
power loss has no pg_control and PostgreSQL refuses to start on it. On an error the directory is removed
(or emptied, if it existed before).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from walkeeper.codec import Decoder
from walkeeper.core.durable import TreeSync, fsync_dir, write_file
from walkeeper.core.errors import (
    ConfigError,
    ForeignClusterError,
    IntegrityError,
    RefusedError,
    StorageError,
    WalkeeperError,
    running_as,
)
from walkeeper.core.filewriters import FileWriters
from walkeeper.core.progress import Progress
from walkeeper.core.units import human_bytes
from walkeeper.postgres.basebackup import CHUNK, PG_CONTROL, ControlFacts, TarScanner, member_name, parse_pg_control
from walkeeper.repo.catalog import BackupMeta, BackupObject
from walkeeper.repo.repository import Repository

# -- restoring a backup --------------------------------------------------------------------------

SMALL_FILE = 1024 * 1024  # with workers > 1, files up to this size are written by FileWriters' threads

class _StreamReader:
    """A file-like ``read(n)`` over an iterator of chunks (the decoder's plaintext)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = bytearray()
        self._done = False

    def read(self, size: int = -1) -> bytes:
        if not self._buf and not self._done and size > 0:  # the usual case: tarfile asks for what a chunk holds
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._done = True
                return b""
            if len(chunk) == size:
                return chunk  # no copy
            self._buf += chunk
        while not self._done and (size < 0 or len(self._buf) < size):
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                self._done = True
        if size < 0:
            size = len(self._buf)
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def exhaust(self) -> None:
        """Read to the end so the decoder checks the trailer (tarfile stops at the end marker)."""
        for _ in self._chunks:
            pass
        self._done = True


def _safe_join(root: Path, name: str) -> Path:
    clean = member_name(name)
    if not clean or clean.startswith("/") or "\\" in clean or "\0" in clean:
        raise IntegrityError(f"backup holds an unsafe path {name!r}; nothing is written outside the target")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise IntegrityError(f"backup holds an unsafe path {name!r}; nothing is written outside the target")
    return root.joinpath(*parts)


def _mkdirs(root: Path, path: Path, name: str, sync: TreeSync | None = None) -> None:
    """Create ``path`` and missing parents under ``root``, each 0700, never through a link."""
    missing = []
    probe = path
    while probe != root and not probe.exists() and not probe.is_symlink():
        missing.append(probe)
        probe = probe.parent
    _check_inside(root, probe, name)
    for directory in reversed(missing):
        os.mkdir(directory, 0o700)
        if sync:
            sync.add_dir(directory.parent)


def _check_inside(root: Path, path: Path, name: str) -> None:
    real = os.path.realpath(path)
    if real != str(root) and not real.startswith(str(root) + os.sep):
        raise IntegrityError(f"backup member {name!r} would be written outside the target (through a link)")


def extract_tar(read: Callable[[int], bytes], root: Path, deferred: dict[str, bytes],
                sync: TreeSync | None = None, writers: FileWriters | None = None) -> int:
    """Extract a tar stream under ``root`` refusing anything that could escape it; returns file count.

    ``global/pg_control`` is kept in ``deferred`` instead of being written. With ``sync``, every file
    written and every directory whose entries changed is handed to it to be made durable.
    """
    root = Path(os.path.realpath(root))
    count = 0
    try:
        tar = tarfile.open(fileobj=_ReadOnly(read), mode="r|", bufsize=CHUNK)  # type: ignore[call-overload]  # noqa: SIM115
        for member in tar:
            dest = _safe_join(root, member.name)
            _check_inside(root, dest.parent, member.name)
            name = member_name(member.name).strip("/")
            if member.isdir():
                _mkdirs(root, dest, member.name, sync)
                _check_inside(root, dest, member.name)
                os.chmod(dest, (member.mode & 0o750) | 0o700)
                if sync:
                    sync.add_dir(dest)  # its mode (and, once synced, entries written into it)
            elif member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                if name == PG_CONTROL:
                    deferred[name] = handle.read()
                    continue
                _mkdirs(root, dest.parent, member.name, sync)
                if writers is not None and member.size <= SMALL_FILE:  # written (and synced) on a worker thread
                    writers.write(dest, (member.mode & 0o640) | 0o600, handle.read())
                    count += 1
                    continue
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             (member.mode & 0o640) | 0o600)
                try:
                    with os.fdopen(fd, "wb", closefd=False) as out:
                        while True:
                            chunk = handle.read(CHUNK)
                            if not chunk:
                                break
                            out.write(chunk)
                except BaseException:
                    os.close(fd)
                    raise
                if sync:
                    sync.add_file(fd)  # fsynced (and closed) in the background while we write the next one
                    sync.add_dir(dest.parent)
                else:
                    os.close(fd)
                count += 1
            elif member.issym():
                target = member.linkname
                resolved = os.path.normpath(os.path.join(os.path.dirname(str(dest)), target))
                if os.path.isabs(target) or not (resolved + os.sep).startswith(str(root) + os.sep):
                    raise IntegrityError(
                        f"backup holds a link {member.name!r} -> {target!r} that leaves the target; refused")
                _mkdirs(root, dest.parent, member.name, sync)
                os.symlink(target, dest)
                if sync:
                    sync.add_dir(dest.parent)
            else:
                raise IntegrityError(f"backup holds {member.name!r}, which is not a file, directory or "
                                     "symlink (hard links and devices are refused)")
    except tarfile.TarError as exc:
        raise IntegrityError(f"the backup is not a valid tar: {exc}") from None
    return count


class _ReadOnly:
    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.read = read


@dataclass(frozen=True)
class RestoreResult:
    backup: BackupMeta
    pgdata: Path
    files: int
    bytes: int
    seconds: float
    chain: tuple[str, ...] = ()  # an incremental backup's chain, the full first (postgres/combine.py)


def _parse_tablespace_map(pairs: Iterable[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise ConfigError(f"--tablespace-map {pair!r}: expected OLD=NEW (OLD: a path or a tablespace oid)")
        if not os.path.isabs(new):
            raise ConfigError(f"--tablespace-map {pair!r}: the new location must be an absolute path")
        out[old.rstrip("/") or "/"] = new.rstrip("/") or "/"
    return out


def _prepare_target(path: Path, what: str) -> bool:
    """Make ``path`` an empty 0700 directory; returns True if it existed (then it is emptied, not removed)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise RefusedError(f"{what} {path} exists and is not a directory")
    if path.exists():
        if any(path.iterdir()):
            raise RefusedError(f"{what} {path} is not empty; refusing to restore over existing files",
                               hint="restore into a new or empty directory")
        if path.stat().st_uid != os.geteuid():
            raise RefusedError(f"{what} {path} is not owned by the current user (uid {os.geteuid()})")
        os.chmod(path, 0o700)
        return True
    if not path.parent.is_dir():
        raise RefusedError(f"the parent of {what} {path} does not exist")
    path.mkdir(mode=0o700)
    return False


def _remove_restored(path: Path, existed: bool) -> None:
    if not path.exists():
        return
    if existed:
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _undo_restore(prepared: list[tuple[Path, bool]]) -> str:
    """Remove what a failed restore wrote; returns what was done, for the error message."""
    if not prepared:
        return "nothing was written"
    removed, emptied, left = [], [], []
    for path, existed in reversed(prepared):
        with contextlib.suppress(OSError):
            _remove_restored(path, existed)
        try:
            clean = not path.exists() if not existed else not any(path.iterdir())
        except OSError:
            clean = False
        (left if not clean else emptied if existed else removed).append(str(path))
    notes = []
    if removed:
        notes.append(f"the partial restore was removed ({', '.join(removed)}, created by this restore, is gone)")
    if emptied:
        notes.append(f"the partial restore was removed from {', '.join(emptied)} (empty again, as before)")
    if left:
        notes.append(f"the partial restore could not be removed from {', '.join(left)}: remove it by hand")
    return "; ".join(notes)


def _restore_os_error(exc: OSError, target: Path, option: str, needed: int) -> str:
    """What went wrong writing ``target`` and what to do, without errno numbers."""
    import errno

    path = exc.filename or target
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return (f"{what} writing {target}: the backup needs {human_bytes(needed)} there; free that much or "
                f"choose another {option}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        writable = target if target.exists() else target.parent
        return (f"permission denied writing {path} (running as {running_as()}): make {writable} writable by this "
                f"user or choose another {option}")
    if exc.errno == errno.EROFS:
        return f"{target} is on a read-only file system: choose another {option}"
    return f"cannot write {path}: {exc.strerror or exc}"


def restore_backup(repo: Repository, backup: BackupMeta, pgdata: Path, *, tablespace_map: Iterable[str] = (),
                   progress: bool | None = None,
                   before_control: Callable[[Path], None] | None = None, workers: int = 1,
                   durable: bool = True) -> RestoreResult:
    """Restore ``backup`` into ``pgdata`` (new or empty), verifying every checksum.

    Every file and directory is durable (fsync) before ``global/pg_control`` is written, and
    ``before_control(pgdata)`` (pitr's recovery settings) runs in between: after a crash or power
    loss at any point the directory is either complete or not startable. ``durable=False`` skips the
    fsyncs, for a staged chain member that pg_combinebackup reads and whose output it syncs itself.
    """
    began = time.monotonic()
    repo_meta = repo.require_meta()
    if repo_meta.system_identifier not in (None, backup.system_identifier):
        raise ForeignClusterError(
            f"backup {backup.id} comes from database system {backup.system_identifier}, but repository "
            f"{repo.storage.url} belongs to system {repo_meta.system_identifier}; refusing to restore it",
            hint="a backup object copied from another cluster's repository?",
        )
    mapping = _parse_tablespace_map(tablespace_map)
    pgdata = Path(os.path.abspath(pgdata))
    targets: list[tuple[BackupObject, Path]] = []
    for obj in backup.objects:
        if obj.tablespace_oid is None:
            targets.append((obj, pgdata))
        else:
            old = obj.location or ""
            new = mapping.get(old.rstrip("/"), mapping.get(obj.tablespace_oid, old))
            if not new:
                raise RefusedError(f"tablespace {obj.tablespace_oid} has no recorded location; "
                                   f"give --tablespace-map {obj.tablespace_oid}=/new/path")
            targets.append((obj, Path(new)))
    created: list[tuple[Path, bool]] = []
    deferred: dict[str, bytes] = {}
    files = 0
    total = 0
    meter = Progress(f"restore {backup.id}", backup.plain_size, enabled=progress)
    sync = TreeSync() if durable else None
    writers = FileWriters(workers, sync=sync) if workers > 1 else None
    writing = pgdata  # the target being written, for the error message
    try:
        for _obj, target in targets:
            writing = target
            existed = _prepare_target(target, "target directory")
            created.append((target, existed))
            if sync:
                sync.add_dir(target)
                if not existed:
                    sync.add_dir(target.parent)  # the new target's own entry
        for obj, target in targets:
            writing = target
            decoder = Decoder(repo.keyring, expected_name=obj.key)
            with repo.storage.open(obj.key) as handle:
                def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
                    for chunk in chunks:
                        meter.add(len(chunk))
                        yield chunk
                reader = _StreamReader(counted(decoder.decode(handle.read, workers=workers)))
                files += extract_tar(reader.read, target, deferred if target == pgdata else {}, sync, writers)
                if writers is not None:
                    writers.finish()  # this target's files are written (an error is this target's)
                reader.exhaust()
            if decoder.sha256 != obj.sha256 or decoder.size != obj.plain_size:
                raise IntegrityError(f"{obj.key} decodes to sha256 {decoder.sha256} ({decoder.size} bytes), "
                                     f"the backup recorded {obj.sha256} ({obj.plain_size} bytes)")
            total += decoder.size
        meter.finish()
        if PG_CONTROL not in deferred:
            raise IntegrityError(f"backup {backup.id} holds no {PG_CONTROL}")
        if backup.tablespaces:
            lines = []
            for obj, target in targets:
                if obj.tablespace_oid is not None:
                    lines.append(f"{obj.tablespace_oid} {target}\n")
            write_file(pgdata / "tablespace_map", "".join(lines).encode())  # replaces the backup's own
        if sync:
            sync.finish()  # every file and directory written so far is on disk
        if before_control:
            before_control(pgdata)
        # Last: with pg_control in place the directory becomes startable.
        writing = pgdata
        control = pgdata / PG_CONTROL
        if not control.parent.is_dir():
            control.parent.mkdir(mode=0o700)
            fsync_dir(pgdata)
        write_file(control, deferred[PG_CONTROL], replace=False)  # durable: file, then global/
    except BaseException as exc:
        if writers is not None:
            writers.close()  # nothing more is written while the partial restore is removed
        undone = _undo_restore(created)
        if isinstance(exc, WalkeeperError | KeyboardInterrupt):
            raise
        if isinstance(exc, OSError):
            option = "--pgdata" if writing == pgdata else "--tablespace-map"
            needed = sum(o.plain_size for o, t in targets if t == writing)
            raise StorageError(f"{_restore_os_error(exc, writing, option, needed)}; {undone}") from None
        raise
    finally:
        if writers is not None:
            writers.close()
        if sync:
            sync.close()
    return RestoreResult(backup, pgdata, files, total, time.monotonic() - began)


def stored_pg_control(repo: Repository, backup: BackupMeta) -> ControlFacts:
    """``global/pg_control`` of a stored backup, for facts its metadata does not record.

    pg_basebackup sends pg_control last, so the base tar is decoded (not written anywhere) up to
    its end: as costly as reading the whole backup once.
    """
    base = [o for o in backup.objects if o.tablespace_oid is None]
    if not base:
        raise IntegrityError(f"backup {backup.id} has no base tar")
    captured: dict[str, bytes] = {}
    scanner = TarScanner(captured)
    decoder = Decoder(repo.keyring, expected_name=base[0].key)
    meter = Progress(f"reading backup {backup.id} for its pg_control", base[0].plain_size)
    with repo.storage.open(base[0].key) as handle:
        for chunk in decoder.decode(handle.read):
            meter.add(len(chunk))
            scanner.feed(chunk)
            if PG_CONTROL in captured or scanner.ended:
                break
    meter.finish()
    if PG_CONTROL not in captured:
        raise IntegrityError(f"backup {backup.id} holds no {PG_CONTROL}")
    facts = parse_pg_control(captured[PG_CONTROL])
    if str(facts.system_identifier) != backup.system_identifier:
        raise IntegrityError(f"backup {backup.id}: its {PG_CONTROL} names system {facts.system_identifier}, "
                             f"its metadata {backup.system_identifier}")
    return facts

"""Storing or fetching one WAL file with its checks: what wal-push/wal-fetch and their helpers share.

The pusher stores files through push_file exactly as wal-push does; wal-fetch and the prefetcher place
files through the same fetch path. Not a command: the commands and the helpers import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from walkeeper.core.durable import write_file
from walkeeper.core.errors import InvalidWal, NotFound, StorageError
from walkeeper.core.wal import PageHeader, WalName, check_segment, parse_wal_name
from walkeeper.core.walformat import is_wal_name
from walkeeper.repo.repository import PushResult, Repository


def read_wal_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFound(
            f"{path} does not exist (in {os.getcwd()})",
            hint="archive_command gets %p relative to the data directory, its working directory",
        ) from None
    except IsADirectoryError:
        raise InvalidWal(f"{path} is a directory, not a WAL file") from None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from None


def push_file(repo: Repository, path: Path, *, look_first: bool = True,
              before_store: Callable[[], None] | None = None) -> PushResult:
    """Validate one WAL file and store it: the body of archive_command (``look_first``, ``before_store``:
    see push_wal)."""
    wal = read_checked(path)
    return store_wal(repo, wal, look_first=look_first, before_store=before_store)


@dataclass(frozen=True)
class WalData:
    """A WAL file read and checked, ready to be stored into one or several repositories."""

    name: WalName
    data: bytes
    header: PageHeader | None  # segments (and .partial): the first page header


def read_checked(path: Path) -> WalData:
    """Read one WAL file named by PostgreSQL and check its name (and a segment's first page header)."""
    name = parse_wal_name(path.name)
    data = read_wal_file(path)
    return WalData(name, data, check_segment(name, data) if name.is_segment_like else None)


def store_wal(repo: Repository, wal: WalData, *, look_first: bool = True,
              before_store: Callable[[], None] | None = None) -> PushResult:
    """Store a checked WAL file in one repository (its identity recorded or checked first)."""
    if wal.header is not None:
        repo.ensure_identity(wal.header.system_identifier, wal.header.segment_size, wal.header.pg_version)
    else:
        repo.ensure_identity(None, None, None)
    return repo.push_wal(wal.name, wal.data, look_first=look_first, before_store=before_store)


def ready_files(pg_wal: Path) -> list[str]:
    """WAL files waiting for archive_command, in the order PostgreSQL archives them (history first)."""
    try:
        names = [n[:-6] for n in os.listdir(pg_wal / "archive_status") if n.endswith(".ready")]
    except OSError:
        return []
    names = [n for n in names if is_wal_name(n)]
    return sorted(names, key=lambda n: (not n.endswith(".history"), n))


def write_file_atomically(dest: Path, data: bytes) -> None:
    """Write ``data`` to a temp name beside ``dest`` and rename it into place.

    Not synced: PostgreSQL reads %p at once and durable_rename()s (fsyncs) the segments and history
    files it keeps (KeepFileRestoredFromArchive).
    """
    try:
        write_file(dest, data, sync=False)
    except OSError as exc:
        raise StorageError(f"cannot write {dest}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class FetchResult:
    name: str
    size: int


def place_file(name: str, data: bytes, dest: Path) -> FetchResult:
    """The end of restore_command: the verified file at ``dest``."""
    write_file_atomically(dest, data)
    return FetchResult(name, len(data))

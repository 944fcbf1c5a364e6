"""wal-push and wal-fetch: PostgreSQL's archive_command and restore_command contract.

archive_command: exit 0 only once the file is durably stored; identical re-push is success;
different content is refused. restore_command: exit 0 only once the whole verified file is at
the destination; "not in the archive" is the only quiet failure (see errors.exit_code).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from walkeeper.config import Config
from walkeeper.errors import InvalidWal, NotFound, StorageError
from walkeeper.repository import PushResult, Repository, open_repository
from walkeeper.wal import check_segment, parse_wal_name

log = logging.getLogger(__name__)


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


def push_file(repo: Repository, path: Path) -> PushResult:
    """Validate one WAL file and store it: the body of archive_command."""
    name = parse_wal_name(path.name)
    data = read_wal_file(path)
    if name.is_segment_like:
        header = check_segment(name, data)
        repo.ensure_identity(header.system_identifier, header.segment_size, header.pg_version)
    else:
        repo.ensure_identity(None, None, None)
    return repo.push_wal(name, data)


def wal_push(config: Config, path: str) -> PushResult:
    return push_file(open_repository(config), Path(path))


def write_file_atomically(dest: Path, data: bytes) -> None:
    """Write ``data`` to a temp name beside ``dest`` and rename it into place."""
    tmp = dest.with_name(f"{dest.name}.walkeeper-{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, dest)
    except OSError as exc:
        raise StorageError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@dataclass(frozen=True)
class FetchResult:
    name: str
    size: int


def fetch_file(repo: Repository, name_text: str, dest: Path) -> FetchResult:
    """The body of restore_command: fetch, verify, place."""
    name = parse_wal_name(name_text)
    data = repo.fetch_wal(name)
    write_file_atomically(dest, data)
    return FetchResult(name.name, len(data))


def wal_fetch(config: Config, name: str, dest: str) -> FetchResult:
    return fetch_file(open_repository(config), name, Path(dest))

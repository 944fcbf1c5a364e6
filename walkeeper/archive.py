"""wal-push and wal-fetch: PostgreSQL's archive_command and restore_command contract.

archive_command: exit 0 only once the file is durably stored; identical re-push is success;
different content is refused. restore_command: exit 0 only once the whole verified file is at
the destination; "not in the archive" is the only quiet failure (see errors.exit_code).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from walkeeper import fastpath
from walkeeper.config import Config
from walkeeper.durable import write_file
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


def push_file(repo: Repository, path: Path, *, look_first: bool = True,
              before_store: Callable[[], None] | None = None) -> PushResult:
    """Validate one WAL file and store it: the body of archive_command (``look_first``, ``before_store``:
    see push_wal)."""
    name = parse_wal_name(path.name)
    data = read_wal_file(path)
    if name.is_segment_like:
        header = check_segment(name, data)
        repo.ensure_identity(header.system_identifier, header.segment_size, header.pg_version)
    else:
        repo.ensure_identity(None, None, None)
    return repo.push_wal(name, data, look_first=look_first, before_store=before_store)


def wal_push(config: Config, path: str) -> PushResult:
    repo = open_repository(config)
    wal_path = Path(path)
    if config.archive.push_ahead > 0 and (wal_path.parent / "archive_status").is_dir():
        try:
            if config.archive.status_dir:
                outside_data_directory(config.archive.status_dir, os.getcwd(), "[archive] status_dir")
            status = fastpath.status_dir(config.archive.status_dir, config.repo, os.getcwd())
        except OSError as exc:
            log.warning("push-ahead disabled: status directory unusable (%s)", exc)
        else:
            return push_with_pusher(config, repo, wal_path, status)
    return push_file(repo, wal_path)


# -- push-ahead ------------------------------------------------------------------------------------------
# A full-path wal-push starts the background pusher (walkeeper.pusher) when other segments wait as
# .ready, then pushes its own file. The pusher records each success (after the durable store) in the
# status directory; PostgreSQL's later call for such a file is answered by walkeeper.fastpath.


def ready_files(pg_wal: Path) -> list[str]:
    """WAL files waiting for archive_command, in the order PostgreSQL archives them (history first)."""
    try:
        names = [n[:-6] for n in os.listdir(pg_wal / "archive_status") if n.endswith(".ready")]
    except OSError:
        return []
    names = [n for n in names if fastpath.is_wal_name(n)]
    return sorted(names, key=lambda n: (not n.endswith(".history"), n))


def push_with_pusher(config: Config, repo: Repository, path: Path, status: str) -> PushResult:
    """Push PostgreSQL's own file, marked as being pushed by this process so the pusher leaves it alone."""
    marker = os.path.join(status, path.name + fastpath.PUSHING_SUFFIX)
    try:
        # Not synced: a pid is meaningless after a crash (and a dead pid's marker is ignored).
        fastpath.write_record(marker, {"v": fastpath.RECORD_VERSION, "name": path.name, "pid": os.getpid()},
                              sync=False)
    except (OSError, ValueError) as exc:
        log.warning("cannot mark %s as being pushed: %s", path.name, exc)
    try:
        try:
            start_pusher(config, status, path)
        except Exception as exc:  # push-ahead only ever saves time; the own file is what counts
            log.warning("push-ahead not started: %s", exc)
        return push_file(repo, path)
    finally:
        fastpath.remove_file(marker)


def start_pusher(config: Config, status: str, own: Path) -> bool:
    """Start the background pusher unless one serves this status directory or nothing else waits."""
    others = [n for n in ready_files(own.parent) if n != own.name and not os.path.exists(os.path.join(status, n))]
    if not others or fastpath.holder_alive(status, fastpath.PUSH_LOCK_FILE, fastpath.PUSH_STARTING_FILE):
        return False
    datadir = os.getcwd()
    with open(os.path.join(status, fastpath.PUSH_STARTING_FILE), "w"):  # a hint for seconds: not synced
        pass  # lets the next wal-push see this pusher while its interpreter starts
    return _spawn(["walkeeper.pusher", status, datadir, config.source or "", config.repo, own.name], datadir,
                  os.path.join(status, "push.log"))


# glibc returns each freed 16 MiB buffer to the kernel (mmap below 32 MiB, trim above 128 KiB), so a
# long-running helper pays ~4,000 page faults per segment and buffer: measured, 0.7-0.9 s of system
# time per 30 segments in the pusher, 0.2-0.4 s with these settings (same peak RSS).
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 128 * 1024 * 1024
LOG_MAX = 1024 * 1024


def _spawn(module_args: list[str], cwd: str, log_path: str) -> bool:
    """Start ``python -m MODULE ARGS`` detached from the calling process (its own session, no stdin).

    A fresh interpreter rather than a fork of this one: forking saved ~0.1 s of CPU per helper
    (measured), not worth a helper that ``ps`` shows as "wal-fetch" and that shares the caller's sockets.
    """
    with contextlib.suppress(OSError):
        if os.stat(log_path).st_size > LOG_MAX:
            os.replace(log_path, log_path + ".1")  # keep one older log: each helper appends a few lines
    log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    with log_file:
        subprocess.Popen(
            [sys.executable, "-m", *module_args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=log_file, start_new_session=True, close_fds=True,
            env={"MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD),
                 **os.environ},
        )
    return True


def log_helper_stopped(log: logging.Logger) -> None:
    """A helper's last log line; benchmarks/wal_bench.py reads the peak RSS and CPU from it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    log.info("stopped (peak RSS %d MiB, CPU %.2f s)", usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime)


def outside_data_directory(path: str, datadir: str, setting: str) -> None:
    """Refuse state inside the data directory: base backups, pg_rewind and WAL recycling would see it."""
    real, data = os.path.realpath(path), os.path.realpath(datadir)
    if os.path.exists(os.path.join(data, "PG_VERSION")) and (real == data or real.startswith(data + os.sep)):
        raise PermissionError(f"{setting} {path} is inside the data directory {data}; choose a directory outside it")


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


def fetch_file(repo: Repository, name_text: str, dest: Path, *, gap_wait: float = 0.0) -> FetchResult:
    """The body of restore_command: fetch, verify, place (``gap_wait``: see Repository.fetch_wal)."""
    name = parse_wal_name(name_text)
    data = repo.fetch_wal(name, gap_wait=gap_wait)
    write_file_atomically(dest, data)
    return FetchResult(name.name, len(data))


def wal_fetch(config: Config, name: str, dest: str) -> FetchResult:
    result = fetch_file(open_repository(config), name, Path(dest), gap_wait=config.restore.gap_wait)
    if config.restore.prefetch > 0:
        try:
            start_prefetch(config, name)
        except Exception as exc:  # prefetch only ever saves time; the segment is in place already
            log.warning("prefetch not started: %s", exc)
    return result


# -- prefetch ----------------------------------------------------------------------------------------------


def recovering(datadir: str) -> bool:
    return any(os.path.exists(os.path.join(datadir, f)) for f in ("recovery.signal", "standby.signal"))


def start_prefetch(config: Config, name: str) -> bool:
    """Tell the prefetcher where recovery is, and start it unless one already serves this spool."""
    datadir = os.getcwd()
    if not fastpath.is_segment_name(name) or not recovering(datadir):
        return False
    if config.restore.spool_dir:
        outside_data_directory(config.restore.spool_dir, datadir, "[restore] spool_dir")
    spool = fastpath.spool_dir(config.restore.spool_dir, config.repo, datadir)
    fastpath.write_record(os.path.join(spool, fastpath.REQUEST_FILE),  # a hint to the live prefetcher: not synced
                          {"v": fastpath.RECORD_VERSION, "name": name, "served": 1}, sync=False)
    if prefetcher_running(spool):
        return False
    with open(os.path.join(spool, fastpath.STARTING_FILE), "w"):  # a hint for seconds: not synced
        pass  # lets the next wal-fetch wait for this prefetcher while its interpreter starts
    return _spawn(["walkeeper.prefetch", spool, datadir, config.source or "", config.repo], datadir,
                  os.path.join(spool, "prefetch.log"))


def prefetcher_running(spool: str) -> bool:
    fd = os.open(os.path.join(spool, fastpath.LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    return fastpath.prefetcher_alive(spool)

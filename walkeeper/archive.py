"""wal-push and wal-fetch: PostgreSQL's archive_command and restore_command contract.

archive_command: exit 0 only once the file is durably stored; identical re-push is success;
different content is refused. restore_command: exit 0 only once the whole verified file is at
the destination; "not in the archive" is the only quiet failure (see errors.exit_code).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from walkeeper import fastpath
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
    repo = open_repository(config)
    wal_path = Path(path)
    if config.archive.push_ahead > 0 and (wal_path.parent / "archive_status").is_dir():
        return push_with_ahead(config, repo, wal_path)
    return push_file(repo, wal_path)


# -- push-ahead ------------------------------------------------------------------------------------------
# One wal-push call also pushes the other segments PostgreSQL has marked .ready, in parallel, and
# records each success (after the durable store) in the status directory. PostgreSQL's own later
# call for such a segment is answered by walkeeper.fastpath from that record.


def ready_files(pg_wal: Path) -> list[str]:
    """WAL files waiting for archive_command, in the order PostgreSQL archives them (history first)."""
    try:
        names = [n[:-6] for n in os.listdir(pg_wal / "archive_status") if n.endswith(".ready")]
    except OSError:
        return []
    names = [n for n in names if fastpath.WAL_NAME_RE.match(n)]
    return sorted(names, key=lambda n: (not n.endswith(".history"), n))


def push_with_ahead(config: Config, repo: Repository, path: Path) -> PushResult:
    pg_wal = path.parent
    if not [name for name in ready_files(pg_wal) if name != path.name]:
        return push_file(repo, path)  # nothing else waiting (the usual case on a quiet server)
    try:
        if config.archive.status_dir:
            outside_data_directory(config.archive.status_dir, os.getcwd(), "[archive] status_dir")
        status = fastpath.status_dir(config.archive.status_dir, config.repo, os.getcwd())
    except OSError as exc:
        log.warning("push-ahead disabled: status directory unusable (%s)", exc)
        return push_file(repo, path)
    pending = []
    for name in ready_files(pg_wal):
        if len(pending) >= config.archive.push_ahead:
            break
        if name == path.name or _has_valid_record(status, pg_wal / name, config.repo):
            continue
        pending.append(name)
    _prune_status(status, pg_wal)
    if not pending:
        return push_file(repo, path)
    with ThreadPoolExecutor(max_workers=max(1, config.archive.workers), thread_name_prefix="push") as pool:
        own = pool.submit(push_file, repo, path)
        ahead = [pool.submit(_push_ahead_one, repo, pg_wal / name, status, config.repo) for name in pending]
        result = own.result()  # raises for PostgreSQL's own segment; the pool still finishes the others
        done = sum(1 for f in ahead if f.result())
    log.info("pushed %d of %d segments ahead", done, len(pending))
    return result


def outside_data_directory(path: str, datadir: str, setting: str) -> None:
    """Refuse state inside the data directory: base backups, pg_rewind and WAL recycling would see it."""
    real, data = os.path.realpath(path), os.path.realpath(datadir)
    if os.path.exists(os.path.join(data, "PG_VERSION")) and (real == data or real.startswith(data + os.sep)):
        raise PermissionError(f"{setting} {path} is inside the data directory {data}; choose a directory outside it")


def _has_valid_record(status: str, file: Path, repo_url: str) -> bool:
    try:
        st = os.stat(file)
    except OSError:
        return False
    return fastpath.record_matches(fastpath.read_json(os.path.join(status, file.name)), file.name, repo_url, st)


def _prune_status(status: str, pg_wal: Path) -> None:
    """Forget records of files PostgreSQL has removed or recycled (their segment is archived)."""
    try:
        entries = os.listdir(status)
    except OSError:
        return
    for name in entries:
        if name.startswith(fastpath.TEMP_PREFIX) or not (pg_wal / name).exists():
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(status, name))


def _push_ahead_one(repo: Repository, file: Path, status: str, repo_url: str) -> bool:
    """Push one .ready file; record it only once it is durably stored and the file did not change."""
    try:
        before = os.stat(file)
        result = push_file(repo, file)
        delay = os.environ.get("WALKEEPER_TEST_PUSH_AHEAD_DELAY")  # fault-injection tests only
        if delay:
            time.sleep(float(delay))
        after = os.stat(file)
    except Exception as exc:  # PostgreSQL's own call will push it again and report the error
        log.warning("push-ahead of %s failed (PostgreSQL's own call will retry it): %s", file.name, exc)
        return False
    if fastpath.identity(before) != fastpath.identity(after):
        log.warning("%s changed while it was pushed ahead; not recording it", file.name)
        return False
    record = {"v": fastpath.RECORD_VERSION, "name": file.name, "repo": repo_url, "sha256": result.sha256,
              **fastpath.identity(after)}
    try:
        fastpath.write_json_atomically(os.path.join(status, file.name), record)
    except OSError as exc:
        log.warning("cannot record %s as pushed ahead: %s", file.name, exc)
        return False
    return True


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
    result = fetch_file(open_repository(config), name, Path(dest))
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
    if not fastpath.SEGMENT_RE.match(name) or not recovering(datadir):
        return False
    if config.restore.spool_dir:
        outside_data_directory(config.restore.spool_dir, datadir, "[restore] spool_dir")
    spool = fastpath.spool_dir(config.restore.spool_dir, config.repo, datadir)
    fastpath.write_json_atomically(os.path.join(spool, fastpath.REQUEST_FILE),
                                   {"v": fastpath.RECORD_VERSION, "name": name, "served": True})
    if prefetcher_running(spool):
        return False
    with open(os.path.join(spool, fastpath.STARTING_FILE), "w"):
        pass  # lets the next wal-fetch wait for this prefetcher while its interpreter starts
    log_file = open(os.path.join(spool, "prefetch.log"), "ab")  # noqa: SIM115 - handed to the child
    with log_file:
        subprocess.Popen(
            [sys.executable, "-m", "walkeeper.prefetch", spool, datadir, config.source or "", config.repo],
            cwd=datadir, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True, close_fds=True,
        )
    return True


def prefetcher_running(spool: str) -> bool:
    fd = os.open(os.path.join(spool, fastpath.LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    return fastpath.prefetcher_alive(spool)

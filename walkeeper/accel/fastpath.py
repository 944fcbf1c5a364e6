"""Standard-library-only fast paths of wal-push and wal-fetch (records and locks: state.py; settings: settings.py).

Imported by the console entry point before anything heavy: it must never import click, zstandard,
cryptography, boto3 or any other walkeeper module that does (tests/postgres/test_speed.py checks this).

wal-push fast path: the background pusher (walkeeper.commands.pusher) pushed this file ahead and, *after* the
object was durably stored, wrote a status record naming the pg_wal file's identity (device, inode,
size, mtime_ns, ctime_ns) and its SHA-256. The fast path answers 0 only if the file PostgreSQL names
now has exactly that identity. ctime cannot be set from user space and changes on every write, chmod,
utime and rename, so an unchanged identity means the bytes are the ones that were hashed and stored;
re-hashing 16 MiB would cost ~15 ms here, as much as the interpreter start itself. While the live
pusher is still pushing the file (NAME.pushing), the fast path waits for its record.

wal-fetch fast path: the prefetcher wrote a verified segment into the spool and then a meta record
with the same identity of the spool file. The fast path serves it only when the name (and so the
timeline) is the requested one, the identity still matches, and the segment's page header belongs to
this name and to this data directory's database system (global/pg_control); anything else falls back
to the full path, which fetches directly from the repository.

Whenever anything is unexpected the fast path returns None and the full CLI runs: the fast paths may
only ever answer "yes, done"; every failure is reported by the full path.

Every import here is paid by every archive_command and restore_command call: json, re and
contextlib alone cost ~7 ms, as much again as the rest of the fast path, so records are
``key=value`` lines and names are checked by hand.
"""

from __future__ import annotations

import os
import sys
from _collections_abc import Callable, Iterator  # loaded by os; collections.abc would import collections (~1 ms)

from walkeeper.accel.settings import FastSettings, load_settings, parse_global_args
from walkeeper.accel.state import (
    META_SUFFIX,
    MISSING_SUFFIX,
    PUSH_LOCK_FILE,
    PUSHING_SUFFIX,
    RECORD_VERSION,
    REQUEST_FILE,
    boot_id,
    holder_alive,
    pg_control_sysid,
    prefetcher_alive,
    pushing_pid,
    read_record,
    record_matches,
    remove_file,
    segment_header_fits,
    spool_dir,
    status_dir,
    write_record,
)
from walkeeper.core.durable import write_file
from walkeeper.core.walformat import is_segment_name, is_wal_name


def _say(settings: FastSettings, command: str, message: str) -> None:
    """-v output of a fast path, prefixed like the CLI's: "walkeeper wal-push: ..."."""
    if settings.verbose:
        sys.stderr.write(f"walkeeper {command}: {message}\n")


# -- the fast paths ----------------------------------------------------------------------------------------


def try_wal_push(argv: list[str]) -> int | None:
    parsed = parse_global_args(argv, "wal-push")
    if parsed is None or len(parsed[3]) != 1:
        return None
    config, repo, verbose, (path,) = parsed
    settings = load_settings(config, repo, os.environ)
    settings.verbose = verbose
    name = os.path.basename(path)
    if settings.push_ahead <= 0 or not is_wal_name(name):
        return None
    status = status_dir(settings.status_dir, settings.repo, os.getcwd(), create=False)  # none: nothing pushed
    record_path = os.path.join(status, name)
    record = read_record(record_path)
    if record is None:
        record = wait_for_pusher(status, name, settings.wait_timeout)
        if record is None:
            return None
    st = os.stat(path)
    if not record_matches(record, name, settings.repo, st):
        _say(settings, "wal-push", f"{name}: push-ahead record does not match the file any more; pushing it again")
        return None
    # PostgreSQL marks the file .done when we return 0; a crash before that makes it call again,
    # and then the full path finds the identical object in the repository.
    remove_file(record_path)
    _say(settings, "wal-push", f"{name} was already pushed ahead (fast path)")
    return 0


def wait_for_pusher(status: str, name: str, timeout: float) -> dict[str, str] | None:
    """The record of ``name`` once the live pusher has stored it; None when it will not (full path then)."""
    if not holder_alive(status, PUSH_LOCK_FILE) or pushing_pid(status, name) is None:
        return None
    record_path = os.path.join(status, name)
    # Marker gone: done (the record is written before the marker goes) or failed. Pusher dead with the
    # file half done: the full path pushes it.
    return _poll_record(record_path, timeout, lambda: not os.path.exists(record_path + PUSHING_SUFFIX),
                        lambda: pushing_pid(status, name) is not None, reread_when_over=True)


def _poll_record(path: str, timeout: float, over: Callable[[], bool], alive: Callable[[], bool], *,
                 reread_when_over: bool) -> dict[str, str] | None:
    """Poll (every 3 ms) for the record a background helper writes at ``path``.

    None once ``timeout`` passes, or ``alive()`` (probed every 0.2 s) says the helper is gone; when
    ``over()`` says it will write nothing more, the record if it is there now (``reread_when_over``) or None.
    """
    import time

    deadline = time.monotonic() + timeout
    next_probe = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        time.sleep(0.003)
        record = read_record(path)
        if record is not None:
            return record
        if over():
            return read_record(path) if reread_when_over else None
        if time.monotonic() > next_probe:
            if not alive():
                return None
            next_probe = time.monotonic() + 0.2
    return None


def try_wal_fetch(argv: list[str]) -> int | None:
    parsed = parse_global_args(argv, "wal-fetch")
    if parsed is None or len(parsed[3]) != 2:
        return None
    config, repo, verbose, (name, dest) = parsed
    if not is_segment_name(name):
        return None
    settings = load_settings(config, repo, os.environ)
    settings.verbose = verbose
    if settings.prefetch <= 0:
        return None
    cwd = os.getcwd()
    if not any(os.path.exists(os.path.join(cwd, f)) for f in ("recovery.signal", "standby.signal")):
        return None  # prefetch serves recoveries only (the prefetcher stops when these files go)
    spool = spool_dir(settings.spool_dir, settings.fetch_repo, cwd, create=False)  # made by the full path
    source = os.path.join(spool, name)
    meta_path = source + META_SUFFIX
    request = os.path.join(spool, REQUEST_FILE)
    # Tell the prefetcher where recovery is (and that this one is not served yet, so it keeps or fetches it).
    # Not synced (here and below): a hint to the live prefetcher, rewritten by every call.
    write_record(request, {"v": RECORD_VERSION, "name": name, "served": 0}, sync=False)
    meta = read_record(meta_path)
    if meta is None:
        meta = wait_for_prefetcher(spool, name, settings.wait_timeout)
        if meta is None:
            return None
    try:
        fd = os.open(source, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        head = os.pread(fd, 64, 0)
        good = (record_matches(meta, name, settings.fetch_repo, st) and meta.get("boot_id") == boot_id()
                and segment_header_fits(name, head, st.st_size, pg_control_sysid(cwd)))
        if not good:
            # Corrupted, replaced or not ours: never serve it; the full path fetches directly.
            for stale in (source, meta_path):
                remove_file(stale)
            _say(settings, "wal-fetch", f"{name}: prefetched file failed verification; discarded, fetching directly")
            return None
        dest_abs = os.path.join(cwd, dest)
        if os.stat(os.path.dirname(dest_abs) or ".").st_dev == st.st_dev:
            try:
                os.rename(source, dest_abs)
            except FileNotFoundError:
                return None  # taken by a concurrent call: fetch directly
        else:
            _copy_into_place(fd, st.st_size, dest_abs)
            remove_file(source)
    finally:
        os.close(fd)
    remove_file(meta_path)
    write_record(request, {"v": RECORD_VERSION, "name": name, "served": 1}, sync=False)
    _say(settings, "wal-fetch", f"restored {name} from the prefetch spool (fast path)")
    return 0


def wait_for_prefetcher(spool: str, name: str, timeout: float) -> dict[str, str] | None:
    """The meta record of ``name`` once a live prefetcher has it; None when it cannot (full path then)."""
    miss_path = os.path.join(spool, name + MISSING_SUFFIX)
    if not prefetcher_alive(spool, starting=True):
        return None
    # NAME.missing: not in the archive (yet), or it failed: the full path answers.
    return _poll_record(os.path.join(spool, name + META_SUFFIX), timeout, lambda: os.path.exists(miss_path),
                        lambda: prefetcher_alive(spool, starting=True), reread_when_over=False)


def _copy_into_place(fd: int, size: int, dest: str) -> None:
    def chunks() -> Iterator[bytes]:
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(size - offset, 1 << 20), offset)
            if not chunk:
                raise OSError("short copy")
            offset += len(chunk)
            yield chunk

    # Not synced: PostgreSQL reads %p at once and durable_rename()s (fsyncs) what it keeps.
    write_file(dest, chunks(), sync=False)


def try_fast_path(argv: list[str]) -> int | None:
    """0 when a fast path completed the command; None to run the full CLI."""
    if os.environ.get("WALKEEPER_NO_FAST_PATH"):
        return None
    try:
        if "wal-push" in argv:
            return try_wal_push(argv)
        if "wal-fetch" in argv:
            return try_wal_fetch(argv)
    except Exception:  # any surprise: the full path decides, and reports
        return None
    return None

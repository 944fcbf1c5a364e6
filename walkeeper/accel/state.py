"""What the fast paths share with the detached helpers and the full paths: state directories, records, locks.

Standard library only, and nothing costly (no json, no re, no contextlib): every archive_command and
restore_command call imports this module before anything else (walkeeper/accel/fastpath.py says why).

- State lives outside every data directory, in private (0700) directories: one status directory (push-ahead
  records) and one spool (prefetched segments) per (repository, data directory).
- Records are ``key=value`` lines written atomically; a record names a file's identity (device, inode, size,
  mtime_ns, ctime_ns), so an unchanged identity means unchanged bytes.
- A helper (pusher, prefetcher) is alive while it holds its exclusive flock; NAME.pushing names the process
  pushing NAME now.
"""

# ruff: noqa: SIM105  - try/except/pass instead of contextlib.suppress (import cost)

from __future__ import annotations

import os
import stat as stat_mod
import struct

from walkeeper.core.durable import write_file
from walkeeper.core.errors import WalkeeperError
from walkeeper.core.walformat import check_first_page, is_segment_name

RECORD_VERSION = "2"  # key=value records; version 1 (JSON) records are ignored, so the full path answers
REQUEST_FILE = "request"
LOCK_FILE = "prefetch.lock"
STARTING_FILE = "prefetch.starting"  # written by the wal-fetch that spawns a prefetcher, removed by it
PUSH_LOCK_FILE = "push.lock"  # held by the live background pusher
PUSH_STARTING_FILE = "push.starting"  # written by the wal-push that spawns a pusher, removed by it
STARTING_GRACE = 10.0
META_SUFFIX = ".meta"
MISSING_SUFFIX = ".missing"  # the prefetcher could not get this one: the full path must answer
PUSHING_SUFFIX = ".pushing"  # a process (pid inside) is pushing this file now


def sha256_hex(data: bytes) -> str:
    """SHA-256 without importing hashlib (whose OpenSSL binding alone costs ~2 ms per call)."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # Python 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found,no-redef]  # Python 3.12+
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment]
    return sha256(data).hexdigest()


# -- where state lives ---------------------------------------------------------------------------------


def state_root(*, create: bool = True) -> str:
    """``/var/tmp/walkeeper-<uid>``: private (0700, ours, not a link), on disk, outside every data directory.

    /var/tmp rather than /tmp: the spool holds up to spool_max_mb of WAL and /tmp is often a tmpfs.
    Outside the data directory so that base backups, pg_rewind and pg_wal cleanup never see it.
    """
    root = os.path.join(os.environ.get("WALKEEPER_STATE_ROOT", "/var/tmp"), f"walkeeper-{os.getuid()}")
    return ensure_private_dir(root, create=create)


def ensure_private_dir(path: str, *, create: bool = True) -> str:
    """``path``, a private directory; FileNotFoundError when it does not exist and ``create`` is false."""
    if create:
        try:
            os.makedirs(path, mode=0o700)
        except FileExistsError:
            pass
    st = os.lstat(path)
    if not stat_mod.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} must be a directory owned by uid {os.getuid()} with mode 0700")
    return path


def instance_key(repo: str, datadir: str) -> str:
    """One status directory / spool per (repository, data directory): records never cross either."""
    return sha256_hex(f"{repo}\0{os.path.realpath(datadir)}".encode())[:16]


def status_dir(configured: str | None, repo: str, datadir: str, *, create: bool = True) -> str:
    if configured:
        return ensure_private_dir(os.path.join(configured, instance_key(repo, datadir)), create=create)
    return ensure_private_dir(os.path.join(state_root(create=create), f"archive-{instance_key(repo, datadir)}"),
                              create=create)


def lag_dir(configured: str | None, repo: str, *, create: bool = True) -> str:
    """The backlog of repository ``repo`` (walkeeper.repo.lagbook), beside the status directories: one per
    repository URL, whatever the data directory (one repository holds one cluster), so status finds it."""
    base = configured or state_root(create=create)
    return ensure_private_dir(os.path.join(base, f"lag-{sha256_hex(repo.encode())[:16]}"), create=create)


def spool_dir(configured: str | None, repo: str, datadir: str, *, create: bool = True) -> str:
    if configured:
        return ensure_private_dir(os.path.join(configured, instance_key(repo, datadir)), create=create)
    return ensure_private_dir(os.path.join(state_root(create=create), f"spool-{instance_key(repo, datadir)}"),
                              create=create)


# -- file identity records ---------------------------------------------------------------------------------


def identity(st: os.stat_result) -> dict[str, str]:
    return {"dev": str(st.st_dev), "ino": str(st.st_ino), "size": str(st.st_size),
            "mtime_ns": str(st.st_mtime_ns), "ctime_ns": str(st.st_ctime_ns)}


def write_record(path: str, doc: dict[str, object], *, sync: bool = True) -> None:
    """Write ``key=value`` lines atomically (readers see all or nothing); durable unless ``sync`` is False."""
    lines = []
    for key, value in doc.items():
        text = str(value)
        if "\n" in text or "=" in key or "\n" in key:
            raise ValueError(f"record field {key!r} must fit on one line (and its name hold no '=')")
        lines.append(f"{key}={text}\n")
    write_file(path, "".join(lines).encode(), sync=sync)


def read_record(path: str) -> dict[str, str] | None:
    """A record of this version, or None (missing, half-written by a crash, or of another version)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return None
    doc = {}
    for line in text.split("\n"):
        if line:
            key, sep, value = line.partition("=")
            if not sep:
                return None
            doc[key] = value
    return doc if doc.get("v") == RECORD_VERSION else None


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def boot_id() -> str:
    """This boot's id: spool files written before a crash (maybe never flushed) are never served after it."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def record_matches(record: dict[str, str] | None, name: str, repo: str, st: os.stat_result) -> bool:
    if record is None or record.get("name") != name or record.get("repo") != repo:
        return False
    return all(record.get(k) == v for k, v in identity(st).items())


# -- what a spooled segment must be to be served -----------------------------------------------------------


def pg_control_sysid(datadir: str) -> int | None:
    try:
        with open(os.path.join(datadir, "global", "pg_control"), "rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    return struct.unpack("<Q", head)[0] if len(head) == 8 else None


def segment_header_fits(name: str, head: bytes, size: int, sysid: int | None) -> bool:
    """The first page header belongs to segment ``name`` of system ``sysid`` and the file is whole:
    the full path's checks (walkeeper.core.walformat.check_first_page) plus the system identifier."""
    if sysid is None or not is_segment_name(name):
        return False
    try:
        return check_first_page(name, head, size)[4] == sysid
    except WalkeeperError:
        return False


# -- liveness of the helpers ------------------------------------------------------------------------------


def pushing_pid(status: str, name: str) -> int | None:
    """The pid in NAME.pushing if that process is alive: someone is pushing ``name`` right now."""
    marker = read_record(os.path.join(status, name + PUSHING_SUFFIX))
    if marker is None:
        return None
    try:
        pid = int(marker.get("pid", ""))
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return None
    except PermissionError:
        pass  # a live process of another user: alive all the same
    return pid


def holder_alive(directory: str, lock_file: str, starting_file: str | None = None) -> bool:
    """True while a background process (prefetcher, pusher) holds its lock in ``directory``.

    Probing with a shared lock never takes it from one. With ``starting_file``, also while one was
    spawned less than STARTING_GRACE seconds ago and has not taken the lock yet (its interpreter is
    still starting).
    """
    import fcntl

    if starting_file:
        try:
            import time

            if time.time() - os.stat(os.path.join(directory, starting_file)).st_mtime < STARTING_GRACE:
                return True
        except FileNotFoundError:
            pass
    try:
        fd = os.open(os.path.join(directory, lock_file), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def take_exclusive_lock(directory: str, lock_file: str) -> int | None:
    """The descriptor holding the exclusive flock that makes a helper the only one for ``directory``.

    None when another helper holds it. The descriptor stays open for the helper's lifetime.
    """
    import fcntl
    import time

    fd = os.open(os.path.join(directory, lock_file), os.O_RDWR | os.O_CREAT, 0o600)
    for _ in range(50):  # a call probing with holder_alive holds it for microseconds
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            time.sleep(0.01)
    os.close(fd)
    return None


def prefetcher_alive(spool: str, *, starting: bool = False) -> bool:
    return holder_alive(spool, LOCK_FILE, STARTING_FILE if starting else None)

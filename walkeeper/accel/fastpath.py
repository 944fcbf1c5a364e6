"""Standard-library-only fast paths of wal-push and wal-fetch, and the state they share with the full paths.

Imported by the console entry point before anything heavy: it must never import click, zstandard,
cryptography, boto3 or any other walkeeper module that does (tests/test_speed.py checks this).

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

# ruff: noqa: SIM105  - try/except/pass instead of contextlib.suppress: see above (import cost)

from __future__ import annotations

import os
import stat as stat_mod
import struct
import sys
from _collections_abc import Callable, Iterator  # loaded by os; collections.abc would import collections (~1 ms)

from walkeeper.core.configbase import (
    CONFIG_ENV,
    PREFETCH,
    PUSH_AHEAD,
    REPO_ENV,
    config_dir,
    env_name,
    push_identity,
    repositories_identity,
    resolve_path,
)
from walkeeper.core.durable import write_file
from walkeeper.core.errors import WalkeeperError
from walkeeper.core.walformat import check_first_page, is_segment_name, is_wal_name

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
_GLOBAL_FLAGS = {"-v", "-vv", "-vvv", "--verbose"}


# -- settings (the few the fast paths need), read exactly as walkeeper.core.config reads them ---------------


class FastSettings:
    def __init__(self) -> None:
        self.repo = ""  # what wal-push stores into (configbase.push_identity): keys status dirs and records
        self.fetch_repo = ""  # what wal-fetch reads, in order (configbase.repositories_identity): keys the spool
        self.push_ahead = PUSH_AHEAD
        self.status_dir: str | None = None
        self.prefetch = PREFETCH
        self.spool_dir: str | None = None
        self.verbose = 0
        self.wait_timeout = 30.0  # longest wait for a segment the prefetcher is fetching


def _coerce_int(value: object) -> int:
    if type(value) is not int:  # walkeeper.core.config refuses anything else: let the full path say so
        raise ValueError(value)
    return value


def parse_global_args(argv: list[str], command: str) -> tuple[str | None, str | None, int, list[str]] | None:
    """(config path, repo, verbosity, command arguments) for ``walkeeper [opts] COMMAND ARGS``, or None."""
    config = repo = None
    verbose = 0
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == command:
            return config, repo, verbose, argv[i + 1:]
        if arg in _GLOBAL_FLAGS:
            verbose += arg.count("v") if arg.startswith("-v") else 1
        elif arg in ("--config", "--repo") and i + 1 < len(argv):
            if arg == "--config":
                config = argv[i + 1]
            else:
                repo = argv[i + 1]
            i += 1
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("--repo="):
            repo = arg.split("=", 1)[1]
        else:
            return None
        i += 1
    return None


def _sha256_hex(data: bytes) -> str:
    """SHA-256 without importing hashlib (whose OpenSSL binding alone costs ~2 ms per call)."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # Python 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found,no-redef]  # Python 3.12+
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment]
    return sha256(data).hexdigest()


def _read_config_file(path: str) -> dict[str, str]:
    """The few fast-path values of a config file, through a cache keyed on the file's identity.

    tomllib costs ~7 ms to import; the cache (a record in the private state root) is rewritten
    whenever the file's inode, size, mtime or ctime change. Relative paths are resolved as
    walkeeper.core.config resolves them (walkeeper.core.configbase: against the real file's directory).
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    cache = os.path.join(state_root(), f"config-{_sha256_hex(real.encode())[:16]}")
    cached = read_record(cache)
    if cached and cached.get("path") == real and cached.get("ident") == ident:
        return cached
    import tomllib

    with open(real, "rb") as handle:
        data = tomllib.load(handle)
    base = config_dir(real)
    archive = data.get("archive", {})
    restore = data.get("restore", {})
    repo = data.get("repo", "")
    if not isinstance(repo, str):
        raise ValueError("repo")
    values: dict[str, str] = {"repo": repo}
    tables = data.get("repository")
    if tables is not None:  # [[repository]]: name=URL pairs, tab-separated (checked fully by the full path)
        if repo or not isinstance(tables, list) or not tables:
            raise ValueError("repository")
        pairs = []
        for table in tables:
            if not isinstance(table, dict):
                raise ValueError("repository")
            name, url = table.get("name"), table.get("repo")
            if not isinstance(name, str) or not isinstance(url, str) or not name or not url or any(
                    c in name + url for c in "\t\n") or "=" in name:
                raise ValueError("repository")
            pairs.append(f"{name}={url}")
        values["repositories"] = "\t".join(pairs)
    if "require" in archive:
        values["require"] = _require(archive["require"])
    if "push_ahead" in archive:
        values["push_ahead"] = str(_coerce_int(archive["push_ahead"]))
    if "prefetch" in restore:
        values["prefetch"] = str(_coerce_int(restore["prefetch"]))
    for table, key in ((archive, "status_dir"), (restore, "spool_dir")):
        value = table.get(key)
        if value:
            values[key] = resolve_path(value, base)
    try:
        # Synced: a torn cache could read as a valid record that lacks a setting (written once per change).
        write_record(cache, {"v": RECORD_VERSION, "path": real, "ident": ident, **values})
    except (OSError, ValueError):
        pass  # not cacheable (a value with a newline): read the file next time too
    return values


def load_settings(config_path: str | None, repo_flag: str | None, env: dict[str, str] | os._Environ[str]
                  ) -> FastSettings:
    """The fast-path settings; raises on anything unusual (the caller then takes the full path)."""
    s = FastSettings()
    path = config_path or env.get(CONFIG_ENV) or None
    values: dict[str, str] = {}
    if path:
        values = _read_config_file(path)
        s.push_ahead = int(values.get("push_ahead", s.push_ahead))
        s.prefetch = int(values.get("prefetch", s.prefetch))
        s.status_dir = values.get("status_dir")
        s.spool_dir = values.get("spool_dir")
    for attr, section, key in (("push_ahead", "archive", "push_ahead"), ("prefetch", "restore", "prefetch")):
        if env_name(section, key) in env:
            setattr(s, attr, int(env[env_name(section, key)]))
    for attr, section in (("status_dir", "archive"), ("spool_dir", "restore")):
        if env_name(section, attr) in env:
            setattr(s, attr, env[env_name(section, attr)] or None)
    require = _require(env[env_name("archive", "require")] if env_name("archive", "require") in env
                       else values.get("require", "all"))
    pairs = [(p.split("=", 1)[0], p.split("=", 1)[1]) for p in values["repositories"].split("\t")] \
        if values.get("repositories") else [("default", values.get("repo", ""))]
    # --repo (else WALKEEPER_REPO), as walkeeper.core.config.load_config reads it: a configured name selects
    # that repository (wal-push stores into it alone; wal-fetch reads it first), anything else is a URL.
    choice = repo_flag or env.get(REPO_ENV) or None
    names = [p[0] for p in pairs]
    if choice and values.get("repositories") and choice in names:
        chosen = pairs[names.index(choice)]
        push, fetch = [chosen], [chosen, *(p for p in pairs if p != chosen)]
    else:
        push = fetch = [("default", choice)] if choice else pairs
    if not all(url for _name, url in push):
        raise ValueError("no repository")
    s.repo = push_identity(push, require)
    s.fetch_repo = repositories_identity(fetch)
    return s


def _require(value: object) -> str:
    if value not in ("all", "any"):  # walkeeper.core.config refuses it: let the full path say so
        raise ValueError("require")
    return str(value)


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
    return _sha256_hex(f"{repo}\0{os.path.realpath(datadir)}".encode())[:16]


def status_dir(configured: str | None, repo: str, datadir: str, *, create: bool = True) -> str:
    if configured:
        return ensure_private_dir(os.path.join(configured, instance_key(repo, datadir)), create=create)
    return ensure_private_dir(os.path.join(state_root(create=create), f"archive-{instance_key(repo, datadir)}"),
                              create=create)


def lag_dir(configured: str | None, repo: str, *, create: bool = True) -> str:
    """The backlog of repository ``repo`` (walkeeper.repo.lagbook), beside the status directories: one per
    repository URL, whatever the data directory (one repository holds one cluster), so status finds it."""
    base = configured or state_root(create=create)
    return ensure_private_dir(os.path.join(base, f"lag-{_sha256_hex(repo.encode())[:16]}"), create=create)


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


# -- WAL checks -------------------------------------------------------------------------------------------


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

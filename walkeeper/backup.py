"""Base backups: pg_basebackup's tar streamed through the codec into the repository; restore.

Backup: ``pg_basebackup -D - -Ft`` writes the one tar of a cluster without tablespaces to stdout;
we pass it through a streaming tar reader (to pick ``backup_label``, ``backup_manifest`` and
``global/pg_control`` out of it on the way) into the encoder and the storage, in chunks: memory
stays bounded whatever the size of the database. With tablespaces pg_basebackup cannot stream,
so it writes its tars into a temporary directory which is then stored tar by tar.

The start LSN, timeline and checkpoint come from ``backup_label``, the stop LSN and timeline from
the manifest's ``WAL-Ranges`` (pg_basebackup's own "write-ahead log end point" line as a
fallback), and the system identifier from ``global/pg_control`` itself: all from the backup
rather than from a separate connection that could reach another server.

Restore: each object streams through the decoder into a safe tar extractor (no absolute paths,
no ``..``, no links that leave the target, regular files/directories/symlinks only).
``global/pg_control`` is written last, after every checksum was verified and every other file and
directory is on disk (fsync; files are synced in a background thread while the next ones are
decoded): a directory left behind by a killed restore or a power loss has no pg_control and
PostgreSQL refuses to start on it. On an error
the directory is removed (or emptied, if it existed before).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from walkeeper import __version__
from walkeeper.codec import Decoder, Encoder
from walkeeper.core.chronology import clock_off, clock_skew, describe_skew
from walkeeper.core.config import Config
from walkeeper.core.durable import TreeSync, fsync_dir, write_file
from walkeeper.core.errors import (
    AlreadyExists,
    ConfigError,
    ForeignClusterError,
    IntegrityError,
    NotFound,
    PostgresError,
    RefusedError,
    StorageError,
    WalkeeperError,
    running_as,
)
from walkeeper.core.units import human_bytes, plural
from walkeeper.core.wal import format_lsn, parse_lsn, parse_wal_name, segment_of_lsn
from walkeeper.repo.catalog import BACKUP_META, BACKUP_PREFIX, BackupMeta, BackupObject, Catalog, backup_key
from walkeeper.repo.repository import Repository, open_repository, wal_key
from walkeeper.repo.writers import Reservation, confirm_published, sweep_leftovers

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
PG_CONTROL = "global/pg_control"
CAPTURED = {"backup_label", "backup_manifest", PG_CONTROL, "tablespace_map", "PG_VERSION"}
MAX_CAPTURE = 256 * 1024 * 1024


# -- PostgreSQL tools ----------------------------------------------------------------------------

def pg_tool(config: Config, name: str) -> str:
    """Absolute path of a PostgreSQL client program: [backup] pg_bin_dir, PATH, Debian's layout."""
    if config.backup.pg_bin_dir:
        path = Path(config.backup.pg_bin_dir) / name
        if not os.access(path, os.X_OK):
            raise ConfigError(f"[backup] pg_bin_dir: {path} is not an executable")
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if candidates:
        return str(candidates[-1])
    raise PostgresError(f"{name} not found", hint="install the PostgreSQL client or set [backup] pg_bin_dir")


@dataclass(frozen=True)
class ConnOptions:
    """libpq connection options; anything unset comes from PG* variables and .pgpass as usual."""

    host: str | None = None
    port: str | None = None
    user: str | None = None
    dbname: str | None = None  # a database name or a conninfo string / URI

    def args(self) -> list[str]:
        out = []
        for flag, value in (("-h", self.host), ("-p", self.port), ("-U", self.user), ("-d", self.dbname)):
            if value:
                out += [flag, value]
        return out


def psql(config: Config, conn: ConnOptions, sql: str, *, timeout: float = 120, connect_timeout: int = 10) -> str:
    """Run one statement with psql and return its unaligned output (fields split by '|').

    The one psql runner: every command that asks the server goes through it. A failure is one
    line (psql's own message spans several: "error: ...\n\tIs the server running ...").
    """
    cmd = [pg_tool(config, "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", *conn.args(), "-c", sql]
    if not conn.dbname:
        # psql defaults the database to the user name; a fresh cluster only has "postgres".
        cmd[-2:-2] = ["-d", os.environ.get("PGDATABASE", "postgres")]
    env = dict(os.environ)
    env.setdefault("PGCONNECT_TIMEOUT", str(connect_timeout))  # an unreachable host fails in seconds
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=env)
    except subprocess.TimeoutExpired:
        raise PostgresError(f"psql did not answer within {timeout:.0f}s") from None
    except OSError as exc:
        raise PostgresError(f"cannot run psql: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        raise PostgresError(f"psql failed: {one_line(proc.stderr) or f'exit {proc.returncode}'}")
    return proc.stdout.strip()


def one_line(text: str) -> str:
    """psql's (or any tool's) multi-line message as one line, without its "psql: error: " prefix."""
    parts = [part.strip() for part in text.splitlines() if part.strip()]
    if parts and parts[0].startswith("psql: error: "):
        parts[0] = parts[0][len("psql: error: "):]
    return "; ".join(parts)


@dataclass(frozen=True)
class ServerInfo:
    system_identifier: str
    version_num: int
    segment_size: int
    tablespaces: int
    size_estimate: int
    clock_skew: float = 0.0  # this host's clock minus the server's (chronology.clock_skew)


def server_info(config: Config, conn: ConnOptions) -> ServerInfo:
    before = time.time()
    row = psql(config, conn, (
        "select (select system_identifier from pg_control_system()), current_setting('server_version_num'), "
        "(select setting from pg_settings where name = 'wal_segment_size'), "
        "(select count(*) from pg_tablespace where spcname not in ('pg_default', 'pg_global')), "
        "(select sum(pg_database_size(oid)) from pg_database), extract(epoch from now())"
    ))
    after = time.time()
    try:
        sysid, version, segsize, spaces, size, server_now = row.split("|")
        return ServerInfo(sysid, int(version), int(segsize), int(spaces), int(size or 0),
                          round(clock_skew(before, float(server_now), after), 3))
    except ValueError:
        raise PostgresError(f"unexpected answer from the server: {row!r}") from None


def server_next_xid(config: Config, conn: ConnOptions, info: ServerInfo) -> int | None:
    """The server's next transaction id now (64-bit), asked right after pg_basebackup returned.

    It is its snapshot's xmax: no transaction at or above it had ended, so each one's commit comes
    after the end of the backup, and recovery from the backup can stop at it. The checkpoint's next
    xid cannot tell that of a transaction that committed while the backup ran. A failed question
    costs only precision (pitr falls back to the checkpoint's next xid), not the backup.
    """
    snapshot = "pg_current_snapshot()" if info.version_num >= 130000 else "txid_current_snapshot()"
    xmax = "pg_snapshot_xmax" if info.version_num >= 130000 else "txid_snapshot_xmax"
    try:
        row = psql(config, conn, f"select (select system_identifier from pg_control_system()), {xmax}({snapshot})")
        sysid, value = row.split("|")
        if sysid != info.system_identifier:
            raise PostgresError(f"the server is now database system {sysid}")
        return int(value)
    except (PostgresError, ValueError) as exc:
        log.warning("could not record the next transaction id after the backup (%s); pitr --target-xid will use "
                    "the checkpoint's", exc)
        return None


def warn_clock_skew(skew: float) -> None:
    """The host's clock dates the backup (id, times): say so when it disagrees with the server's."""
    if clock_off(skew):
        log.warning("this host's clock is %s the server's (select now()): the backup's id and times are "
                    "off by as much (recorded as clock_skew; 'latest' is chosen by WAL position, not by "
                    "time); fix the clock (NTP) on this host or the server", describe_skew(skew))


# -- progress -------------------------------------------------------------------------------------

class Progress:
    """bytes, rate and ETA on a terminal (stderr), nothing otherwise."""

    def __init__(self, what: str, total: int | None, *, enabled: bool | None = None) -> None:
        self.what = what
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.5:
            self._last = now
            self._show(now)

    def _show(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        text = f"\r{self.what}: {human_bytes(self.done)} at {human_bytes(rate)}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ~{human_bytes(self.total)} total, ETA {int((self.total - self.done) / rate)}s"
        sys.stderr.write(text.ljust(78))
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self._show(time.monotonic())
            sys.stderr.write("\n")


# -- reading a tar as it streams by --------------------------------------------------------------

def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _tar_number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        value = field[0] & 0x3F
        for byte in field[1:]:
            value = (value << 8) | byte
        return value
    text = field.replace(b"\0", b" ").strip()
    return int(text, 8) if text else 0


class TarScanner:
    """Follows a tar stream chunk by chunk without holding it: only header blocks and the small
    files named in CAPTURED are kept. Memory stays bounded whatever the size of a member (a
    table segment is up to 1 GiB), which Python's tarfile in stream mode does not guarantee here."""

    def __init__(self, captured: dict[str, bytes]) -> None:
        self.captured = captured
        self._header = bytearray()
        self._remaining = 0  # data + padding bytes of the current member still to pass
        self._data_left = 0  # data bytes of the current member still to pass
        self._capture: bytearray | None = None
        self._name = ""
        self.ended = False

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view and not self.ended:
            if self._remaining:
                take = min(len(view), self._remaining)
                if self._capture is not None and self._data_left:
                    self._capture += view[:min(take, self._data_left)]
                self._data_left = max(0, self._data_left - take)
                self._remaining -= take
                view = view[take:]
                if not self._remaining and self._capture is not None:
                    self.captured[self._name] = bytes(self._capture)
                    self._capture = None
                continue
            take = min(len(view), 512 - len(self._header))
            self._header += view[:take]
            view = view[take:]
            if len(self._header) == 512:
                self._parse_header(bytes(self._header))
                self._header.clear()

    def _parse_header(self, block: bytes) -> None:
        if block == bytes(512):
            self.ended = True
            return
        try:
            size = _tar_number(block[124:136])
        except ValueError:
            raise PostgresError("pg_basebackup's output is not a valid tar stream (bad header)") from None
        name = block[0:100].split(b"\0", 1)[0].decode(errors="replace")
        if block[257:262] == b"ustar":
            prefix = block[345:500].split(b"\0", 1)[0].decode(errors="replace")
            if prefix:
                name = f"{prefix}/{name}"
        typeflag = block[156:157]
        self._name = _member_name(name)
        self._data_left = size
        self._remaining = (size + 511) // 512 * 512
        regular = typeflag in (b"0", b"\0", b"")
        if regular and self._name in CAPTURED and size <= MAX_CAPTURE:
            self._capture = bytearray()
            if size == 0:
                self.captured[self._name] = b""
                self._capture = None


def scan_tar(read: Callable[[int], bytes], captured: dict[str, bytes]) -> Iterator[bytes]:
    """Yield the bytes of a tar stream unchanged, capturing the small files named in CAPTURED."""
    scanner = TarScanner(captured)
    while True:
        chunk = read(CHUNK)
        if not chunk:
            break
        scanner.feed(chunk)
        yield chunk
    if not scanner.ended:
        raise PostgresError("pg_basebackup's output ended before the end of the tar archive")


# -- parsing what the backup says about itself ---------------------------------------------------

@dataclass
class BackupFacts:
    start_lsn: int = 0
    checkpoint_lsn: int | None = None
    timeline: int = 0
    stop_lsn: int = 0
    stop_timeline: int = 0
    label: str = ""
    system_identifier: int | None = None
    checkpoint_next_xid: int | None = None
    tablespaces: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ControlFacts:
    """What walkeeper reads from a ``global/pg_control``."""

    system_identifier: int
    version: int  # pg_control_version: 1201 (12), 1300 (13-16), 1700 (17), 1800 (18)
    next_xid: int | None  # checkPointCopy.nextXid, 64-bit (epoch << 32 | xid); None when not readable


# ControlFileData (little-endian, natural alignment): system_identifier u64 @0, pg_control_version u32 @8,
# catalog_version_no u32 @12, state enum @16, time int64 @24, checkPoint u64 @32, checkPointCopy @40.
# CheckPoint: redo u64 @0, ThisTimeLineID u32 @8, PrevTimeLineID u32 @12, fullPageWrites bool @16
# (17+: wal_level int @20), nextXid FullTransactionId u64 @24 (PostgreSQL 12+; before: nextXidEpoch u32 @20,
# nextXid u32 @24). Checked against pg_controldata ("Latest checkpoint's NextXID: epoch:xid") on 15 and 18.
_CHECKPOINT_COPY = 40
_NEXT_XID = _CHECKPOINT_COPY + 24
_FULL_XID_VERSION = 1201  # PostgreSQL 12 made nextXid a FullTransactionId


def parse_pg_control(data: bytes) -> ControlFacts:
    """The system identifier and the checkpoint's next transaction id of a ``global/pg_control``.

    The next xid is None when the fields do not look like a checkpoint (an unknown layout): a wrong
    number would make ``pitr --target-xid`` choose a backup that cannot reach the target.
    """
    if len(data) < _NEXT_XID + 8:
        raise PostgresError(f"global/pg_control is too short ({len(data)} bytes)")
    sysid, version = struct.unpack_from("<QI", data)
    checkpoint, redo, tli = struct.unpack_from("<QQI", data, 32)
    if version >= _FULL_XID_VERSION:
        next_xid = struct.unpack_from("<Q", data, _NEXT_XID)[0]
    else:
        epoch, xid = struct.unpack_from("<II", data, _CHECKPOINT_COPY + 20)
        next_xid = epoch << 32 | xid
    plausible = 900 <= version < 10000 and 0 < redo <= checkpoint and tli >= 1 and next_xid & 0xFFFFFFFF >= 3
    return ControlFacts(sysid, version, next_xid if plausible else None)


def parse_backup_label(text: str, facts: BackupFacts) -> None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "START WAL LOCATION":
            facts.start_lsn = parse_lsn(value.split()[0])
        elif key == "CHECKPOINT LOCATION":
            facts.checkpoint_lsn = parse_lsn(value.split()[0])
        elif key == "START TIMELINE":
            facts.timeline = int(value)
        elif key == "LABEL":
            facts.label = value


def parse_manifest_wal_range(text: bytes, facts: BackupFacts) -> bool:
    try:
        ranges = json.loads(text).get("WAL-Ranges") or []
    except (ValueError, AttributeError):
        return False
    if not ranges:
        return False
    last = ranges[-1]
    facts.stop_timeline = int(last["Timeline"])
    facts.stop_lsn = max(parse_lsn(r["End-LSN"]) for r in ranges)
    return True


_END_POINT_RE = re.compile(r"write-ahead log end point: ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")


def collect_facts(captured: dict[str, bytes], stderr: str) -> BackupFacts:
    facts = BackupFacts()
    label = captured.get("backup_label")
    if label is None:
        raise PostgresError("the backup holds no backup_label: not a base backup taken by pg_basebackup")
    parse_backup_label(label.decode(errors="replace"), facts)
    if not facts.start_lsn or not facts.timeline:
        raise PostgresError("backup_label lacks START WAL LOCATION or START TIMELINE")
    manifest = captured.get("backup_manifest")
    if not (manifest and parse_manifest_wal_range(manifest, facts)):
        match = _END_POINT_RE.search(stderr)
        if not match:
            raise PostgresError("cannot tell where the backup ended: no manifest and no end point reported")
        facts.stop_lsn = parse_lsn(match.group(1))
        facts.stop_timeline = facts.timeline
    control = captured.get(PG_CONTROL)
    if control is None:
        raise PostgresError("the backup holds no global/pg_control")
    parsed = parse_pg_control(control)
    facts.system_identifier = parsed.system_identifier
    facts.checkpoint_next_xid = parsed.next_xid
    for line in captured.get("tablespace_map", b"").decode(errors="replace").splitlines():
        oid, _, location = line.partition(" ")
        if oid.isdigit():
            facts.tablespaces.append({"oid": oid, "location": location.replace("\\\n", "\n")})
    return facts


# -- taking a backup -----------------------------------------------------------------------------

@dataclass(frozen=True)
class BackupOptions:
    conn: ConnOptions = field(default_factory=ConnOptions)
    label: str | None = None
    fast_checkpoint: bool = False
    wal: str = "archive"  # or "include"
    progress: bool | None = None  # None: on a terminal only
    wal_wait_timeout: float | None = None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


class _Proc:
    """A PostgreSQL tool (pg_basebackup, pg_dump, pg_restore) with stderr collected in a thread (it
    must never block on a full pipe); ``stdin=True`` gives it a pipe to feed (pg_restore)."""

    def __init__(self, cmd: list[str], *, name: str = "pg_basebackup", stdin: bool = False,
                 stdout: bool = True) -> None:
        log.info("running %s", " ".join(cmd))
        self.name = name
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                         stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        except OSError as exc:
            raise PostgresError(f"cannot run {cmd[0]}: {exc.strerror}") from None
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            log.debug("%s: %s", self.name, line)

    def wait(self) -> None:
        code = self.proc.wait()
        self._thread.join(10)
        if code != 0:
            tail = "; ".join(line for line in list(self.lines)[-5:] if line)
            raise PostgresError(f"{self.name} failed (exit {code}): {tail}")

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _store_tar(repo: Repository, held: Reservation, tar_name: str, chunks: Iterable[bytes],
               progress: Progress) -> tuple[str, int, int, str]:
    key = backup_key(held.backup_id, tar_name)
    encoder = Encoder(repo.codec, key, extra={"backup": held.backup_id})

    def counted() -> Iterator[bytes]:
        for chunk in chunks:
            progress.add(len(chunk))
            yield chunk

    held.put(key, encoder.encode_chunks(counted()), overwrite=False)
    return key, encoder.plain_size, encoder.stored_size, encoder.sha256


def take_backup(config: Config, options: BackupOptions) -> BackupMeta:
    repo = open_repository(config)
    catalog = Catalog(repo)
    info = server_info(config, options.conn)
    meta = repo.meta()
    if meta is not None and meta.system_identifier not in (None, info.system_identifier):
        raise ForeignClusterError(
            f"the server is database system {info.system_identifier}, but repository {repo.storage.url} "
            f"belongs to system {meta.system_identifier}; refusing to store another cluster's backup",
            hint="give each cluster its own repository",
        )
    repo.ensure_identity(int(info.system_identifier), info.segment_size, info.version_num // 10000)
    if options.wal not in ("archive", "include"):
        raise ConfigError(f"--wal must be archive or include, not {options.wal!r}")
    warn_clock_skew(info.clock_skew)

    basebackup = pg_tool(config, "pg_basebackup")
    started = _utc_now()
    # The id is reserved (no-clobber marker) before anything else is written: see repo/writers.py.
    held = Reservation.take(catalog, started.strftime("%Y%m%dT%H%M%SZ"))
    backup_id = held.backup_id
    label = options.label or f"walkeeper {backup_id}"
    cmd = [basebackup, *options.conn.args(), "-Ft", "-v", "-l", label,
           "-X", "fetch" if options.wal == "include" else "none"]
    if options.fast_checkpoint:
        cmd += ["-c", "fast"]
    progress = Progress(f"backup {backup_id}", info.size_estimate or None, enabled=options.progress)
    captured: dict[str, bytes] = {}
    objects: list[BackupObject] = []
    stderr = ""
    try:
        held.start_heartbeat()
        _sweep_leftovers(repo, backup_id)
        if info.tablespaces == 0:
            proc = _Proc([*cmd, "-D", "-"])
            try:
                assert proc.proc.stdout is not None
                stdout = proc.proc.stdout

                def chunks() -> Iterator[bytes]:
                    yield from scan_tar(stdout.read, captured)
                    proc.wait()  # a failed pg_basebackup must fail the put, not store a short tar

                key, plain, stored, sha = _store_tar(repo, held, "base.tar", chunks(), progress)
                objects.append(BackupObject(key, "base.tar", None, None, plain, stored, sha))
            finally:
                proc.kill()
            stderr = proc.stderr
        else:
            print(f"the cluster has {plural(info.tablespaces, 'tablespace')}: pg_basebackup cannot stream them; "
                  "staging the tars in a temporary directory first", file=sys.stderr)
            with tempfile.TemporaryDirectory(prefix="walkeeper-backup-") as tmp:
                proc = _Proc([*cmd, "-D", tmp])
                proc.wait()
                stderr = proc.stderr
                tars = sorted(Path(tmp).glob("*.tar"), key=lambda p: (p.name != "base.tar", p.name))
                for path in tars:
                    with open(path, "rb") as handle:
                        key, plain, stored, sha = _store_tar(
                            repo, held, path.name, scan_tar(handle.read, captured if path.name == "base.tar"
                                                                 else {}), progress)
                    oid = None if path.name == "base.tar" else path.stem
                    objects.append(BackupObject(key, path.name, oid, None, plain, stored, sha))
                    path.unlink()
                manifest = Path(tmp) / "backup_manifest"
                if manifest.exists():
                    captured["backup_manifest"] = manifest.read_bytes()
        progress.finish()
        stopped = _utc_now()  # pg_basebackup has returned: the backup ended (WAL may still be in flight)
        stop_next_xid = server_next_xid(config, options.conn, info)
        facts = collect_facts(captured, stderr)
        if str(facts.system_identifier) != info.system_identifier:
            raise ForeignClusterError(
                f"the backup's pg_control says system {facts.system_identifier}, the server said "
                f"{info.system_identifier}")
        locations = {t["oid"]: t["location"] for t in facts.tablespaces}
        objects = [BackupObject(o.key, o.tar, o.tablespace_oid, locations.get(o.tablespace_oid or ""),
                                o.plain_size, o.stored_size, o.sha256) for o in objects]
        seg = info.segment_size
        start_wal = segment_of_lsn(facts.timeline, facts.start_lsn, seg)
        stop_wal = segment_of_lsn(facts.stop_timeline, max(facts.stop_lsn - 1, facts.start_lsn), seg)
        if options.wal == "archive":
            timeout = options.wal_wait_timeout if options.wal_wait_timeout is not None \
                else config.backup.wal_wait_timeout
            wait_for_wal(repo, stop_wal, timeout)
        backup = BackupMeta(
            id=backup_id, label=label, start_lsn=format_lsn(facts.start_lsn), stop_lsn=format_lsn(facts.stop_lsn),
            start_wal=start_wal, stop_wal=stop_wal, timeline=facts.timeline, stop_timeline=facts.stop_timeline,
            start_time=_iso(started), stop_time=_iso(stopped), pg_version=info.version_num,
            system_identifier=info.system_identifier, wal_segment_size=seg, wal_mode=options.wal,
            plain_size=sum(o.plain_size for o in objects), stored_size=sum(o.stored_size for o in objects),
            objects=objects, tablespaces=facts.tablespaces,
            checkpoint_lsn=format_lsn(facts.checkpoint_lsn) if facts.checkpoint_lsn is not None else None,
            checkpoint_next_xid=facts.checkpoint_next_xid, stop_next_xid=stop_next_xid,
            host=socket.gethostname(), walkeeper_version=__version__, clock_skew=info.clock_skew,
        )
        held.stop_heartbeat()  # no write into the backup's directory after this but its metadata
        with held.writing(backup_key(backup_id, BACKUP_META)):
            try:
                catalog.save_backup(backup)  # last: only now is the backup listed and usable
            except AlreadyExists:  # an earlier attempt whose answer was lost stored it already?
                if catalog.backup(backup_id) != backup:
                    raise
        confirm_published(catalog, backup, held)  # "done" only for a backup a restore can read
        return backup
    except BaseException:
        with contextlib.suppress(Exception):
            held.abandon()  # only what this backup wrote, then its marker
        raise


def _sweep_leftovers(repo: Repository, backup_id: str) -> None:
    """Temp objects, uploads and empty directories of dead backups go (expire does it too)."""
    try:
        gone = sweep_leftovers(repo.storage, list(repo.storage.list(BACKUP_PREFIX)), keep=backup_id)
    except WalkeeperError as exc:
        log.warning("could not remove leftovers of dead backups: %s", exc)
        return
    if gone:
        log.info("removed %d leftover(s) of dead backups (%s)", len(gone),
                 human_bytes(sum(item.size for item in gone)))


def wait_for_wal(repo: Repository, segment: str, timeout: float) -> None:
    """Wait until ``segment`` is in the repository: a backup is useless without its WAL."""
    key = wal_key(parse_wal_name(segment))
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        try:
            repo.storage.stat(key)
            return
        except NotFound:
            pass
        if time.monotonic() >= deadline:
            raise RefusedError(
                f"the backup's last WAL segment {segment} did not reach the repository within {timeout:.0f}s; "
                "the backup was not recorded (it would not be restorable)",
                hint="check archive_command and pg_stat_archiver on the server, raise [backup] wal_wait_timeout, "
                     "or use --wal include for a self-contained backup",
            )
        if not announced:
            log.warning("waiting for %s to be archived (up to %.0fs)", segment, timeout)
            announced = True
        time.sleep(0.5)


# -- restoring a backup --------------------------------------------------------------------------

class _StreamReader:
    """A file-like ``read(n)`` over an iterator of chunks (the decoder's plaintext)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = bytearray()
        self._done = False

    def read(self, size: int = -1) -> bytes:
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
    clean = _member_name(name)
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
                sync: TreeSync | None = None) -> int:
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
            name = _member_name(member.name).strip("/")
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
                   before_control: Callable[[Path], None] | None = None) -> RestoreResult:
    """Restore ``backup`` into ``pgdata`` (new or empty), verifying every checksum.

    Every file and directory is durable (fsync) before ``global/pg_control`` is written, and
    ``before_control(pgdata)`` (pitr's recovery settings) runs in between: after a crash or power
    loss at any point the directory is either complete or not startable.
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
    sync = TreeSync()
    writing = pgdata  # the target being written, for the error message
    try:
        for _obj, target in targets:
            writing = target
            existed = _prepare_target(target, "target directory")
            created.append((target, existed))
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
                reader = _StreamReader(counted(decoder.decode(handle.read)))
                files += extract_tar(reader.read, target, deferred if target == pgdata else {}, sync)
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
        undone = _undo_restore(created)
        if isinstance(exc, WalkeeperError | KeyboardInterrupt):
            raise
        if isinstance(exc, OSError):
            option = "--pgdata" if writing == pgdata else "--tablespace-map"
            needed = sum(o.plain_size for o, t in targets if t == writing)
            raise StorageError(f"{_restore_os_error(exc, writing, option, needed)}; {undone}") from None
        raise
    finally:
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


def restore(config: Config, backup_id: str | None, pgdata: str, tablespace_map: Iterable[str] = (),
            progress: bool | None = None) -> RestoreResult:
    repo = open_repository(config)
    backup = Catalog(repo).resolve(backup_id)
    return restore_backup(repo, backup, Path(pgdata), tablespace_map=tablespace_map, progress=progress)


"""PostgreSQL client helpers: tool discovery, connection options, the one psql runner, server facts."""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from walkeeper.core.chronology import clock_off, clock_skew, describe_skew
from walkeeper.core.config import Config
from walkeeper.core.errors import (
    ConfigError,
    PostgresError,
)

log = logging.getLogger(__name__)


# -- PostgreSQL tools ----------------------------------------------------------------------------

DEBIAN_BIN = "/usr/lib/postgresql/{major}/bin"
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def pg_tool(config: Config, name: str, server_major: int | None = None) -> str:
    """Absolute path of a PostgreSQL client program: [backup] pg_bin_dir, PATH, Debian's layout.

    With ``server_major`` (programs that refuse a newer server, pg_basebackup), the one of the
    server's own major when it can be found (Debian's /usr/lib/postgresql/<major>/bin), else the
    oldest newer one; an older one only in a clear error naming the mismatch (choose_tool).
    """
    if config.backup.pg_bin_dir:
        path = Path(config.backup.pg_bin_dir) / name
        if not os.access(path, os.X_OK):
            raise ConfigError(f"[backup] pg_bin_dir: {path} is not an executable")
        if server_major is not None:
            return choose_tool(name, server_major, [(tool_version(str(path))[0], str(path))], pinned=True)
        return str(path)
    if server_major is not None:
        own = Path(DEBIAN_BIN.format(major=server_major)) / name
        if os.access(own, os.X_OK):
            return str(own)
        found = [str(p) for p in [shutil.which(name)] if p]
        found += [str(p) for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}")]
        if found:
            return choose_tool(name, server_major, [(tool_version(p)[0], p) for p in dict.fromkeys(found)],
                               pinned=False)
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if candidates:
        return str(candidates[-1])
    raise PostgresError(f"{name} not found", hint="install the PostgreSQL client or set [backup] pg_bin_dir")


def choose_tool(name: str, server_major: int, found: Sequence[tuple[int, str]], *, pinned: bool) -> str:
    """Of the (major, path) programs found, the one to drive a server of ``server_major``.

    The same major first (what the server's own installation would run), else the oldest newer one
    (newer clients read older servers); an older one refuses the server ("incompatible server
    version"), so that is one line naming both majors and the setting to change instead.
    """
    if not found:
        raise PostgresError(f"{name} not found", hint="install the PostgreSQL client or set [backup] pg_bin_dir")
    for major, path in sorted(found, key=lambda item: item[0]):
        if major >= server_major:
            return path
    major, path = max(found)
    where = "[backup] pg_bin_dir: " if pinned else ""
    raise PostgresError(
        f"{where}{name} {major} ({path}) is older than the server (PostgreSQL {server_major}), which it refuses",
        hint=f"install PostgreSQL {server_major}'s client programs and set [backup] pg_bin_dir to their directory")


def tool_version(path: str) -> tuple[int, str]:
    """(major, full text) of a PostgreSQL client program, from ``--version``."""
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError as exc:
        raise PostgresError(f"cannot run {path}: {exc.strerror}") from None
    match = _VERSION_RE.search(text)
    if not match:
        raise PostgresError(f"cannot tell the version of {path} ({text!r})")
    return int(match.group(1)), text


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


class ToolProcess:
    """A PostgreSQL tool (pg_basebackup, pg_dump, pg_restore) with stderr collected in a thread (it
    must never block on a full pipe); ``stdin=True`` gives it a pipe to feed (pg_restore)."""

    def __init__(self, cmd: list[str], *, name: str = "pg_basebackup", stdin: bool = False,
                 stdout: bool = True, env: dict[str, str] | None = None) -> None:
        log.info("running %s", " ".join(cmd))
        self.name = name
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                         stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, env=env)
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

    def exited(self) -> int | None:
        """The exit code once the tool has ended (its stderr fully read), else None."""
        code = self.proc.poll()
        if code is not None:
            self._thread.join(5)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

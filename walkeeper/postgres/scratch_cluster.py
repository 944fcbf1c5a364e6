"""A throwaway PostgreSQL cluster in a private work directory: started, waited for, stopped, removed.

Used by ``restore-test``. Everything it runs lives in one work directory (data, Unix socket, log,
lock file) so that nothing can reach or be reached from outside: no TCP listener, no archiving, a
socket directory only the owner can enter. The lock file (an flock held for the life of the run,
with the pid in it) tells a later run whether a leftover directory belongs to a killed run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from walkeeper.core.config import Config
from walkeeper.core.errors import ConfigError, PostgresError, RefusedError

WORK_PREFIX = "wk-restore-test-"
LOCK_NAME = "restore-test.lock"
PORT = 5432  # only names the socket file: listen_addresses is empty, no TCP port is opened
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; "/.s.PGSQL.5432" is appended


def server_bin(config: Config, name: str, major: int) -> str:
    """A server program of the backup's major version: [backup] pg_bin_dir, Debian's layout, then PATH."""
    candidates = []
    if config.backup.pg_bin_dir:
        candidates.append(Path(config.backup.pg_bin_dir) / name)
    candidates.append(Path(f"/usr/lib/postgresql/{major}/bin") / name)
    for path in candidates:
        if os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found:
        return found
    raise PostgresError(f"{name} of PostgreSQL {major} not found",
                        hint="install the server package of that version or set [backup] pg_bin_dir")


def inside_data_directory(path: Path) -> Path | None:
    """The data directory ``path`` lies in (itself or an ancestor holding PG_VERSION and global/pg_control)."""
    probe = Path(os.path.abspath(path))
    while True:
        if (probe / "PG_VERSION").is_file() and (probe / "global" / "pg_control").is_file():
            return probe
        if probe == probe.parent:
            return None
        probe = probe.parent


def default_base() -> Path:
    """Under the user's state root (~/.local/state/walkeeper/restore-tests), else the temp directory."""
    home = os.path.expanduser("~")
    base = os.environ.get("XDG_STATE_HOME") or (os.path.join(home, ".local", "state") if home not in ("~", "/")
                                                else "")
    if base:
        return Path(base) / "walkeeper" / "restore-tests"
    import tempfile

    return Path(tempfile.gettempdir()) / f"walkeeper-{os.getuid()}" / "restore-tests"


@dataclass
class WorkDir:
    """``<base>/wk-restore-test-<ID>``: data/, sock/, postgres.log and the held lock file."""

    root: Path
    lock_fd: int = -1

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sock(self) -> Path:
        return self.root / "sock"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @classmethod
    def create(cls, base: Path, test_id: str) -> WorkDir:
        base = Path(os.path.abspath(base))
        owner = inside_data_directory(base)
        if owner is not None:
            raise RefusedError(f"the work directory {base} lies inside the data directory {owner}",
                               hint="give --workdir outside every PostgreSQL data directory")
        root = base / f"{WORK_PREFIX}{test_id}"
        if len(str(root / "sock")) > SOCKET_PATH_MAX:
            raise ConfigError(f"the work directory {root} is too long for a Unix socket path",
                              hint="give a shorter --workdir, e.g. /var/tmp/walkeeper")
        try:
            base.mkdir(parents=True, exist_ok=True, mode=0o700)
            root.mkdir(mode=0o700)
            (root / "sock").mkdir(mode=0o700)
        except OSError as exc:
            raise RefusedError(f"cannot create the work directory {root}: {exc.strerror or exc}",
                               hint="give --workdir in a place this user can write") from None
        work = cls(root)
        work.lock_fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(work.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(work.lock_fd, f"{os.getpid()}\n".encode())
        return work

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if self.lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = -1

    def release(self) -> None:
        if self.lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = -1


def remove_stale(base: Path, pg_ctl: str | None = None) -> list[Path]:
    """Remove work directories of earlier runs that were killed: their lock is no longer held.

    A leftover server (the run was killed between start and stop) is stopped first.
    """
    removed = []
    if not base.is_dir():
        return removed
    for root in sorted(base.glob(f"{WORK_PREFIX}*")):
        lock = root / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue  # not ours, or not readable: leave it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run holds it
            if (root / "keep").exists():
                continue  # kept on purpose (--keep-on-failure)
            stop_leftover(root / "data", pg_ctl)
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
        finally:
            os.close(fd)
    return removed


def stop_leftover(data: Path, pg_ctl: str | None) -> None:
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    if pg_ctl:
        subprocess.run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    with contextlib.suppress(ValueError, OSError, IndexError):
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 9)


def safety_settings(work: WorkDir, *, shared_buffers: str = "32MB") -> str:
    """Settings appended last to postgresql.auto.conf (they win): this cluster cannot touch production."""
    hba = work.root / "pg_hba.conf"
    hba.write_text("# walkeeper restore-test: the socket directory is private (0700)\nlocal all all trust\n")
    ident = work.root / "pg_ident.conf"
    ident.write_text("")
    values = {
        "archive_mode": "off",
        "archive_command": "",
        "archive_library": "",
        "listen_addresses": "",
        "port": str(PORT),
        "unix_socket_directories": str(work.sock),
        "unix_socket_permissions": "0700",
        "hba_file": str(hba),
        "ident_file": str(ident),
        "shared_buffers": shared_buffers,
        "hot_standby": "off",
        "primary_conninfo": "",
        "primary_slot_name": "",
        "ssl": "off",
        "logging_collector": "off",
        "cluster_name": f"walkeeper restore-test {work.root.name[len(WORK_PREFIX):]}",
        "synchronous_standby_names": "",
    }
    lines = ["# BEGIN walkeeper restore-test (a throwaway cluster: no archiving, no TCP, private socket)"]
    for key, value in values.items():
        lines.append(f"{key} = '{value}'")
    lines.append("# END walkeeper restore-test")
    return "\n".join(lines) + "\n"


@dataclass
class StartOutcome:
    ready: bool
    seconds: float
    exited: bool  # the server stopped by itself (recovery failed)
    log_tail: list[str] = field(default_factory=list)


@dataclass
class ScratchCluster:
    work: WorkDir
    pg_ctl: str
    user: str

    def _ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.pg_ctl, "-D", str(self.work.data), *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            return self.work.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    def start_and_wait(self, timeout: float, is_ready: object) -> StartOutcome:
        """Start the server and wait until it accepts connections out of recovery (hot_standby is off)."""
        began = time.monotonic()
        proc = self._ctl("-l", str(self.work.log), "-W", "start")
        if proc.returncode != 0:
            return StartOutcome(False, time.monotonic() - began, True,
                                [proc.stderr.strip() or proc.stdout.strip(), *self.log_tail()])
        pid_file = self.work.data / "postmaster.pid"
        deadline = began + timeout
        seen_pid = False
        while time.monotonic() < deadline:
            if pid_file.exists():
                seen_pid = True
                if callable(is_ready) and is_ready():
                    return StartOutcome(True, time.monotonic() - began, False)
            elif seen_pid or time.monotonic() - began > 10:
                return StartOutcome(False, time.monotonic() - began, True, self.log_tail())
            time.sleep(0.2)
        self.stop()
        return StartOutcome(False, time.monotonic() - began, False, self.log_tail())

    def running(self) -> bool:
        return self._ctl("status", timeout=30).returncode == 0

    def stop(self) -> None:
        """Fast shutdown, then immediate; nothing of this work directory may stay running."""
        if not (self.work.data / "postmaster.pid").exists():
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            if self._ctl("-m", "fast", "-w", "-t", "60", "stop", timeout=90).returncode == 0:
                return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._ctl("-m", "immediate", "-w", "-t", "30", "stop", timeout=60)
        stop_leftover(self.work.data, None)

"""Failure notifications: ``[notify] on_failure = "command"``.

The CLI calls ``notify_failure`` from its one error handler (which records the failure in the
state file whether or not a command is configured) after a failed wal-push, a wal-fetch
hard error (never for a plain "not in the archive"), a failed backup or expire. The command runs
with ``/bin/sh -c`` and receives, in its environment:

    WALKEEPER_EVENT       the command that failed: wal-push, wal-fetch, backup, expire
    WALKEEPER_OBJECT      what it was working on (WAL path or name, backup id), may be empty
    WALKEEPER_ERROR       the one-line error message walkeeper printed
    WALKEEPER_EXIT_CODE   the exit status walkeeper is about to return
    WALKEEPER_HOST        this host's name
    WALKEEPER_REPO        the repository URL
    WALKEEPER_TIME        when, ISO 8601 UTC
    WALKEEPER_SUPPRESSED  failures of this event not notified since the last notification (rate limit)

Bounded: the command is killed (with its process group) after ``[notify] timeout`` seconds, so a
hanging mail server never holds PostgreSQL's archiver for long. Rate-limited: at most one
notification per event per ``[notify] min_interval`` seconds; the state file remembers the last
send time per event (and counts every failure, which ``walkeeper check --prometheus`` exports).
Nothing here raises: a notification failure never changes the failed command's exit code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from walkeeper.core.config import Config
from walkeeper.core.durable import write_file

log = logging.getLogger(__name__)

EVENTS = ("wal-push", "wal-fetch", "backup", "expire", "restore-test")
STATE_NAME = "notify-state.json"


def state_path(config: Config) -> Path:
    """Where the per-event state lives: [notify] state_file, else a per-user cache file."""
    if config.notify.state_file:
        return Path(config.notify.state_file)
    home = os.path.expanduser("~")
    base = os.environ.get("XDG_CACHE_HOME") or (os.path.join(home, ".cache") if home not in ("~", "/") else "")
    if base and _writable_dir(base):
        return Path(base) / "walkeeper" / STATE_NAME
    return Path(tempfile.gettempdir()) / f"walkeeper-{os.getuid()}" / STATE_NAME


def _writable_dir(path: str) -> bool:
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK | os.X_OK)


def read_state(path: Path) -> dict[str, dict[str, Any]]:
    """The state file's content; an unreadable or garbled file reads as empty."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in doc.items() if isinstance(v, dict)} if isinstance(doc, dict) else {}


def _update_state(path: Path, event: str, now: float, min_interval: float, *, error: str = "",
                  obj: str = "") -> tuple[bool, int]:
    """Record one failure of ``event``; returns (send now?, failures suppressed since the last send).

    The entry keeps the last error and its object too: ``walkeeper check --archive`` quotes them
    when the server's archiver fails (PostgreSQL's own view holds only the file name and the time).
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        state = read_state(path)
        entry = state.setdefault(event, {})
        entry["failures"] = int(entry.get("failures", 0)) + 1
        entry["last_failure"] = now
        entry["last_error"] = error[:500]
        entry["last_object"] = obj[:200]
        last_sent = float(entry.get("last_sent", 0) or 0)
        send = not (0 <= now - last_sent < min_interval)
        suppressed = int(entry.get("suppressed", 0))
        if send:
            entry["last_sent"] = now
            entry["suppressed"] = 0
        else:
            entry["suppressed"] = suppressed + 1
        write_file(path, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())
        return send, suppressed
    finally:
        os.close(lock_fd)


def notify_failure(config: Config, event: str, obj: str, error: str, exit_status: int) -> bool:
    """Record one failure in the state file and run the on_failure command unless rate-limited.

    Never raises. The failure is recorded also without a command (for ``check``). Returns True
    when the command was started.
    """
    try:
        command = config.notify.on_failure
        now = time.time()
        try:
            send, suppressed = _update_state(state_path(config), event, now, config.notify.min_interval,
                                             error=error, obj=obj)
        except OSError as exc:
            if not command:
                log.debug("notify: cannot record the failure (%s)", exc)
                return False
            log.warning("notify: cannot use the state file (%s); sending anyway", exc)
            send, suppressed = True, 0
        if not command:
            return False
        if not send:
            log.info("notify: %s already notified less than %ss ago; not sending again", event,
                     config.notify.min_interval)
            return False
        env = dict(os.environ)
        env.update({
            "WALKEEPER_EVENT": event,
            "WALKEEPER_OBJECT": obj or "",
            "WALKEEPER_ERROR": error,
            "WALKEEPER_EXIT_CODE": str(exit_status),
            "WALKEEPER_HOST": socket.gethostname(),
            "WALKEEPER_REPO": config.repo,
            "WALKEEPER_TIME": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "WALKEEPER_SUPPRESSED": str(suppressed),
        })
        _run_bounded(command, env, config.notify.timeout)
        return True
    except Exception as exc:  # a notification must never become a second failure
        log.warning("notify: could not run the on_failure command: %s", exc)
        return False


def _run_bounded(command: str, env: dict[str, str], timeout: float) -> None:
    """Run ``command`` in its own session; kill the whole group after ``timeout`` seconds."""
    proc = subprocess.Popen(["/bin/sh", "-c", command], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _out, err = proc.communicate(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        log.warning("notify: on_failure command killed after %ss", timeout)
        return
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        log.warning("notify: on_failure command exited %s%s", proc.returncode,
                    f": {detail[0]}" if detail else "")

"""The backlog of a repository that is behind: WAL files stored elsewhere but not (yet) in it.

With ``[archive] require = "any"`` wal-push succeeds once one repository holds a file; every repository
that could not store it gets an entry here, written durably *before* wal-push reports success, so that a
crash never forgets what a repository lacks. The pusher and later wal-push calls catch the repository up
in WAL order (repo/fanout.py) and remove each entry once the file is durably stored there; status and
check count the entries (the lag). One directory per repository (keyed by its URL): one file per WAL
name, its content one ``reason=...`` line for people.

``LAST_FAILURE`` (a file whose mtime is the last failed attempt) lets callers leave a repository that is down
alone for ``[archive] catch_up_interval`` seconds, so that an outage does not make every archive_command
call wait for connection retries.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from walkeeper.core.durable import TEMP_PREFIX, write_file
from walkeeper.core.walformat import is_wal_name

LAST_FAILURE = "last-failure"
DRAIN_LOCK = "drain.lock"


class LagBook:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def add(self, name: str, reason: str) -> None:
        """Record durably that this repository lacks ``name`` (idempotent)."""
        line = " ".join(reason.split())[:500]  # one line whatever the error said
        write_file(os.path.join(self.directory, name), f"reason={line}\n".encode())

    def done(self, name: str) -> None:
        """``name`` is durably stored in this repository now. Not synced: an entry that comes back after a
        crash only makes the next catch-up find the identical object stored."""
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(self.directory, name))

    def pending(self) -> list[str]:
        """The WAL files this repository lacks, in WAL order (name order: timeline, then position)."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n for n in entries if not n.startswith(TEMP_PREFIX) and is_wal_name(n))

    def reason(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.directory, name), encoding="utf-8") as handle:
                text = handle.read().strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        return text.partition("=")[2] or None

    def failed(self, reason: str) -> None:
        """Note a failed attempt now (not synced: a hint for the next seconds)."""
        line = " ".join(reason.split())[:500]
        write_file(os.path.join(self.directory, LAST_FAILURE), f"reason={line}\n".encode(), sync=False)

    def resting(self, interval: float, *, now: float | None = None) -> bool:
        """True within ``interval`` seconds of the last failed attempt: leave the repository alone."""
        try:
            last = os.stat(os.path.join(self.directory, LAST_FAILURE)).st_mtime
        except FileNotFoundError:
            return False
        return (time.time() if now is None else now) - last < interval

    def last_failure(self) -> str | None:
        return self.reason(LAST_FAILURE)

    def recovered(self) -> None:
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(self.directory, LAST_FAILURE))

    @contextmanager
    def draining(self) -> Iterator[bool]:
        """True inside while this process alone catches the repository up (False: another one does)."""
        fd = os.open(os.path.join(self.directory, DRAIN_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

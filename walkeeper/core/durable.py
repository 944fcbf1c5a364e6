"""Durable writes: temp file beside the target, fsync, rename, fsync the directory.

The one helper every writer of a file that must survive a crash or power loss uses (status records,
repository objects on local targets, recovery settings, notification state, the Prometheus textfile,
restored data directories). Standard library only and cheap to import: the fast paths use it, and
every import costs each archive_command/restore_command call (so no json, re, contextlib; threading
only when a restore asks for background syncing).
"""

# ruff: noqa: SIM105  - try/except/pass instead of contextlib.suppress: see above (import cost)

from __future__ import annotations

import errno
import os
from _collections_abc import Iterable  # already loaded by os; collections.abc would import collections

TEMP_PREFIX = ".tmp-"  # temp names start with this (storage listings and spool cleanups skip/remove them)
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory ``path`` (new names, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: str) -> str:
    """A hidden name beside ``path``, unique to this process and call."""
    head, tail = os.path.split(path)
    return os.path.join(head, f"{TEMP_PREFIX}{tail}.{os.getpid()}.{os.urandom(4).hex()}")


def write_file(path: str | os.PathLike[str], data: bytes | Iterable[bytes], *, mode: int = 0o600,
               sync: bool = True, replace: bool = True) -> None:
    """Put ``data`` at ``path`` atomically: a reader (or a crash) sees the old file or the whole new one.

    ``sync``: also durable when this returns (fsync of the file before the rename, of the directory
    after it); callers that pass False say why in a comment. ``replace=False`` publishes with a hard
    link, so an existing ``path`` is never overwritten (FileExistsError); on file systems without hard
    links it falls back to check-then-rename. ``mode`` is set exactly, whatever the umask.
    """
    path = os.fspath(path)
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            for chunk in (data,) if isinstance(data, bytes | bytearray | memoryview) else data:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            if mode != 0o600:
                os.fchmod(fd, mode)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        elif _link_no_clobber(tmp, path):
            os.unlink(tmp)  # before the directory sync, so that no temp name comes back after a crash
        if sync:
            fsync_dir(os.path.dirname(path) or ".")
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _link_no_clobber(tmp: str, path: str) -> bool:
    """Publish ``tmp`` as ``path`` unless it exists; True when ``tmp`` is still there (linked, not renamed)."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # File systems without hard links: check then rename (not atomic against a racing writer).
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "File exists", path) from None
        os.replace(tmp, path)
        return False


class TreeSync:
    """Make a freshly written tree durable, cheaply: files are fsynced by background threads while the
    caller writes the next ones (the disk works while the CPU decodes), then the directories.

    Several threads because a journaling file system commits concurrent fsyncs together: on this
    project's test machine 300 small files take 0.86 s to fsync one by one and 0.10 s with 4 threads.
    ``add_file(fd)`` takes over an open descriptor of a completely written file; ``add_dir(path)`` names
    a directory whose entries changed; ``finish()`` returns once all of it is on disk (the order does
    not matter: nothing depends on it before ``finish`` returns) and raises the first error met.
    Call ``close()`` on every way out.
    """

    def __init__(self, threads: int = 8) -> None:
        import queue
        import threading

        # Bounded: a writer faster than the disk waits here rather than holding thousands of descriptors.
        self._queue: queue.Queue[int | None] = queue.Queue(maxsize=64)
        self._dirs: set[str] = set()
        self._error: OSError | None = None
        self._threads = [threading.Thread(target=self._run, name="walkeeper-fsync", daemon=True)
                         for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while True:
            fd = self._queue.get()
            try:
                if fd is None:
                    return
                if self._error is None:
                    os.fsync(fd)
            except OSError as exc:
                self._error = self._error or exc
            finally:
                if fd is not None:
                    os.close(fd)
                self._queue.task_done()

    def add_file(self, fd: int) -> None:
        self._queue.put(fd)

    def add_dir(self, path: str | os.PathLike[str]) -> None:
        self._dirs.add(os.fspath(path))

    def finish(self) -> None:
        self._queue.join()
        for directory in sorted(self._dirs):
            if self._error is None:
                self._queue.put(os.open(directory, os.O_RDONLY | os.O_DIRECTORY))
        self._dirs.clear()
        self._queue.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the threads (each closes what it was given first); idempotent."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

"""Write small files on worker threads while the caller goes on reading the stream (restore on all cores).

A data directory is mostly small files (catalogs, free space and visibility maps): creating a file costs a
journal handle, and under fsync load (ours: TreeSync; other processes' on a shared disk) ``open(O_CREAT)``
waits milliseconds for the running journal commit. Handing each small file (open, write, close/sync) to a
few threads lets those waits overlap while the caller parses the tar and writes the large files itself.
Memory is bounded: at most ``max_bytes`` of file contents wait for a thread; a caller ahead of that blocks.
The first error (a full disk, permissions) is raised in the caller at its next call or at ``finish()``,
as the OSError it was, so the caller's own messages apply.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass

from walkeeper.core.durable import TreeSync

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class _Job:
    path: str
    mode: int
    data: bytes


class FileWriters:
    """``write(path, mode, data)`` creates ``path`` (O_EXCL, O_NOFOLLOW) with ``data`` on a worker thread.

    With ``sync``, each written descriptor is handed to it (fsynced and closed in the background) and the
    file's directory is named to it. Call ``finish()`` before relying on the files, ``close()`` on every
    way out.
    """

    def __init__(self, threads: int, *, sync: TreeSync | None = None, max_bytes: int = 16 * 1024 * 1024) -> None:
        self._sync = sync
        self._max_bytes = max_bytes
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._room = threading.Condition()
        self._pending = 0  # bytes queued or being written
        self._error: BaseException | None = None
        self._closing = False
        self._threads = [threading.Thread(target=self._run, name="walkeeper-write", daemon=True)
                         for _ in range(max(1, threads))]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is None and not self._closing:
                    self._write(job)
            except BaseException as exc:  # kept for the caller; the thread goes on (finish() must return)
                self._error = self._error or exc
            finally:
                if job is not None:
                    with self._room:
                        self._pending -= len(job.data)
                        self._room.notify_all()
                self._queue.task_done()

    def _write(self, job: _Job) -> None:
        fd = os.open(job.path, _FLAGS, job.mode)
        try:
            view = memoryview(job.data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            raise
        if self._sync is not None:
            self._sync.add_file(fd)  # fsynced and closed in the background
            self._sync.add_dir(os.path.dirname(job.path))
        else:
            os.close(fd)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, path: str | os.PathLike[str], mode: int, data: bytes) -> None:
        self._raise()
        with self._room:  # a file larger than max_bytes still goes, alone
            self._room.wait_for(lambda: self._pending == 0 or self._pending + len(data) <= self._max_bytes)
            self._pending += len(data)
        self._queue.put(_Job(os.fspath(path), mode, data))

    def finish(self) -> None:
        """Return once every file handed over is written (and given to ``sync``); raise the first error."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        """Stop the threads; files still queued are not written (after ``finish()`` there are none). Idempotent."""
        self._closing = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

"""Starting the detached helpers (pusher, prefetcher) and what they and their starters share.

Standard library only: the helpers' command lines, their logs, and the checks on where their state may live.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import subprocess
import sys

# glibc returns each freed 16 MiB buffer to the kernel (mmap below 32 MiB, trim above 128 KiB), so a
# long-running helper pays ~4,000 page faults per segment and buffer: measured, 0.7-0.9 s of system
# time per 30 segments in the pusher, 0.2-0.4 s with these settings (same peak RSS).
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 128 * 1024 * 1024
LOG_MAX = 1024 * 1024


def spawn_helper(module_args: list[str], cwd: str, log_path: str) -> bool:
    """Start ``python -m MODULE ARGS`` detached from the calling process (its own session, no stdin).

    A fresh interpreter rather than a fork of this one: forking saved ~0.1 s of CPU per helper
    (measured), not worth a helper that ``ps`` shows as "wal-fetch" and that shares the caller's sockets.
    """
    with contextlib.suppress(OSError):
        if os.stat(log_path).st_size > LOG_MAX:
            os.replace(log_path, log_path + ".1")  # keep one older log: each helper appends a few lines
    log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    with log_file:
        subprocess.Popen(
            [sys.executable, "-m", *module_args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=log_file, start_new_session=True, close_fds=True,
            env={"MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD),
                 **os.environ},
        )
    return True


def log_helper_stopped(log: logging.Logger) -> None:
    """A helper's last log line; benchmarks/wal_bench.py reads the peak RSS and CPU from it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    log.info("stopped (peak RSS %d MiB, CPU %.2f s)", usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime)


def outside_data_directory(path: str, datadir: str, setting: str) -> None:
    """Refuse state inside the data directory: base backups, pg_rewind and WAL recycling would see it."""
    real, data = os.path.realpath(path), os.path.realpath(datadir)
    if os.path.exists(os.path.join(data, "PG_VERSION")) and (real == data or real.startswith(data + os.sep)):
        raise PermissionError(f"{setting} {path} is inside the data directory {data}; choose a directory outside it")


def recovering(datadir: str) -> bool:
    return any(os.path.exists(os.path.join(datadir, f)) for f in ("recovery.signal", "standby.signal"))

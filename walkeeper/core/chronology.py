"""Which backup is newer, and what the clocks say: pure functions, no I/O.

Backups are ordered by what PostgreSQL says, never by a wall clock: a backup's place in the
database's history is where it ended, its stop timeline and stop LSN. Of two backups, the one on a
later timeline that descends from the other's is newer; on one timeline, the higher stop LSN is
newer. PostgreSQL names a new timeline one above the newest it finds in the archive (at promotion,
``findNewestTimeLine() + 1``), so a timeline always carries a higher number than every timeline it
descends from, and of two sibling branches the higher number is the branch made later, the one
``recovery_target_timeline = 'latest'`` follows. The key (stop timeline, stop LSN) therefore orders
backups as their timeline history does, without reading a history file.

Wall-clock times (``start_time``, ``stop_time``, the backup id) come from the host that took the
backup. A wrong clock there (a VM resumed from a snapshot, NTP not running) would make an old backup
look newest; they serve only time targets (pitr --target-time, keep_days) and ages (check). At
backup time the host clock is compared with the server's ``now()``; the difference is recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from walkeeper.core.wal import parse_lsn

CLOCK_TOLERANCE = 5.0  # seconds: a larger skew or a larger negative age means a clock is off


class Placed(Protocol):
    """What ordering needs of a backup (catalog.BackupMeta and inventory.BackupInfo both have it)."""

    @property
    def id(self) -> str: ...

    @property
    def stop_timeline(self) -> int: ...

    @property
    def stop_lsn(self) -> int | str: ...


B = TypeVar("B", bound=Placed)


def position(backup: Placed) -> tuple[int, int, str]:
    """The sort key: (stop timeline, stop LSN, id); the id only breaks exact ties, for a stable order."""
    lsn = backup.stop_lsn
    return backup.stop_timeline, parse_lsn(lsn) if isinstance(lsn, str) else lsn, backup.id


def oldest_first(backups: Iterable[B]) -> list[B]:
    """Every backup, oldest first: the one order used wherever "latest", newest or oldest is picked."""
    return sorted(backups, key=position)


def newest(backups: Iterable[B]) -> B | None:
    return max(backups, key=position, default=None)


def oldest(backups: Iterable[B]) -> B | None:
    return min(backups, key=position, default=None)


def clock_skew(before: float, server: float, after: float) -> float:
    """Host clock minus server clock (seconds), from host readings around one ``select now()``.

    The server read its clock somewhere between ``before`` and ``after`` (the round trip); only a
    difference outside that window is skew, so a slow connection never reads as a wrong clock.
    Positive: the host is ahead of the server.
    """
    if server < before:
        return before - server
    if server > after:
        return after - server
    return 0.0


def clock_off(seconds: float | None) -> bool:
    """Whether a recorded skew (or a negative age) is larger than ordinary jitter."""
    return seconds is not None and abs(seconds) > CLOCK_TOLERANCE


def human_span(seconds: float) -> str:
    """A duration for messages: 42s, 3.5m, 2.0h, 30.0d (the sign is the caller's business)."""
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def describe_skew(seconds: float) -> str:
    """'30.0d ahead of' / '12s behind' the server's clock."""
    return f"{human_span(seconds)} {'ahead of' if seconds > 0 else 'behind'}"

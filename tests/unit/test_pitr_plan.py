"""PITR decisions as tables (repo/pitr_target.py, repo/pitr_plan.py): the backup for each target kind along
a timeline path, and the WAL coverage a recovery needs; no root, no PostgreSQL, no storage.

The repository in these tables (16 MiB segments; segment n holds LSNs n/0x1000000):
  A  timeline 1, WAL 0/2000028 .. 0/3000100 (segments 2..3), ended T0 + 1h
  B  timeline 1, WAL 0/5000028 .. 0/6000100 (segments 5..6), ended T0 + 3h
  D  timeline 1, WAL 0/7800028 .. 0/8800000, ended T0 + 4h: crosses the switch to timeline 2 at 0/8000000
  C  timeline 2, WAL 0/9000028 .. 0/A000100 (segments 9..10), ended T0 + 5h
Timeline 2 branched from timeline 1 at 0/8000000 (segment 8 is read from timeline 2).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from walkeeper.core.errors import ConfigError, GapError, RefusedError
from walkeeper.repo.catalog import BackupMeta, RestorePoint
from walkeeper.repo.pitr_plan import TimelineStep, archived_after, choose_backup, coverage, latest_timeline, on_path
from walkeeper.repo.pitr_target import Target, format_target_time, make_target

SEG = 16 * 1024 * 1024
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


def backup(bid: str, tli: int, start: int, stop: int, ended: datetime) -> BackupMeta:
    return BackupMeta(id=bid, label=bid, start_lsn=f"0/{start:X}", stop_lsn=f"0/{stop:X}", start_wal="",
                      stop_wal="", timeline=tli, stop_timeline=tli, start_time=(ended - H / 2).isoformat(),
                      stop_time=ended.isoformat(), pg_version=150000, system_identifier="1",
                      wal_segment_size=SEG, wal_mode="archive", plain_size=0, stored_size=0, objects=[])


A = backup("A", 1, 0x2000028, 0x3000100, T0 + H)
B = backup("B", 1, 0x5000028, 0x6000100, T0 + 3 * H)
D = backup("D", 1, 0x7800028, 0x8800000, T0 + 4 * H)
C = backup("C", 2, 0x9000028, 0xA000100, T0 + 5 * H)
TL1 = [TimelineStep(1, 0, None)]
TL2 = [TimelineStep(1, 0, 0x8000000), TimelineStep(2, 0x8000000, None)]
TL3 = [TimelineStep(1, 0, 0x8000000), TimelineStep(2, 0x8000000, 0xB000000), TimelineStep(3, 0xB000000, None)]
POINT = RestorePoint(name="before-migration", lsn="0/7000000", time=(T0 + 3.5 * H).isoformat(), timeline=1,
                     system_identifier="1", wal_file="000000010000000000000007")


def time_target(moment: datetime) -> Target:
    return Target("time", format_target_time(moment), time=moment)


def lsn_target(lsn: int) -> Target:
    return Target("lsn", f"0/{lsn:X}", lsn=lsn)


NAME = Target("name", POINT.name, lsn=0x7000000, point=POINT)
IMMEDIATE = Target("immediate", "immediate")
XID = Target("xid", "1234", xid=1234)


# -- the backup for a target --------------------------------------------------------------------

@pytest.mark.parametrize(("case", "backups", "target", "path", "chosen_id", "expected", "why"), [
    ("time between A and B", [A, B], time_target(T0 + 2 * H), TL1, None, "A", "ended before"),
    ("time after B", [B, A], time_target(T0 + 4 * H), TL1, None, "B", "ended before"),
    ("time exactly at B's end: B ended too late", [A, B], time_target(T0 + 3 * H), TL1, None, "A", "ended before"),
    ("lsn inside B's WAL", [A, B], lsn_target(0x5800000), TL1, None, "A", "ended at 0/3000100"),
    ("lsn after B", [A, B], lsn_target(0x7000000), TL1, None, "B", "ended at 0/6000100"),
    ("restore point after B", [A, B], NAME, TL1, None, "B", "before LSN 0/7000000"),
    ("immediate: the newest on timeline 1", [A, B, C], IMMEDIATE, TL1, None, "B", "newest backup"),
    ("immediate: the newest on timeline 2", [A, B, C], IMMEDIATE, TL2, None, "C", "newest backup"),
    ("a backup across the switch is not on timeline 2", [A, D], IMMEDIATE, TL2, None, "A", "newest backup"),
    ("the same backup is on timeline 1", [A, D], IMMEDIATE, TL1, None, "D", "newest backup"),
    ("timeline 3 descends from 1 and 2", [A, C], time_target(T0 + 6 * H), TL3, None, "C", "ended before"),
    ("xid: the newest", [A, B], XID, TL1, None, "B", "newest backup"),
    ("--backup chosen", [A, B], time_target(T0 + 4 * H), TL1, "A", "A", "chosen with --backup"),
])
def test_choose_backup(case: str, backups: list[BackupMeta], target: Target, path: list[TimelineStep],
                       chosen_id: str | None, expected: str, why: str) -> None:
    chosen, reason = choose_backup(backups, target, path, chosen_id)
    assert chosen.id == expected
    assert why in reason


@pytest.mark.parametrize(("case", "backups", "target", "path", "chosen_id", "message"), [
    ("empty repository", [], IMMEDIATE, TL1, None, "holds no backup"),
    ("target before every backup ended", [A, B], time_target(T0 + H / 2), TL1, None,
     "before the end of every backup: the oldest, A"),
    ("lsn inside the only backup", [A], lsn_target(0x3000000), TL1, None, "before the end of every backup"),
    ("no backup on the path", [C], IMMEDIATE, TL1, None, "no backup lies on the history of timeline 1"),
    ("--backup that ended after the target", [A, B], time_target(T0 + 2 * H), TL1, "B",
     "backup B cannot reach the target: it ended at"),
    ("--backup unknown", [A, B], IMMEDIATE, TL1, "nope", "no backup nope"),
    ("--backup on another timeline", [A, D], IMMEDIATE, TL2, "D", "is not on the history of timeline 2"),
])
def test_choose_backup_refuses(case: str, backups: list[BackupMeta], target: Target, path: list[TimelineStep],
                               chosen_id: str | None, message: str) -> None:
    with pytest.raises(RefusedError, match=message):
        choose_backup(backups, target, path, chosen_id)


@pytest.mark.parametrize(("meta", "path", "on"), [
    (A, TL1, True), (A, TL2, True), (C, TL1, False), (C, TL2, True), (D, TL1, True), (D, TL2, False),
    (C, TL3, True), (A, [TimelineStep(1, 0, 0x2000000), TimelineStep(2, 0x2000000, None)], False),
])
def test_on_path(meta: BackupMeta, path: list[TimelineStep], on: bool) -> None:
    assert on_path(meta, path) is on


# -- WAL coverage -------------------------------------------------------------------------------

def seg(tli: int, segno: int) -> str:
    return f"{tli:08X}{0:08X}{segno:08X}"


def listing(*runs: tuple[int, list[int], datetime]) -> dict[int, dict[int, float]]:
    """(timeline, segment numbers, when they were archived) -> the listing ``coverage`` reads."""
    present: dict[int, dict[int, float]] = {}
    for tli, segnos, when in runs:
        for s in segnos:
            present.setdefault(tli, {})[s] = when.timestamp()
    return present


EARLY = T0 + H  # archived before every time target below
LATE = T0 + 3 * H
NOW = T0 + 10 * H


@pytest.mark.parametrize(("case", "present", "meta", "target", "path", "expected"), [
    ("immediate: the backup's own WAL", listing((1, [2, 3], EARLY)), A, IMMEDIATE, TL1,
     (seg(1, 2), seg(1, 3), 2)),
    ("lsn: up to the target's segment", listing((1, [2, 3, 4, 5, 6], EARLY)), A, lsn_target(0x5000000), TL1,
     (seg(1, 2), seg(1, 5), 4)),
    ("restore point", listing((1, [5, 6, 7, 8], EARLY)), B, NAME, TL1, (seg(1, 5), seg(1, 7), 3)),
    ("time: to the first segment archived after the target", listing((1, [2, 3], EARLY), (1, [4, 5], LATE)),
     A, time_target(T0 + 2 * H), TL1, (seg(1, 2), seg(1, 4), 3)),
    ("time: the backup's own WAL never ends the walk",
     listing((1, [2], EARLY), (1, [3, 4], LATE)), A, time_target(T0 + 2 * H), TL1, (seg(1, 2), seg(1, 4), 3)),
    ("xid: to the end of the archive", listing((1, [2, 3, 4], EARLY)), A, XID, TL1, (seg(1, 2), None, 3)),
    ("a timeline switch: segment 8 comes from the child",
     listing((1, [2, 3, 4, 5, 6, 7, 8], EARLY), (2, [8, 9], EARLY)), A, lsn_target(0x9000000), TL2,
     (seg(1, 2), seg(2, 9), 8)),
    ("a backup on the child timeline", listing((2, [9, 10, 11], EARLY)), C, lsn_target(0xB000000), TL2,
     (seg(2, 9), seg(2, 11), 3)),
])
def test_coverage(case: str, present: dict[int, dict[int, float]], meta: BackupMeta, target: Target,
                  path: list[TimelineStep], expected: tuple[str, str | None, int]) -> None:
    assert coverage(present, SEG, meta, target, path, now=NOW) == expected


@pytest.mark.parametrize(("case", "present", "meta", "target", "path", "now", "error", "message"), [
    ("immediate: the backup's last segment is missing", listing((1, [2], EARLY)), A, IMMEDIATE, TL1, NOW,
     GapError, f"WAL segment {seg(1, 3)} is missing"),
    ("lsn: a hole before the target", listing((1, [2, 3, 5], EARLY)), A, lsn_target(0x5000000), TL1, NOW,
     GapError, f"WAL segment {seg(1, 4)} is missing"),
    ("time: a hole with later WAL after it", listing((1, [2, 3, 5], EARLY)), A, time_target(T0 + 2 * H), TL1,
     NOW, GapError, f"WAL segment {seg(1, 4)} is missing"),
    ("xid: a hole with later WAL after it", listing((1, [2, 3, 5], EARLY)), A, XID, TL1, NOW,
     GapError, f"WAL segment {seg(1, 4)} is missing"),
    ("the switch segment only on the parent", listing((1, [2, 3, 4, 5, 6, 7, 8], EARLY), (2, [9], EARLY)), A,
     lsn_target(0x9000000), TL2, NOW, GapError, f"WAL segment {seg(2, 8)} is missing"),
    ("time: the archive ends before the target", listing((1, [2, 3, 4], EARLY)), A, time_target(T0 + 2 * H),
     TL1, NOW, RefusedError, f"the archive ends before {seg(1, 5)}, and nothing in it was archived after"),
    ("time: the target is in the future", listing((1, [2, 3, 4], EARLY)), A, time_target(T0 + 2 * H), TL1,
     T0 + 1.5 * H, RefusedError, "is in the future"),
])
def test_coverage_refuses(case: str, present: dict[int, dict[int, float]], meta: BackupMeta, target: Target,
                          path: list[TimelineStep], now: datetime, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        coverage(present, SEG, meta, target, path, now=now)


@pytest.mark.parametrize(("mtime", "moment", "after"), [
    (100.0, 100.5, True),  # a whole-second mtime may be anywhere in its second
    (100.0, 101.0, False),
    (100.7, 100.5, True),
    (100.3, 100.5, False),
])
def test_archived_after(mtime: float, moment: float, after: bool) -> None:
    assert archived_after(mtime, datetime.fromtimestamp(moment, UTC)) is after


# -- the target from the options ----------------------------------------------------------------

class Points:
    """The one catalog call make_target makes for a name target."""

    def restore_points(self) -> list[RestorePoint]:
        return [POINT, RestorePoint(name=POINT.name, lsn="0/9000000", time="", timeline=2, system_identifier="1",
                                    wal_file="")]


@pytest.mark.parametrize(("options", "kind", "value", "lsn"), [
    ({"time": "2026-03-01 14:00:00 UTC"}, "time", "2026-03-01 14:00:00.000000+00", None),
    ({"lsn": " 0/5000abc "}, "lsn", "0/5000ABC", 0x5000ABC),
    ({"xid": "1234"}, "xid", "1234", None),
    ({"name": POINT.name}, "name", POINT.name, 0x7000000),  # the first of two points with that name
    ({"immediate": True}, "immediate", "immediate", None),
    ({"standby": True}, "none", "", None),
])
def test_make_target(options: dict, kind: str, value: str, lsn: int | None) -> None:
    target = make_target(Points(), **options)  # type: ignore[arg-type]
    assert (target.kind, target.value, target.lsn) == (kind, value, lsn)


@pytest.mark.parametrize(("options", "error", "message"), [
    ({}, ConfigError, "give one recovery target"),
    ({"time": "2026-03-01 14:00:00 UTC", "lsn": "0/1"}, ConfigError, r"not 2 \(time, lsn\)"),
    ({"lsn": "5000000"}, ConfigError, "--target-lsn"),
    ({"name": "x" * 64}, ConfigError, "shorter than 64"),
    ({"name": "unknown"}, RefusedError, "no restore point named 'unknown'"),
])
def test_make_target_refuses(options: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make_target(Points(), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("start", "histories", "latest"), [
    (1, set(), 1),
    (1, {2, 3}, 3),
    (1, {3}, 1),  # PostgreSQL probes start+1, start+2...: a missing 2 stops it
    (2, {2, 3, 5}, 3),
])
def test_latest_timeline(start: int, histories: set[int], latest: int) -> None:
    assert latest_timeline(None, start, histories) == latest  # type: ignore[arg-type]

"""Decisions over one listing of a repository, as tables: WAL continuity (verify's check_continuity) with gaps
and timeline switches, and the expire plan (plan_expire: keep, keep_days, restore points, timelines).

The Inventory is built by hand from segment numbers (16 MiB segments); no storage, no root, no PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest

from walkeeper.commands.expire import plan_expire
from walkeeper.commands.verify import Report, check_continuity
from walkeeper.core.errors import ConfigError
from walkeeper.core.retention_gfs import GfsPolicy
from walkeeper.core.wal import HistoryEntry, parse_wal_name, segment_name
from walkeeper.repo.inventory import BackupInfo, Inventory, WalObject
from walkeeper.repo.layout import wal_key

SEG = 16 * 1024 * 1024
DAY = 86400.0
NOW = 1_790_000_000.0


def seg(tli: int, segno: int) -> str:
    return segment_name(tli, segno, SEG)


def backup(bid: str, tli: int, start_segno: int, age_days: float) -> BackupInfo:
    start, stop = start_segno * SEG + 0x28, (start_segno + 1) * SEG + 0x100
    return BackupInfo(id=bid, timeline=tli, stop_timeline=tli, start_segno=start_segno, stop_segno=start_segno + 1,
                      start_wal=seg(tli, start_segno), stop_wal=seg(tli, start_segno + 1), start_lsn=start,
                      stop_lsn=stop, start_time=NOW - age_days * DAY - 60, stop_time=NOW - age_days * DAY,
                      wal_mode="archive", stored_size=1000, objects=())


def inventory(segments: dict[int, list[int]], *, histories: dict[int, list[tuple[int, int]]] | None = None,
              backups: list[BackupInfo] = (), restore_points: list[int] = ()) -> Inventory:  # type: ignore[assignment]
    """segments: timeline -> segment numbers; histories: timeline -> [(parent, switch LSN)]; restore points: LSNs."""
    inv = Inventory(repo=None, meta=None, segment_size=SEG)  # type: ignore[arg-type]
    for tli, segnos in segments.items():
        for segno in segnos:
            name = parse_wal_name(seg(tli, segno))
            obj = WalObject(name, wal_key(name), 100, NOW - DAY)
            inv.wal.append(obj)
            inv.segments.setdefault(tli, {})[segno] = obj
    for tli, entries in (histories or {}).items():
        name = parse_wal_name(f"{tli:08X}.history")
        obj = WalObject(name, wal_key(name), 10, NOW - DAY)
        inv.wal.append(obj)
        inv.history_files[tli] = obj
        inv.histories[tli] = [HistoryEntry(parent, lsn, "no recovery target specified") for parent, lsn in entries]
    for b in backups:
        inv.backups.append(b)
        inv.complete_ids.add(b.id)
        inv.backup_objects[b.id] = [(f"backups/{b.id}/base.tar.wk", 1000, NOW), (f"backups/{b.id}/backup.json", 1, NOW)]
    inv.restore_points = [(f"restore-points/20260301T120000000000Z-{lsn:016X}.json", 1, NOW) for lsn in restore_points]
    return inv


# -- WAL continuity -------------------------------------------------------------------------------

def problems(inv: Inventory) -> list[tuple[Any, ...]]:
    report = Report(repository="test", system_identifier=None, segment_size=SEG, deep=False)
    check_continuity(inv, report)
    return [(p.kind, p.timeline, p.details.get("first_missing"), p.details.get("count"),
             p.details.get("timelines_affected")) for p in report.problems]


SWITCH_AT_8 = {2: [(1, 8 * SEG)]}  # timeline 2 branched from 1 at 0/8000000: segment 8 is read from timeline 2


@pytest.mark.parametrize(("case", "inv", "expected"), [
    ("one timeline, no hole", inventory({1: [2, 3, 4, 5]}), []),
    ("one missing segment", inventory({1: [2, 3, 5, 6]}), [("gap", 1, seg(1, 4), 1, [1])]),
    ("two missing in a row", inventory({1: [2, 3, 6]}), [("gap", 1, seg(1, 4), 2, [1])]),
    ("two separate holes", inventory({1: [2, 4, 6]}),
     [("gap", 1, seg(1, 3), 1, [1]), ("gap", 1, seg(1, 5), 1, [1])]),
    ("a timeline switch, complete", inventory({1: [2, 3, 4, 5, 6, 7], 2: [8, 9]}, histories=SWITCH_AT_8), []),
    ("the parent's copy of the switch segment is not enough",
     inventory({1: [2, 3, 4, 5, 6, 7, 8], 2: [9]}, histories=SWITCH_AT_8), [("gap", 2, seg(2, 8), 1, [2])]),
    ("a hole on the parent breaks both timelines",
     inventory({1: [2, 3, 5, 6, 7], 2: [8, 9]}, histories=SWITCH_AT_8), [("gap", 1, seg(1, 4), 1, [1, 2])]),
    ("segments of a timeline without its history file", inventory({1: [2, 3], 2: [8, 9]}),
     [("unknown-timeline", 2, None, None, None)]),
    ("checking starts at the oldest backup", inventory({1: [2, 5, 6, 7]}, backups=[backup("b", 1, 5, 1)]), []),
    ("without a backup it starts at the first segment", inventory({1: [2, 5, 6, 7]}),
     [("gap", 1, seg(1, 3), 2, [1])]),
])
def test_continuity(case: str, inv: Inventory, expected: list[tuple[Any, ...]]) -> None:
    assert problems(inv) == expected


# -- the expire plan ----------------------------------------------------------------------------

A, B, C = backup("A", 1, 2, 3), backup("B", 1, 5, 2), backup("C", 1, 8, 1)  # ended 3, 2 and 1 days ago


def three_backups() -> Inventory:
    return inventory({1: [2, 3, 4, 5, 6, 7, 8, 9]}, backups=[A, B, C], restore_points=[0x3000000, 0x9000000])


def removed(plan: Any) -> list[str]:
    """What the plan deletes, in order, by the last part of each key."""
    return [key.rsplit("/", 1)[-1] if key.startswith("wal/") else key for key, _size in plan.removals]


A_OBJECTS = ["backups/A/backup.json", "backups/A/base.tar.wk"]  # the metadata goes first
B_OBJECTS = ["backups/B/backup.json", "backups/B/base.tar.wk"]
RP_3 = "restore-points/20260301T120000000000Z-0000000003000000.json"


@pytest.mark.parametrize(("case", "rules", "kept", "cutoff", "removals"), [
    ("keep 1", {"keep": 1}, ["C"], seg(1, 8),
     [*A_OBJECTS, *B_OBJECTS, RP_3, *(seg(1, s) for s in range(2, 8))]),
    ("keep 2", {"keep": 2}, ["B", "C"], seg(1, 5), [*A_OBJECTS, RP_3, seg(1, 2), seg(1, 3), seg(1, 4)]),
    ("keep 5 keeps all", {"keep": 5}, ["A", "B", "C"], seg(1, 2), []),
    ("keep 1.5 days: B starts the window", {"keep_days": 1.5}, ["B", "C"], seg(1, 5),
     [*A_OBJECTS, RP_3, seg(1, 2), seg(1, 3), seg(1, 4)]),
    ("keep 0.5 days: the newest and the one before the window", {"keep_days": 0.5}, ["C"], seg(1, 8),
     [*A_OBJECTS, *B_OBJECTS, RP_3, *(seg(1, s) for s in range(2, 8))]),
    ("keep 1 and 2.5 days: the union", {"keep": 1, "keep_days": 2.5}, ["A", "B", "C"], seg(1, 2), []),
])
def test_plan_expire(case: str, rules: dict[str, Any], kept: list[str], cutoff: str, removals: list[str]) -> None:
    rules = {"keep": None, "keep_days": None, **rules}
    plan = plan_expire(three_backups(), now=NOW, **rules)
    assert plan.kept_backups == kept
    assert plan.expired_backups == [b for b in ["A", "B", "C"] if b not in kept]
    assert plan.cutoff_wal == cutoff
    assert removed(plan) == removals


def test_plan_expire_says_why_each_backup_stays() -> None:
    plan = plan_expire(three_backups(), keep=None, keep_days=1.5, now=NOW)
    assert plan.reasons == {"C": ["newest", "last 1.5 days"], "B": ["start of the 1.5-day window"]}


def test_plan_expire_across_timelines() -> None:
    """Timeline 2 was abandoned (branched at 0/4000000, nothing archived on it); C is on timeline 3 (branched
    at 0/8000000). Keeping C keeps timeline 1's history up to the switch and removes timeline 2's history."""
    c3 = backup("C", 3, 9, 1)
    inv = inventory({1: [2, 3, 4, 5, 6, 7], 3: [8, 9, 10]}, histories={2: [(1, 4 * SEG)], 3: [(1, 8 * SEG)]},
                    backups=[A, c3])
    plan = plan_expire(inv, keep=1, keep_days=None, now=NOW)
    assert plan.kept_backups == ["C"]
    assert plan.cutoff_wal == seg(3, 9)
    assert removed(plan) == [*A_OBJECTS, *(seg(1, s) for s in range(2, 8)), seg(3, 8), "00000002.history"]


def test_plan_expire_without_backups_removes_nothing() -> None:
    plan = plan_expire(inventory({1: [2, 3]}), keep=1, keep_days=None, now=NOW)
    assert plan.removals == [] and plan.kept_backups == []
    assert plan.note is not None and "no complete backups" in plan.note


@pytest.mark.parametrize(("rules", "message"), [
    ({"keep": None, "keep_days": None}, "expire needs a retention rule"),
    ({"keep": 0, "keep_days": None}, r"keep must be at least 1 \(got 0\)"),
    ({"keep": None, "keep_days": 0.0}, r"keep_days must be positive \(got 0.0\)"),
    ({"keep": None, "keep_days": None, "gfs": GfsPolicy(daily=0)}, r"keep_daily must be at least 1 \(got 0\)"),
])
def test_plan_expire_refuses(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_expire(three_backups(), now=NOW, **rules)

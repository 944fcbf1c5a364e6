"""Which backup is newest, whatever the clocks said (walkeeper.core.chronology and its users); no root, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from walkeeper.commands.expire import retained_backups
from walkeeper.core import chronology
from walkeeper.repo.catalog import BackupMeta
from walkeeper.repo.health import clock_problems
from walkeeper.repo.inventory import BackupInfo
from walkeeper.repo.pitr_plan import TimelineStep, choose_backup
from walkeeper.repo.pitr_target import Target

DAY = 86400.0
NOW = 1_790_000_000.0  # the checking host's "now"
MiB = 1024 * 1024


@dataclass(frozen=True)
class B:
    """A backup as the ordering sees it; ``skew`` is how far its host clock was off (for stop_time)."""

    id: str
    stop_timeline: int
    stop_lsn: int
    skew: float = 0.0
    true_end: float = 0.0  # seconds before NOW it really ended

    @property
    def stop_time(self) -> float:
        return NOW - self.true_end + self.skew


# (case, backups in any order, expected ids oldest first)
ORDER_CASES = [
    ("one timeline, clocks right",
     [B("b", 1, 0x3000000, true_end=DAY), B("a", 1, 0x2000000, true_end=2 * DAY), B("c", 1, 0x4000000)],
     ["a", "b", "c"]),
    ("an older backup taken with the clock 30 days fast",
     [B("fast", 1, 0x2000000, skew=30 * DAY, true_end=DAY), B("real", 1, 0x3000000)],
     ["fast", "real"]),
    ("the newest backup taken with the clock 30 days slow",
     [B("real", 1, 0x2000000, true_end=DAY), B("slow", 1, 0x3000000, skew=-30 * DAY)],
     ["real", "slow"]),
    ("skews both ways at once",
     [B("x", 1, 0x5000000, skew=-10 * DAY), B("y", 1, 0x1000000, skew=+10 * DAY, true_end=3 * DAY),
      B("z", 1, 0x3000000, skew=-40, true_end=DAY)],
     ["y", "z", "x"]),
    ("a child timeline is newer than a higher LSN on the abandoned parent",
     # timeline 2 branched from 1 at 0/5000000; the old primary went on on timeline 1 to 0/9000000
     [B("old-primary", 1, 0x9000000), B("promoted", 2, 0x6000000, skew=-5 * DAY)],
     ["old-primary", "promoted"]),
    ("three timelines in a line, clocks wrong everywhere",
     [B("t3", 3, 0x4000000, skew=-DAY), B("t1", 1, 0x8000000, skew=DAY), B("t2", 2, 0x7000000, skew=2 * DAY),
      B("t2-late", 2, 0x7800000, skew=-2 * DAY)],
     ["t1", "t2", "t2-late", "t3"]),
    ("sibling branches: the higher timeline was made later (what 'latest' follows)",
     # 2 and 3 both branched from 1; a backup on 2 after 3 existed still sorts before 3's
     [B("on-3", 3, 0x5000000, true_end=DAY), B("on-2", 2, 0x9000000), B("on-1", 1, 0x3000000)],
     ["on-1", "on-2", "on-3"]),
    ("equal positions: the id decides, so the order is stable",
     [B("b", 1, 0x3000000), B("a", 1, 0x3000000)],
     ["a", "b"]),
]


@pytest.mark.parametrize("backups,expected", [c[1:] for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES])
def test_backups_are_ordered_by_timeline_and_lsn_not_by_clock(backups: list[B], expected: list[str]) -> None:
    assert [b.id for b in chronology.oldest_first(backups)] == expected
    assert [b.id for b in chronology.oldest_first(reversed(backups))] == expected
    assert chronology.newest(backups).id == expected[-1]  # type: ignore[union-attr]
    assert chronology.oldest(backups).id == expected[0]  # type: ignore[union-attr]


def test_lsn_text_and_numbers_order_alike() -> None:
    @dataclass(frozen=True)
    class Text:
        id: str
        stop_timeline: int
        stop_lsn: str

    items = [Text("a", 1, "0/10000000"), Text("b", 1, "0/9000000"), Text("c", 1, "1/0")]
    assert [b.id for b in chronology.oldest_first(items)] == ["b", "a", "c"]  # numeric, not textual
    assert chronology.newest([]) is None and chronology.oldest([]) is None


@pytest.mark.parametrize("before,server,after,skew", [
    (100.0, 100.5, 101.0, 0.0),  # the server read its clock during the round trip
    (100.0, 100.0, 100.0, 0.0),
    (100.0 + 30 * DAY, 100.2, 100.4 + 30 * DAY, 30 * DAY - 0.2),  # host 30 days fast
    (100.0 - 30 * DAY, 100.2, 100.4 - 30 * DAY, -30 * DAY - 0.2 + 0.4),  # host 30 days slow
    (100.0, 93.0, 100.1, 7.0),
    (100.0, 108.5, 100.5, -8.0),
])
def test_clock_skew_counts_only_what_lies_outside_the_round_trip(before: float, server: float, after: float,
                                                                 skew: float) -> None:
    assert chronology.clock_skew(before, server, after) == pytest.approx(skew)


@pytest.mark.parametrize("seconds,off", [(None, False), (0.0, False), (4.9, False), (-5.0, False), (5.1, True),
                                         (-30 * DAY, True)])
def test_clock_off_threshold(seconds: float | None, off: bool) -> None:
    assert chronology.clock_off(seconds) is off


# -- every place that picks newest/oldest uses the ordering ------------------------------------------------

def info(b: B) -> BackupInfo:
    return BackupInfo(id=b.id, timeline=b.stop_timeline, stop_timeline=b.stop_timeline, start_segno=1,
                      stop_segno=1, start_wal="", stop_wal="", start_lsn=b.stop_lsn - 0x100, stop_lsn=b.stop_lsn,
                      start_time=b.stop_time - 60, stop_time=b.stop_time, wal_mode="archive", stored_size=0,
                      objects=(), clock_skew=b.skew)


def meta(b: B) -> BackupMeta:
    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat()

    return BackupMeta(id=b.id, label=b.id, start_lsn=f"0/{b.stop_lsn - MiB:X}", stop_lsn=f"0/{b.stop_lsn:X}",
                      start_wal="", stop_wal="", timeline=b.stop_timeline, stop_timeline=b.stop_timeline,
                      start_time=iso(b.stop_time - 60), stop_time=iso(b.stop_time), pg_version=150000,
                      system_identifier="1", wal_segment_size=16 * MiB, wal_mode="archive", plain_size=0,
                      stored_size=0, objects=[], clock_skew=b.skew)


FAST_THEN_REAL = [B("20261230T000000Z", 1, 0x2000000, skew=30 * DAY, true_end=DAY),
                  B("20261201T000000Z", 1, 0x3000000)]
REAL_THEN_SLOW = [B("20261201T000000Z", 1, 0x2000000, true_end=DAY),
                  B("20261101T000000Z", 1, 0x3000000, skew=-30 * DAY)]


@pytest.mark.parametrize("backups", [FAST_THEN_REAL, REAL_THEN_SLOW], ids=["fast-then-real", "real-then-slow"])
def test_expire_keep_1_keeps_the_truly_newest(backups: list[B]) -> None:
    kept = retained_backups([info(b) for b in reversed(backups)], 1, None, NOW)
    assert [b.id for b in kept] == [backups[-1].id]


@pytest.mark.parametrize("backups", [FAST_THEN_REAL, REAL_THEN_SLOW], ids=["fast-then-real", "real-then-slow"])
def test_pitr_immediate_chooses_the_truly_newest(backups: list[B]) -> None:
    chosen, _why = choose_backup([meta(b) for b in reversed(backups)], Target("immediate", "immediate"),
                                 [TimelineStep(1, 0, None)], None)
    assert chosen.id == backups[-1].id


def status_doc(backups: list[B], wal_age: float | None = 10.0) -> dict:
    return {"last_wal_age_seconds": wal_age,
            "backups": [{"id": b.id, "age_seconds": NOW - b.stop_time, "clock_skew": b.skew}
                        for b in chronology.oldest_first(backups)]}


@pytest.mark.parametrize("backups,wal_age,expected", [
    ([B("ok", 1, 0x2000000, true_end=3600)], 10.0, []),
    ([B("ok", 1, 0x2000000, skew=3.0, true_end=3600)], -2.0, []),  # jitter is not a wrong clock
    (FAST_THEN_REAL, 10.0, ["backup 20261230T000000Z ended 29.0d in the future by this host's clock"]),
    (REAL_THEN_SLOW, 10.0, ["backup 20261101T000000Z was taken with its host's clock 30.0d behind the server's"]),
    ([B("ok", 1, 0x2000000)], -3600.0, ["the newest WAL arrived 1.0h in the future by this host's clock"]),
    ([B("old", 1, 0x2000000, skew=60.0, true_end=DAY)], 10.0,
     ["backup old was taken with its host's clock 1.0m ahead of the server's"]),
])
def test_check_names_a_wrong_clock(backups: list[B], wal_age: float | None, expected: list[str]) -> None:
    assert clock_problems(status_doc(backups, wal_age)) == expected

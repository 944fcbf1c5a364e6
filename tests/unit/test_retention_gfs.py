"""Grandfather-father-son selection (walkeeper.core.retention_gfs.decide) over fabricated histories: no root,
no PostgreSQL, milliseconds."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from walkeeper.core.retention_gfs import GfsPolicy, Item, decide

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> datetime:
    """'2026-01-31 23:30' in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def items(*times: str) -> list[Item]:
    return [Item(t.replace(" ", "T"), at(t)) for t in times]


CASES = [
    # (name, history (UTC), policy, zone, kept ids)
    ("several per day: the newest of each day",
     ["2026-03-01 01:00", "2026-03-01 13:00", "2026-03-01 23:59", "2026-03-02 00:00", "2026-03-02 08:00"],
     GfsPolicy(daily=2), UTC, {"2026-03-01T23:59", "2026-03-02T08:00"}),
    ("gaps of days do not use up the count",
     ["2026-03-01 10:00", "2026-03-02 10:00", "2026-03-10 10:00", "2026-03-20 10:00"],
     GfsPolicy(daily=3), UTC, {"2026-03-02T10:00", "2026-03-10T10:00", "2026-03-20T10:00"}),
    ("a month end in UTC",
     ["2026-01-30 12:00", "2026-01-31 23:30", "2026-02-01 00:30"],
     GfsPolicy(monthly=2), UTC, {"2026-01-31T23:30", "2026-02-01T00:30"}),
    ("the same moments in Berlin: 23:30 UTC on Jan 31 is already February",
     ["2026-01-30 12:00", "2026-01-31 23:30", "2026-02-01 00:30"],
     GfsPolicy(monthly=2), BERLIN, {"2026-01-30T12:00", "2026-02-01T00:30"}),
    ("leap day: the newest of February 2024 is the 29th",
     ["2024-02-28 12:00", "2024-02-29 12:00", "2024-03-01 12:00", "2025-02-28 12:00"],
     GfsPolicy(monthly=3), UTC, {"2024-02-29T12:00", "2024-03-01T12:00", "2025-02-28T12:00"}),
    ("leap day as a day of its own",
     ["2024-02-28 12:00", "2024-02-29 06:00", "2024-02-29 18:00", "2024-03-01 12:00"],
     GfsPolicy(daily=2), UTC, {"2024-02-29T18:00", "2024-03-01T12:00"}),
    ("DST starts in Berlin (23-hour day): 00:30 and 01:30 UTC are the same local day",
     ["2026-03-28 22:30", "2026-03-29 00:30", "2026-03-29 01:30"],
     GfsPolicy(daily=2), BERLIN, {"2026-03-28T22:30", "2026-03-29T01:30"}),
    ("DST ends in Berlin (25-hour day, 02:30 twice): one day",
     ["2026-10-24 21:00", "2026-10-25 00:30", "2026-10-25 01:30", "2026-10-25 22:30"],
     GfsPolicy(daily=2), BERLIN, {"2026-10-24T21:00", "2026-10-25T22:30"}),
    ("ISO weeks do not split at New Year (Thu Dec 31 and Fri Jan 1 are week 53)",
     ["2026-12-27 12:00", "2026-12-31 12:00", "2027-01-01 12:00"],
     GfsPolicy(weekly=2), UTC, {"2026-12-27T12:00", "2027-01-01T12:00"}),
    ("yearly keeps each year's newest",
     ["2023-06-01 00:00", "2024-12-31 23:00", "2025-01-01 01:00", "2025-07-01 00:00"],
     GfsPolicy(yearly=2), UTC, {"2024-12-31T23:00", "2025-07-01T00:00"}),
    ("rules combine: kept by any rule stays",
     ["2025-06-15 12:00", "2025-12-31 23:00", "2026-01-15 12:00", "2026-01-31 12:00", "2026-02-27 12:00",
      "2026-02-28 10:00", "2026-02-28 20:00"],
     GfsPolicy(daily=2, monthly=3, yearly=2), UTC,
     {"2026-02-28T20:00", "2026-02-27T12:00", "2026-01-31T12:00", "2025-12-31T23:00"}),
    ("keep and keep_days with the periods",
     ["2026-01-01 00:00", "2026-02-01 00:00", "2026-02-25 00:00", "2026-02-26 00:00", "2026-02-27 00:00"],
     GfsPolicy(keep=1, keep_days=3, monthly=2), UTC,
     {"2026-02-27T00:00", "2026-02-26T00:00", "2026-01-01T00:00"}),
    ("more periods asked than exist keeps one per period",
     ["2026-01-01 00:00", "2026-01-01 05:00"], GfsPolicy(daily=30, weekly=10, monthly=12, yearly=5), UTC,
     {"2026-01-01T05:00"}),
]
NOW = at("2026-03-01 00:00")


@pytest.mark.parametrize(("history", "policy", "zone", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_gfs_selection(history: list[str], policy: GfsPolicy, zone: object, expected: set[str]) -> None:
    now = max(NOW, max(at(t) for t in history))
    kept = decide(items(*history), policy, now, zone)  # type: ignore[arg-type]
    assert set(kept) == expected
    shuffled = items(*history)
    random.Random(7).shuffle(shuffled)
    assert decide(shuffled, policy, now, zone) == kept  # type: ignore[arg-type]  # order never matters


def test_reasons_name_each_rule() -> None:
    history = items("2025-12-31 23:00", "2026-02-27 12:00", "2026-02-28 20:00")
    kept = decide(history, GfsPolicy(keep=1, daily=2, monthly=2, yearly=2), NOW, UTC)
    assert kept["2026-02-28T20:00"] == ["newest 1", "daily 2026-02-28", "monthly 2026-02", "yearly 2026"]
    assert kept["2026-02-27T12:00"] == ["daily 2026-02-27"]
    assert kept["2025-12-31T23:00"] == ["monthly 2025-12", "yearly 2025"]


def test_empty_policy_keeps_everything_and_ties_break_by_id() -> None:
    same = [Item("b", at("2026-01-01 00:00")), Item("a", at("2026-01-01 00:00"))]
    assert set(decide(same, GfsPolicy(), NOW, UTC)) == {"a", "b"}
    assert list(decide(same, GfsPolicy(daily=1), NOW, UTC)) == ["b"]
    assert decide([], GfsPolicy(daily=1), NOW, UTC) == {}
    with pytest.raises(ValueError):
        decide(same, GfsPolicy(weekly=-1), NOW, UTC)


def test_backups_keep_by_gfs_with_keep_and_the_newest() -> None:
    """expire's backup selection (retention.retained_backups) combines GFS with --keep and the newest rule."""
    from walkeeper.commands.expire import retained_backups
    from walkeeper.repo.inventory import BackupInfo

    def backup(n: int, when: str) -> BackupInfo:
        t = at(when).timestamp()
        return BackupInfo(id=when.replace(" ", "T"), timeline=1, stop_timeline=1, start_segno=n, stop_segno=n,
                          start_wal="", stop_wal="", start_lsn=n * 0x1000000, stop_lsn=n * 0x1000000 + 0x100,
                          start_time=t - 60, stop_time=t, wal_mode="archive", stored_size=0, objects=(),
                          clock_skew=None)

    history = [backup(n, w) for n, w in enumerate(
        ["2025-11-30 01:00", "2025-12-31 01:00", "2026-01-20 01:00", "2026-01-31 01:00", "2026-02-27 01:00",
         "2026-02-28 01:00", "2026-02-28 13:00"], start=1)]
    reasons: dict[str, list[str]] = {}
    kept = retained_backups(history, None, None, NOW.timestamp(), GfsPolicy(monthly=3), UTC, reasons)
    assert [b.id for b in kept] == ["2025-12-31T01:00", "2026-01-31T01:00", "2026-02-28T13:00"]
    assert reasons["2026-02-28T13:00"] == ["newest", "monthly 2026-02"]
    kept = retained_backups(history, 2, None, NOW.timestamp(), GfsPolicy(yearly=2), UTC)
    assert [b.id for b in kept] == ["2025-12-31T01:00", "2026-02-28T01:00", "2026-02-28T13:00"]

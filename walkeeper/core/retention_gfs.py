"""Grandfather-father-son retention: which items (backups or dumps) to keep, as a pure function.

Each rule keeps the newest item of each of the N most recent periods (days, ISO weeks, months,
years, in the given time zone) that hold an item. A gap (days without a backup) does not use up
the count, so a schedule that stalled for a week never makes expire remove everything. ``keep``
(the newest N) and ``keep_days`` (everything newer than now - D days) combine with them: an item
kept by any rule stays, and ``decide`` says which rules kept it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

Period = Callable[[datetime], str]

PERIODS: dict[str, Period] = {  # the label of the period a local time falls in
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: "{:04d}-W{:02d}".format(*t.isocalendar()[:2]),  # ISO year and week: no split at New Year
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}


@dataclass(frozen=True)
class GfsPolicy:
    keep: int | None = None
    keep_days: float | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    yearly: int | None = None

    def empty(self) -> bool:
        return all(v is None for v in (self.keep, self.keep_days, self.daily, self.weekly, self.monthly, self.yearly))

    def check(self) -> None:
        for name, value in (("keep", self.keep), ("keep-daily", self.daily), ("keep-weekly", self.weekly),
                            ("keep-monthly", self.monthly), ("keep-yearly", self.yearly)):
            if value is not None and value < 0:
                raise ValueError(f"--{name} must not be negative")
        if self.keep_days is not None and self.keep_days < 0:
            raise ValueError("--keep-days must not be negative")


@dataclass(frozen=True)
class Item:
    id: str
    time: datetime  # aware: when the item was complete


def decide(items: Sequence[Item], policy: GfsPolicy, now: datetime, zone: tzinfo) -> dict[str, list[str]]:
    """For each kept item id, the rules that keep it ("last 3", "daily 2026-01-31", ...); absent: removed.

    ``items`` in any order; equal times are broken by id so the answer never depends on the order.
    With an empty policy nothing is decided to be removed (every item is kept by "no rule").
    """
    policy.check()
    newest_first = sorted(items, key=lambda i: (i.time, i.id), reverse=True)
    kept: dict[str, list[str]] = {}
    if policy.empty():
        return {i.id: ["no retention rule"] for i in newest_first}
    for item in newest_first[:policy.keep or 0]:
        kept.setdefault(item.id, []).append(f"newest {policy.keep}")
    if policy.keep_days is not None:
        horizon = now - timedelta(days=policy.keep_days)
        for item in newest_first:
            if item.time >= horizon:
                kept.setdefault(item.id, []).append(f"last {policy.keep_days:g} days")
    for rule, count in (("daily", policy.daily), ("weekly", policy.weekly), ("monthly", policy.monthly),
                        ("yearly", policy.yearly)):
        if not count:
            continue
        period = PERIODS[rule]
        seen: list[str] = []
        for item in newest_first:
            key = period(item.time.astimezone(zone))
            if key in seen:
                continue
            seen.append(key)
            kept.setdefault(item.id, []).append(f"{rule} {key}")
            if len(seen) == count:
                break
    return kept


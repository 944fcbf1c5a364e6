"""One check verdict from several repositories' and the copy-lag judgement (walkeeper/repo/several.py)."""

from __future__ import annotations

import pytest

from walkeeper.repo.copylisting import LagFigure
from walkeeper.repo.copyplan import CopyLag
from walkeeper.repo.health import CRITICAL, OK, UNKNOWN, WARNING, CheckResult
from walkeeper.repo.several import judge_copy_lag, merge_checks


def result(status: int, *messages: str) -> CheckResult:
    return CheckResult(status, list(messages), [f"fact {status}"], [f"wal_age={status}s;;"])


@pytest.mark.parametrize(("states", "merged", "first_reason"), [
    ([OK, OK], OK, None),
    ([OK, WARNING], WARNING, "b: w"),
    ([WARNING, CRITICAL], CRITICAL, "b: c"),  # the worst repository's reasons first
    ([OK, UNKNOWN], WARNING, "b: u"),  # one repository unreadable while another reads: WARNING
    ([WARNING, UNKNOWN], WARNING, "a: w"),
    ([CRITICAL, UNKNOWN], CRITICAL, "a: c"),
    ([UNKNOWN, UNKNOWN], UNKNOWN, "a: u"),  # none readable: the plugin cannot say
])
def test_merge_checks(states: list[int], merged: int, first_reason: str | None) -> None:
    text = {OK: (), WARNING: ("w",), CRITICAL: ("c",), UNKNOWN: ("u",)}
    got = merge_checks([(name, result(s, *text[s])) for name, s in zip("ab", states, strict=True)])
    assert got.status == merged
    assert (got.messages[0] if got.messages else None) == first_reason
    assert got.facts == [f"a: fact {states[0]}", f"b: fact {states[1]}"]
    assert got.perfdata == [f"a_wal_age={states[0]}s;;", f"b_wal_age={states[1]}s;;"]


def test_one_repository_is_its_own_verdict() -> None:
    only = result(WARNING, "w")
    assert merge_checks([("a", only)]) is only


def lag(seconds: float, missing: str | None = None) -> LagFigure:
    return LagFigure("local", "offsite", CopyLag(seconds, 1 if seconds else 0, [], missing))


@pytest.mark.parametrize(("seconds", "crit", "warn", "status", "text"), [
    (0.0, 3600.0, None, OK, "offsite holds what local holds"),
    (120.0, 3600.0, None, OK, "offsite behind local for 2.0m"),
    (7200.0, 3600.0, None, CRITICAL, "offsite behind local for 2.0h (critical above 1.0h; oldest not copied: WAL X)"),
    (7200.0, None, 3600.0, WARNING, "warning above 1.0h"),
    (7200.0, 10800.0, 3600.0, WARNING, "warning above 1.0h"),
])
def test_copy_lag_thresholds(seconds: float, crit: float | None, warn: float | None, status: int, text: str) -> None:
    got = judge_copy_lag(CheckResult(OK), [lag(seconds, "WAL X" if seconds else None)], crit, warn)
    assert got.status == status
    assert any(text in line for line in got.messages + got.facts), got.messages + got.facts
    assert got.perfdata[-1].startswith(f"copy_lag_offsite={seconds:.0f}s;")

"""Chains of incremental backups (walkeeper.repo.chains) and how expire, restore and backup decide on them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from walkeeper.core.errors import RefusedError
from walkeeper.core.retention_gfs import GfsPolicy
from walkeeper.repo import chains
from walkeeper.repo.chains import BrokenChain


@dataclass(frozen=True)
class B:
    id: str
    type: str = "full"
    parent: str | None = None
    stop_timeline: int = 1
    stop_lsn: int = 0


def line(spec: str) -> list[B]:
    """'F1 I2<F1 I3<I2' -> backups in WAL order (stop_lsn = position), full or incremental on a parent."""
    out = []
    for n, item in enumerate(spec.split(), start=1):
        name, _, parent = item.partition("<")
        tli = 1
        if "@" in name:
            name, tli_text = name.split("@")
            tli = int(tli_text)
        out.append(B(name, "incremental" if parent else "full", parent or None, tli, n * 0x1000000))
    return out


@pytest.mark.parametrize(("spec", "backup", "expected"), [
    ("F1", "F1", ["F1"]),
    ("F1 I2<F1 I3<I2 I4<I3", "I4", ["F1", "I2", "I3", "I4"]),
    ("F1 I2<F1 I3<I2 I4<I3", "I2", ["F1", "I2"]),
    ("F1 I2<F1 F3 I4<F3", "I4", ["F3", "I4"]),
    ("F1 I2<F1 I3<F1", "I3", ["F1", "I3"]),  # --from F1: a branch
])
def test_chain_ids(spec: str, backup: str, expected: list[str]) -> None:
    assert chains.chain_ids(backup, chains.parent_map(line(spec))) == expected


@pytest.mark.parametrize(("spec", "backup", "missing", "child"), [
    ("I2<F1", "I2", "F1", "I2"),
    ("I2<F1 I3<I2", "I3", "F1", "I2"),
    ("F1 I3<I2 I4<I3", "I4", "I2", "I3"),
])
def test_broken_chain_names_the_missing_member(spec: str, backup: str, missing: str, child: str) -> None:
    with pytest.raises(BrokenChain) as caught:
        chains.chain_ids(backup, chains.parent_map(line(spec)))
    assert (caught.value.missing, caught.value.child) == (missing, child)
    assert f"needs backup {missing}" in str(caught.value) and caught.value.hint
    assert chains.chain_length(backup, chains.parent_map(line(spec))) is None


@pytest.mark.parametrize(("spec", "expected"), [
    ("F1 I2<F1 I3<I2", {"F1": ["F1", "I2", "I3"]}),
    ("F1 I2<F1 F3 I4<F3 I5<I4", {"F1": ["F1", "I2"], "F3": ["F3", "I4", "I5"]}),
    ("I2<F1 I3<I2 F4", {"F1": ["I2", "I3"], "F4": ["F4"]}),  # a broken chain: keyed by its missing root
])
def test_groups(spec: str, expected: dict[str, list[str]]) -> None:
    assert {k: [b.id for b in v] for k, v in chains.groups(line(spec)).items()} == expected


@pytest.mark.parametrize(("spec", "expected"), [
    ("F1 I2<F1", []),
    ("I2<F1 I3<I2", [("I2", "F1")]),
    ("F1 I3<I2 F4 I5<X", [("I3", "I2"), ("I5", "X")]),
])
def test_broken(spec: str, expected: list[tuple[str, str]]) -> None:
    assert chains.broken(line(spec)) == expected


@pytest.mark.parametrize(("spec", "timeline", "from_id", "expected"), [
    ("F1", 1, None, "F1"),
    ("F1 I2<F1 I3<I2", 1, None, "I3"),  # the newest complete backup, incremental or not
    ("F1 I2<F1 F3", 1, None, "F3"),
    ("F1 I2<F1 F3@2", 1, None, "I2"),  # same timeline only
    ("F1 I2<F1 F3@2", 2, None, "F3"),
    ("F1 I2<F1 I3<I2", 1, "F1", "F1"),  # --from
])
def test_choose_parent(spec: str, timeline: int, from_id: str | None, expected: str) -> None:
    choice = chains.choose_parent(line(spec), system_identifier="7", timeline=timeline, from_id=from_id)
    assert choice.parent_id == expected


@pytest.mark.parametrize(("spec", "timeline", "from_id", "systems", "message"), [
    ("", 1, None, {}, "no complete backup of this server on its timeline 1"),
    ("F1@2", 1, None, {}, "ended on timeline 2"),
    ("F1 F2", 1, None, {"F1": "8", "F2": "8"}, "no complete backup of this server"),
    ("F1", 1, "F9", {}, "--from F9: no complete backup"),
    ("F1@2", 1, "F1", {}, "--from F1: that backup ended on timeline 2"),
    ("F1", 1, "F1", {"F1": "8"}, "--from F1: that backup comes from database system 8"),
])
def test_choose_parent_refuses(spec: str, timeline: int, from_id: str | None, systems: dict[str, str],
                               message: str) -> None:
    with pytest.raises(RefusedError, match=message):
        chains.choose_parent(line(spec) if spec else [], system_identifier="7", timeline=timeline, from_id=from_id,
                             systems=systems)


def _infos(spec: str, days: list[int]) -> list:
    from walkeeper.repo.inventory import BackupInfo

    out = []
    for b, day in zip(line(spec), days, strict=True):
        t = datetime(2026, 3, day, 1, tzinfo=UTC).timestamp()
        n = b.stop_lsn // 0x1000000
        out.append(BackupInfo(id=b.id, timeline=1, stop_timeline=1, start_segno=n, stop_segno=n, start_wal="",
                              stop_wal="", start_lsn=n * 0x1000000 - 0x100, stop_lsn=b.stop_lsn, start_time=t - 60,
                              stop_time=t, wal_mode="archive", stored_size=0, objects=(), type=b.type,
                              parent=b.parent))
    return out


NOW = datetime(2026, 3, 20, 12, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("spec", "days", "keep", "keep_days", "gfs", "expected"), [
    # keep N counts chains: the two newest chains stay whole
    ("F1 I2<F1 I3<I2 F4 I5<F4 F6 I7<F6", [1, 2, 3, 8, 9, 15, 16], 2, None, None, ["F4", "I5", "F6", "I7"]),
    ("F1 I2<F1 I3<I2 F4 I5<F4 F6 I7<F6", [1, 2, 3, 8, 9, 15, 16], 1, None, None, ["F6", "I7"]),
    # only fulls: unchanged behaviour
    ("F1 F2 F3", [1, 2, 3], 2, None, None, ["F2", "F3"]),
    # a window reaching into a chain keeps the chain whole (its full ended before the window)
    ("F1 I2<F1 I3<I2 F4 I5<F4", [1, 5, 10, 12, 18], None, 5, None, ["F4", "I5"]),
    ("F1 I2<F1 I3<I2 F4 I5<F4", [1, 5, 14, 16, 18], None, 5, None, ["F1", "I2", "I3", "F4", "I5"]),
    # GFS counts a chain by its newest member: daily 2 keeps the chains whose newest members are the 2 newest days
    ("F1 I2<F1 I3<I2 F4 I5<F4 F6 I7<F6", [1, 2, 3, 8, 9, 15, 16], None, None, GfsPolicy(daily=2),
     ["F4", "I5", "F6", "I7"]),
    # a broken chain is its own unit
    ("I2<F1 I3<I2 F4 I5<F4", [2, 3, 8, 9], 1, None, None, ["F4", "I5"]),
    ("I2<F1 I3<I2 F4 I5<F4", [2, 3, 8, 9], 2, None, None, ["I2", "I3", "F4", "I5"]),
])
def test_expire_keeps_chains_whole(spec: str, days: list[int], keep: int | None, keep_days: float | None,
                                   gfs: GfsPolicy | None, expected: list[str]) -> None:
    from walkeeper.commands.expire import retained_backups

    reasons: dict[str, list[str]] = {}
    kept = retained_backups(_infos(spec, days), keep, keep_days, NOW, gfs, UTC, reasons)
    assert [b.id for b in kept] == expected
    ids = {b.id for b in kept}
    for b in _infos(spec, days):  # never an incremental without its parent (unless that one is missing)
        if b.id in ids and b.parent and b.parent in {x.id for x in _infos(spec, days)}:
            assert b.parent in ids


def test_expire_says_why_a_chain_member_stays() -> None:
    from walkeeper.commands.expire import retained_backups

    reasons: dict[str, list[str]] = {}
    retained_backups(_infos("F1 I2<F1 I3<I2", [1, 2, 3]), 1, None, NOW, None, UTC, reasons)
    assert reasons["F1"] == ["chain of I3"] and reasons["I2"] == ["chain of I3"]
    assert "newest" in reasons["I3"]


@pytest.mark.parametrize(("link", "expected"), [(True, 100 + 10 + 5 + 10 + 5), (False, 100 + 10 + 5 + 100)])
def test_space_needed(link: bool, expected: int) -> None:
    from walkeeper.postgres.combine import space_needed

    @dataclass
    class M:
        plain_size: int

    assert space_needed([M(100), M(10), M(5)], link) == expected  # type: ignore[list-item]


def _status_backups(lengths: list[int | None]) -> list[dict]:
    return [{"id": f"2026030{i + 1}T120000Z", "age_seconds": 3600.0, "clock_skew": None, "chain_length": n,
             "type": "full" if n == 1 else "incremental"} for i, n in enumerate(lengths)]


@pytest.mark.parametrize(("lengths", "max_chain", "expected"), [
    ([1, 2, 3], 8, []),
    ([1, 2, 3], 3, []),
    ([1, 2, 3, 4], 3, ["restoring backup 20260304T120000Z needs a chain of 4 backups, more than [backup] "
                       "max_chain (3): take a full backup"]),
    ([1, 2, 3, 4, 5, 1], 3, ["restoring backup 20260305T120000Z needs a chain of 5 backups, more than [backup] "
                             "max_chain (3): take a full backup"]),
    ([None, None, 1], 8, ["2 incremental backups cannot be restored, a backup of their chain is missing "
                          "(20260301T120000Z, 20260302T120000Z; run walkeeper verify)"]),
    ([1, 9], None, []),
])
def test_check_warns_about_long_and_broken_chains(lengths: list[int | None], max_chain: int | None,
                                                  expected: list[str]) -> None:
    from walkeeper.repo.health import OK, WARNING, CheckResult, Thresholds, judge

    repo = {"last_wal_age_seconds": 60.0, "gaps": 0, "system_identifier": "7", "newest_segment": None,
            "backups": _status_backups(lengths), "dumps": [], "dump_count": 0, "total_bytes": 1,
            "restore_tests": {}}
    result = judge(CheckResult(OK, repo=repo), Thresholds(max_chain=max_chain))
    assert result.messages == expected
    assert result.status == (WARNING if expected else OK)

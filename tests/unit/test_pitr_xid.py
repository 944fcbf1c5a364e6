"""Choosing a backup for ``pitr --target-xid``: pure decisions, no PostgreSQL (the real cluster: test_pitr.py)."""

from __future__ import annotations

import struct

import pytest

from walkeeper.core.errors import ConfigError, RefusedError
from walkeeper.postgres.basebackup import parse_pg_control
from walkeeper.repo.catalog import BackupMeta
from walkeeper.repo.pitr_target import XID_SPACE, XidMark, choose_for_xid, full_xid, parse_xid

E = XID_SPACE  # one epoch


def backup(n: int) -> BackupMeta:
    return BackupMeta(
        id=f"2026010{n}T120000Z", label=f"b{n}", start_lsn=f"0/{n}000028", stop_lsn=f"0/{n}000100",
        start_wal="", stop_wal="", timeline=1, stop_timeline=1, start_time=f"2026-01-0{n}T12:00:00+00:00",
        stop_time=f"2026-01-0{n}T12:01:00+00:00", pg_version=150000, system_identifier="1",
        wal_segment_size=16 << 20, wal_mode="archive", plain_size=1, stored_size=1, objects=[])


def marks(*bounds: tuple[int | None, int | None]) -> list[XidMark]:
    """(checkpoint next xid, next xid at the end) per backup, oldest first; backup n is backup(n)."""
    return [XidMark(backup(i + 1), ckpt, stop) for i, (ckpt, stop) in enumerate(bounds)]


# Three backups in epoch 0: checkpoint next xid, and the next xid once each had ended.
THREE = marks((1000, 1010), (2000, 2050), (3000, 3005))
# Only the checkpoints are known (metadata older than the end field, or read from pg_control).
THREE_CKPT = marks((1000, None), (2000, None), (3000, None))
# Across a wraparound: the first backup late in epoch 1, the second early in epoch 2.
WRAP = marks((E + 4_000_000_000, E + 4_000_000_010), (2 * E + 100, 2 * E + 120))


@pytest.mark.parametrize(("case", "points", "target", "chosen", "settled", "xid"), [
    ("before every backup: the oldest", THREE, 500, 1, False, 500),
    ("began during the oldest backup: nothing better than the oldest", THREE, 1005, 1, False, 1005),
    ("exactly the oldest's end", THREE, 1010, 1, True, 1010),
    ("between the first and the second", THREE, 1500, 1, True, 1500),
    ("assigned before the second backup ended, committed after it: the earlier one", THREE, 2020, 1, True, 2020),
    ("the second's end", THREE, 2050, 2, True, 2050),
    ("between the second and the third", THREE, 2999, 2, True, 2999),
    ("after the newest", THREE, 3005, 3, True, 3005),
    ("long after the newest", THREE, 1_000_000, 3, True, 1_000_000),
    ("checkpoints only: before the second's checkpoint", THREE_CKPT, 1999, 1, True, 1999),
    ("checkpoints only: after the second's checkpoint", THREE_CKPT, 2020, 2, True, 2020),
    ("a 64-bit value in epoch 0 is the same xid", THREE, 2100, 2, True, 2100),
    ("32-bit, late in epoch 1: the first backup", WRAP, 4_100_000_000, 1, True, E + 4_100_000_000),
    ("32-bit, after the wrap but before the second backup", WRAP, 50, 1, True, 2 * E + 50),
    ("32-bit, after the second backup", WRAP, 200, 2, True, 2 * E + 200),
    ("64-bit epoch 1 before the first backup: the oldest", WRAP, E + 200, 1, False, E + 200),
    ("64-bit epoch 2 after the second backup", WRAP, 2 * E + 121, 2, True, 2 * E + 121),
    ("64-bit epoch 1 between them", WRAP, E + 4_000_000_011, 1, True, E + 4_000_000_011),
])
def test_choose_for_xid(case: str, points: list[XidMark], target: int, chosen: int, settled: bool,
                        xid: int) -> None:
    choice = choose_for_xid(points, target)
    assert (choice.backup.label, choice.settled, choice.xid) == (f"b{chosen}", settled, xid), case
    assert choice.reason


def test_reasons_and_warnings_say_why() -> None:
    oldest = choose_for_xid(THREE, 500)
    assert "oldest" in oldest.reason and "recovery ended before configured recovery target" in oldest.reason
    between = choose_for_xid(THREE, 1500)
    assert "ended before transaction 1500" in between.reason and "1010" in between.reason and not between.warnings
    newest = choose_for_xid(THREE, 4000)
    assert "newest backup" in newest.reason and "archive holds its commit" in newest.reason
    # Without the end's next xid, a transaction that committed during the backup cannot be excluded.
    ckpt = choose_for_xid(THREE_CKPT, 2020)
    assert "checkpoint" in ckpt.reason
    (warning,) = ckpt.warnings
    assert "before consistent recovery point" in warning and f"--backup {backup(1).id}" in warning
    # A 32-bit xid read in another epoch says so.
    wrapped = choose_for_xid(WRAP, 50)
    assert any("read as 50 of epoch 2" in w for w in wrapped.warnings), wrapped.warnings
    # Implausibly far after the newest backup: a warning, not a refusal (what WAL holds is unknown).
    far = choose_for_xid(THREE, 3005 + E // 2)
    assert far.backup.label == "b3" and any("2^31" in w for w in far.warnings)


def test_more_than_a_wraparound_after_the_chosen_backup_is_refused() -> None:
    # Recovery compares 32-bit xids: it would stop at the same xid one epoch earlier.
    with pytest.raises(RefusedError, match="more than one wraparound"):
        choose_for_xid(WRAP, 3 * E + 200)
    assert choose_for_xid(WRAP, 3 * E + 50).backup.label == "b2"  # still within one epoch of it


def test_unknown_next_xids() -> None:
    # Nothing known: the oldest reaches the most transactions.
    choice = choose_for_xid(marks((None, None), (None, None)), 500)
    assert choice.backup.label == "b1" and not choice.settled
    # Unknown ones are passed over; the reference for a 32-bit xid is the newest known.
    choice = choose_for_xid(marks((1000, 1010), (None, None)), 1500)
    assert choice.backup.label == "b1" and choice.settled
    with pytest.raises(RefusedError, match="no backup"):
        choose_for_xid([], 100)


@pytest.mark.parametrize(("value", "reference", "expected"), [
    (100, 1000, 100),
    (100, None, 100),
    (100, E + 1000, E + 100),  # the current epoch
    (4_294_967_000, E + 1000, 4_294_967_000),  # just before the wrap: the previous epoch
    (2000, E - 500, E + 2000),  # just after the wrap: the next epoch
    (3_000_000_000, 1000, 3_000_000_000),  # epoch 0 has no earlier epoch
    (E + 5, 7 * E, E + 5),  # a 64-bit value says its epoch
])
def test_full_xid(value: int, reference: int | None, expected: int) -> None:
    assert full_xid(value, reference) == expected


@pytest.mark.parametrize(("text", "value"), [
    ("123", 123), (" 4294967396 ", E + 100), ("0123", 123), ("3", 3), (str(2**64 - 1), 2**64 - 1),
])
def test_parse_xid(text: str, value: int) -> None:
    assert parse_xid(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-5", "0x10", "1:100", "1.5", "2", "0", str(E), str(E + 2),
                                  str(2**64)])
def test_parse_xid_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_xid(text)


def control(version: int, *, checkpoint: int = 0x2000028, redo: int = 0x2000028, tli: int = 1,
            next_xid: int = 3 * E + 745) -> bytes:
    data = bytearray(8192)
    struct.pack_into("<QII", data, 0, 7_300_000_000_000_000_001, version, 202209061)
    struct.pack_into("<QQI", data, 32, checkpoint, redo, tli)
    if version >= 1201:
        struct.pack_into("<Q", data, 64, next_xid)
    else:
        struct.pack_into("<II", data, 60, next_xid >> 32, next_xid & 0xFFFFFFFF)
        struct.pack_into("<I", data, 68, 24576)  # nextOid follows: must not leak into the xid
    return bytes(data)


@pytest.mark.parametrize(("data", "next_xid"), [
    (control(1300), 3 * E + 745),  # PostgreSQL 13-16
    (control(1800, next_xid=745), 745),  # 17, 18 (wal_level sits in the padding before nextXid)
    (control(1100, next_xid=2 * E + 99), 2 * E + 99),  # 11: epoch and xid as two 32-bit fields
    (control(1300, redo=0x3000000), None),  # redo after the checkpoint: not a layout we know
    (control(1300, tli=0), None),
    (control(1300, next_xid=E + 1), None),  # not a normal xid
    (control(99999), None),
])
def test_parse_pg_control(data: bytes, next_xid: int | None) -> None:
    facts = parse_pg_control(data)
    assert facts.system_identifier == 7_300_000_000_000_000_001 and facts.next_xid == next_xid

from __future__ import annotations

import pytest

from tests.helpers.walfactory import MiB, make_segment
from walkeeper.accel import state
from walkeeper.core.errors import InvalidName, InvalidWal
from walkeeper.core.wal import (
    WalKind,
    check_segment,
    format_lsn,
    parse_history,
    parse_lsn,
    parse_wal_name,
    segment_name,
    segment_of_lsn,
    segno_of,
)
from walkeeper.core.walformat import is_segment_name, is_wal_name


@pytest.mark.parametrize(("name", "kind", "tli"), [
    ("000000010000000000000001", WalKind.SEGMENT, 1),
    ("0000000A00000003000000FF", WalKind.SEGMENT, 10),
    ("000000020000000000000005.partial", WalKind.PARTIAL, 2),
    ("000000010000000000000002.00000028.backup", WalKind.BACKUP, 1),
    ("00000002.history", WalKind.HISTORY, 2),
    ("00000001.history", WalKind.HISTORY, 1),  # PostgreSQL asks for it; it must parse and read as absent
])
def test_valid_names(name: str, kind: WalKind, tli: int) -> None:
    parsed = parse_wal_name(name)
    assert (parsed.kind, parsed.timeline, parsed.name) == (kind, tli, name)


@pytest.mark.parametrize("name", [
    "", "00000001000000000000001", "0000000100000000000000011", "000000010000000000000001.gz",
    "../000000010000000000000001", "pg_wal/000000010000000000000001", "000000000000000000000001",
    "00000000.history", "0000000g0000000000000001", "000000010000000000000001.partial.x",
    "000000010000000000000001\n", "/etc/passwd", "RECOVERYXLOG", "000000010000000000000001.backup",
    "00000002.HISTORY", "00000001000000000000000a",
])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        parse_wal_name(name)


@pytest.mark.parametrize("size", [1 * MiB, 16 * MiB, 64 * MiB, 1024 * MiB])
def test_segment_arithmetic_for_any_segment_size(size: int) -> None:
    per = 0x100000000 // size
    for segno in (0, 1, per - 1, per, per + 1, 5 * per + 3):
        name = segment_name(3, segno, size)
        assert segno_of(parse_wal_name(name), size) == segno
    assert segment_of_lsn(1, parse_lsn("1/0"), size) == segment_name(1, per, size)


def test_segment_field_out_of_range_for_size() -> None:
    # With 1 GiB segments only seg 0..3 exist within one xlogid.
    with pytest.raises(InvalidName):
        segno_of(parse_wal_name("000000010000000000000004"), 1024 * MiB)


def test_lsn_round_trip() -> None:
    for text in ("0/0", "0/16B3748", "1A/FF000028", "FFFFFFFF/FFFFFFFF"):
        assert format_lsn(parse_lsn(text)) == text
    with pytest.raises(ValueError):
        parse_lsn("16B3748")


def test_check_segment_accepts_real_layout() -> None:
    name, data = make_segment(1, 5)
    header = check_segment(parse_wal_name(name), data)
    assert header.segment_size == MiB and header.pg_version == 15 and header.pageaddr == 5 * MiB


def test_first_segment_of_new_timeline_may_carry_parent_timeline() -> None:
    name, data = make_segment(2, 5, header_tli=1)
    assert check_segment(parse_wal_name(name), data).timeline == 1
    name, data = make_segment(2, 5, header_tli=3)
    with pytest.raises(InvalidWal, match="timeline"):
        check_segment(parse_wal_name(name), data)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"pageaddr": 4 * MiB}, "renamed"),
    ({"magic": 0x1234}, "magic"),
])
def test_check_segment_rejects_mismatches(kwargs: dict[str, int], match: str) -> None:
    name, data = make_segment(1, 5, **kwargs)
    with pytest.raises(InvalidWal, match=match):
        check_segment(parse_wal_name(name), data)


def test_check_segment_rejects_truncated_file() -> None:
    name, data = make_segment(1, 5)
    with pytest.raises(InvalidWal, match="bytes"):
        check_segment(parse_wal_name(name), data[: MiB // 2])
    with pytest.raises(InvalidWal):
        check_segment(parse_wal_name(name), data[:10])


def test_partial_file_may_be_shorter() -> None:
    name, data = make_segment(1, 5)
    assert check_segment(parse_wal_name(name + ".partial"), data[: MiB // 2]).pageaddr == 5 * MiB


def test_parse_history() -> None:
    text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n"
    entries = parse_history(text)
    assert [(e.parent, format_lsn(e.switch_lsn)) for e in entries] == [(1, "0/3000158"), (2, "0/5000000")]
    with pytest.raises(InvalidWal):
        parse_history("2\t0/1\n1\t0/2\n")
    with pytest.raises(InvalidWal):
        parse_history("x\ty\n")


# -- the fast path and the full path judge names and first pages alike -------------------------------------

NAME_CASES = [
    "000000010000000000000001", "0000000A00000003000000FF", "000000020000000000000005.partial",
    "000000010000000000000002.00000028.backup", "00000002.history", "00000001.history",
    "", "00000001000000000000001", "0000000100000000000000011", "000000010000000000000001.gz",
    "pg_wal/000000010000000000000001", "00000001000000000000000a", "000000010000000000000001.backup",
    "000000010000000000000001.0000002.backup", "00000002.HISTORY", "0000000g.history", "RECOVERYXLOG",
    "000000010000000000000001.tmp", "000000010000000000000001\n", "00000001000000000000001.partial",
]


@pytest.mark.parametrize("name", NAME_CASES)
def test_fast_path_and_full_path_accept_the_same_names(name: str) -> None:
    try:
        parsed: WalKind | None = parse_wal_name(name).kind
    except InvalidName:
        parsed = None
    assert is_wal_name(name) == (parsed is not None)
    assert is_segment_name(name) == (parsed is WalKind.SEGMENT)


SYSID = 7300000000000000001
HEADER_CASES = [  # (make_segment arguments, bytes kept, file size told, full path's verdict)
    ({}, None, None, None),
    ({"header_tli": 1, "timeline": 2}, None, None, None),
    ({"magic": 0xD118}, None, None, None),
    ({"magic": 0xD100}, None, None, "magic"),
    ({"header_tli": 3, "timeline": 2}, None, None, "timeline"),
    ({"pageaddr": 4 * MiB}, None, None, "renamed"),
    ({"size": 2 * MiB}, None, MiB, "bytes"),
    ({}, 10, None, "too short"),
    ({"size": 3 * MiB}, None, None, "segment size"),
]


@pytest.mark.parametrize(("kwargs", "keep", "told", "verdict"), HEADER_CASES)
def test_fast_path_and_full_path_check_first_pages_alike(kwargs: dict[str, int], keep: int | None,
                                                        told: int | None, verdict: str | None) -> None:
    args = {"timeline": 1, **kwargs}
    tli = args.pop("timeline")
    size = args.pop("size", MiB)
    name, data = make_segment(tli, 5, sysid=SYSID, size=MiB, **args)
    if size != MiB:  # a header claiming another segment size
        data = data[:32] + size.to_bytes(4, "little") + data[36:]
    data = data[:keep] if keep else data
    if verdict is None:
        check_segment(parse_wal_name(name), data)
    else:
        with pytest.raises((InvalidWal, InvalidName), match=verdict):
            check_segment(parse_wal_name(name), data)
    fits = state.segment_header_fits(name, data[:64], told or len(data), SYSID)
    assert fits == (verdict is None)
    if verdict is None:  # the fast path also insists on this data directory's system
        assert not state.segment_header_fits(name, data[:64], len(data), SYSID + 1)
        assert not state.segment_header_fits(name, data[:64], len(data), None)

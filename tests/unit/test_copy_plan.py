"""The copy plan (walkeeper/repo/copyplan.py): dependency order and what is skipped, as tables."""

from __future__ import annotations

import pytest

from walkeeper.repo.copyplan import (
    COPY,
    LIST_BACKUP,
    LIST_DUMP,
    SAME_BACKUP,
    UNUSABLE,
    VERIFY,
    BackupRef,
    DestListing,
    DumpRef,
    LagInput,
    RestorePointRef,
    Selection,
    SourceListing,
    WalRef,
    copy_lag,
    plan,
)

H2 = "wal/00000002/00000002.history"


def seg(tli: int, n: int) -> str:
    return f"wal/{tli:08X}/{tli:08X}{0:08X}{n:08X}"


def source() -> SourceListing:
    """Segments 1..8 on timeline 1, a history file, full backup A (2..3), incremental B on A (5..6)."""
    wal = [WalRef(seg(1, n), n, 1000.0 + 400 * n) for n in range(1, 9)]  # seg 6 at 3400, 7 at 3800
    wal.insert(0, WalRef(H2, None, 1000.0))
    a = BackupRef("20260101T000000Z", ("backups/20260101T000000Z/base.tar",), (seg(1, 2), seg(1, 3)),
                  start_segno=2, start_time=2000.0)
    b = BackupRef("20260102T000000Z", ("backups/20260102T000000Z/base.tar",), (seg(1, 5), seg(1, 6)),
                  parent=a.id, start_segno=5, start_time=3000.0)
    dumps = [DumpRef("20260101T120000Z", ("dumps/20260101T120000Z/reserved", "dumps/20260101T120000Z/db-1.dump"),
                     2500.0)]
    points = [RestorePointRef("restore-points/20260101T130000000000Z-0000000005000000.json", 5 << 24, 2600.0)]
    return SourceListing(wal=wal, backups=[a, b], dumps=dumps, restore_points=points)


def steps(actions: list) -> list[str]:
    return [f"{a.op} {a.key}" for a in actions]


def index(actions: list, text: str) -> int:
    return steps(actions).index(text)


def test_backup_listed_after_its_data_and_wal_and_parent() -> None:
    actions = plan(source(), DestListing(), Selection())
    a, b = "20260101T000000Z", "20260102T000000Z"
    assert index(actions, f"copy {H2}") == 0  # history files first
    for before in (f"copy backups/{a}/base.tar", f"copy {seg(1, 2)}", f"copy {seg(1, 3)}"):
        assert index(actions, before) < index(actions, f"{LIST_BACKUP} {a}")
    for before in (f"{LIST_BACKUP} {a}", f"copy backups/{b}/base.tar", f"copy {seg(1, 6)}"):
        assert index(actions, before) < index(actions, f"{LIST_BACKUP} {b}")
    assert index(actions, "copy dumps/20260101T120000Z/db-1.dump") < index(actions, f"{LIST_DUMP} 20260101T120000Z")
    keys = [a.key for a in actions if a.op in (COPY, VERIFY)]
    assert len(keys) == len(set(keys)), "every object is visited once"
    assert {seg(1, n) for n in range(1, 9)} <= set(keys)


@pytest.mark.parametrize(("dest", "kinds", "since", "expect_ops", "absent"), [
    # everything absent: all copied
    (DestListing(), None, None, {f"copy {seg(1, 1)}", f"{LIST_BACKUP} 20260101T000000Z"}, set()),
    # present objects are verified, not copied
    (DestListing(keys={seg(1, 2), "backups/20260101T000000Z/base.tar"}), None, None,
     {f"{VERIFY} {seg(1, 2)}", f"{VERIFY} backups/20260101T000000Z/base.tar", f"{LIST_BACKUP} 20260101T000000Z"},
     {f"copy {seg(1, 2)}"}),
    # a backup the destination lists: compared, its objects not visited
    (DestListing(keys={"backups/20260101T000000Z/backup.json"}, backups={"20260101T000000Z"}), ["backups"], None,
     {f"{SAME_BACKUP} 20260101T000000Z", f"{LIST_BACKUP} 20260102T000000Z"},
     {"copy backups/20260101T000000Z/base.tar", f"{LIST_BACKUP} 20260101T000000Z"}),
    # --backups alone still brings each backup's WAL, but no other WAL, dumps or restore points
    (DestListing(), ["backups"], None, {f"copy {seg(1, 2)}", f"copy {seg(1, 6)}"},
     {f"copy {seg(1, 1)}", f"copy {seg(1, 4)}", f"copy {seg(1, 8)}", f"{LIST_DUMP} 20260101T120000Z"}),
    # --wal alone: every WAL file, no backup
    (DestListing(), ["wal"], None, {f"copy {seg(1, 1)}", f"copy {seg(1, 8)}", f"copy {H2}"},
     {f"{LIST_BACKUP} 20260101T000000Z", "copy backups/20260101T000000Z/base.tar"}),
    # --since the incremental: its parent comes too (first), WAL from the parent's start
    (DestListing(), None, "20260102T000000Z",
     {f"{LIST_BACKUP} 20260101T000000Z", f"{LIST_BACKUP} 20260102T000000Z", f"copy {seg(1, 2)}"},
     {f"copy {seg(1, 1)}", "copy dumps/20260101T120000Z/db-1.dump"}),
    # --since a time after every backup: WAL archived since then only
    (DestListing(), None, 3500.0, {f"copy {seg(1, 8)}", f"copy {seg(1, 7)}"},
     {f"copy {seg(1, 6)}", f"{LIST_BACKUP} 20260102T000000Z"}),
    # --dumps --restore-points
    (DestListing(), ["dumps", "restore-points"], None,
     {"copy dumps/20260101T120000Z/reserved", f"{LIST_DUMP} 20260101T120000Z",
      "copy restore-points/20260101T130000000000Z-0000000005000000.json"},
     {f"copy {seg(1, 1)}", f"copy {H2}"}),
])
def test_what_is_planned(dest: DestListing, kinds: list[str] | None, since: str | float | None,
                         expect_ops: set[str], absent: set[str]) -> None:
    chosen = Selection(frozenset(kinds) if kinds else Selection().kinds,
                       since if isinstance(since, str) else None, since if isinstance(since, float) else None)
    got = set(steps(plan(source(), dest, chosen)))
    assert expect_ops <= got, expect_ops - got
    assert not (absent & got), absent & got


def test_parent_first_even_when_listed_later_and_unusable_children() -> None:
    src = source()
    a, b = src.backups
    src.backups = [b, a]  # a child before its parent in the given order
    order = [s for s in steps(plan(src, DestListing(), Selection())) if s.startswith(LIST_BACKUP)]
    assert order == [f"{LIST_BACKUP} {a.id}", f"{LIST_BACKUP} {b.id}"]
    broken = BackupRef(a.id, a.objects, a.wal, missing=(seg(1, 3),), start_segno=2, start_time=2000.0)
    src.backups = [broken, b]
    actions = plan(src, DestListing(), Selection())
    unusable = {a.key: a.detail for a in actions if a.op == UNUSABLE}
    assert set(unusable) == {a.id, b.id}  # the child of an unusable parent is not listed either
    assert "000000010000000000000003" in unusable[a.id] and a.id in unusable[b.id]
    assert f"{LIST_BACKUP} {a.id}" not in steps(actions) and f"copy {a.objects[0]}" not in steps(actions)


def test_missing_parent_is_unusable() -> None:
    src = source()
    src.backups = [src.backups[1]]
    actions = plan(src, DestListing(), Selection(frozenset({"backups"})))
    assert [(a.op, a.key) for a in actions if a.kind == "backup" and a.op != COPY] == \
        [(UNUSABLE, "20260102T000000Z")]


# -- lag ----------------------------------------------------------------------------------------------

def segs(*items: tuple[int, int, float]) -> list[tuple[int, int, float, str]]:
    return [(t, s, m, f"{t:08X}{0:08X}{s:08X}") for t, s, m in items]


@pytest.mark.parametrize(("src", "dst", "seconds", "behind", "backups"), [
    (LagInput(segs((1, 1, 100), (1, 2, 200)), [("A", 150)]), LagInput(segs((1, 1, 100), (1, 2, 200)), [("A", 150)]),
     0.0, 0, []),
    # destination empty: the oldest source object's age
    (LagInput(segs((1, 1, 100), (1, 2, 200)), [("A", 150)]), LagInput([], []), 900.0, 2, ["A"]),
    # two segments behind: the first one waits since 300
    (LagInput(segs((1, 1, 100), (1, 2, 300), (1, 3, 400)), []), LagInput(segs((1, 1, 100)), []), 700.0, 2, []),
    # a newer backup missing, WAL complete
    (LagInput(segs((1, 1, 100)), [("A", 150), ("B", 600)]), LagInput(segs((1, 1, 100)), [("A", 150)]),
     400.0, 0, ["B"]),
    # expired differently: the destination lacks an old backup only (no lag)
    (LagInput(segs((1, 5, 100)), [("A", 50), ("B", 90)]), LagInput(segs((1, 5, 100)), [("B", 90)]), 0.0, 0, []),
    # a new timeline in the source only
    (LagInput(segs((1, 5, 100), (2, 5, 800)), []), LagInput(segs((1, 5, 100)), []), 200.0, 1, []),
])
def test_copy_lag(src: LagInput, dst: LagInput, seconds: float, behind: int, backups: list[str]) -> None:
    lag = copy_lag(src, dst, now=1000.0)
    assert (lag.seconds, lag.wal_behind, lag.backups_behind) == (seconds, behind, backups)
    assert (lag.oldest_missing is None) == (seconds == 0.0)


# -- the copier's pure rules ----------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "dest", "raw"), [
    (("aes-256-gcm", "k1", "zstd"), ("aes-256-gcm", "k1", "zstd"), True),
    (("aes-256-gcm", "k1", "zstd"), ("aes-256-gcm", "k2", "zstd"), False),  # other key: re-encrypted
    (("aes-256-gcm", "k1", "zstd"), ("aes-256-gcm", "k1", "none"), False),  # other compression
    (("aes-256-gcm", "k1", "zstd"), ("none", None, "zstd"), False),  # into an unencrypted repository
    (("none", None, "zstd"), ("none", None, "zstd"), True),
    (("none", None, "zstd"), ("aes-256-gcm", "k1", "zstd"), False),  # into an encrypted one
    (("x25519-aes-256-gcm", "p1", "zstd"), ("x25519-aes-256-gcm", "p1", "zstd"), True),
])
def test_same_encoding_decides_raw_copy(header: tuple, dest: tuple, raw: bool) -> None:
    from walkeeper.repo.copier import same_encoding

    assert same_encoding(header, dest) is raw


@pytest.mark.parametrize(("source", "dest", "refused"), [
    (("1", 16), None, None),  # an empty destination takes the source's identity
    (("1", 16), ("1", 16), None),
    (("1", 16), (None, None), None),  # a destination initialised without a cluster
    (("1", 16), ("2", 16), "database system"),
    (("1", 16), ("1", 64), "segments"),
])
def test_identity_must_agree(source: tuple, dest: tuple | None, refused: str | None) -> None:
    from walkeeper.core.errors import ForeignClusterError
    from walkeeper.repo.copier import check_identity
    from walkeeper.repo.repository import RepoMeta

    def meta(sysid: str | None, mib: int | None) -> RepoMeta:
        return RepoMeta(system_identifier=sysid, wal_segment_size=mib and mib << 20)

    if refused is None:
        check_identity(meta(*source), dest and meta(*dest), "a", "b")
    else:
        with pytest.raises(ForeignClusterError, match=refused):
            check_identity(meta(*source), dest and meta(*dest), "a", "b")


@pytest.mark.parametrize(("text", "backup", "epoch"), [
    (None, None, None),
    ("20260101T120000Z", "20260101T120000Z", None),
    ("20260101T120000Z-2", "20260101T120000Z-2", None),
    ("2026-01-01T12:00:00Z", None, 1767268800.0),
    ("2026-01-01 12:00:00", None, 1767268800.0),  # no offset: UTC
    ("2026-01-01 13:00:00+01:00", None, 1767268800.0),
])
def test_since_is_a_backup_id_or_a_time(text: str | None, backup: str | None, epoch: float | None) -> None:
    from walkeeper.commands.copy import parse_since

    assert parse_since(text) == (backup, epoch)


def test_since_garbage_is_one_clear_error() -> None:
    from walkeeper.commands.copy import parse_since
    from walkeeper.core.errors import ConfigError

    with pytest.raises(ConfigError, match="neither a backup id nor a time"):
        parse_since("yesterday")

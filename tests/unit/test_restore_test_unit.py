"""restore-test's pure decisions: reading a server log, check files, work directory safety, stale runs."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from walkeeper.commands.restore_test import classify_failure, read_check_file
from walkeeper.core.errors import RefusedError
from walkeeper.postgres.scratch_cluster import LOCK_NAME, WORK_PREFIX, WorkDir, inside_data_directory, remove_stale


@pytest.mark.parametrize(("lines", "outcome", "reason"), [
    (["LOG:  restored log file", "walkeeper wal-fetch: error: wal/00000001/X: corrupted or truncated (x)",
      "FATAL:  could not restore file"], "target-not-reached", "recovery stopped: wal/00000001/X: corrupted"),
    (["FATAL:  recovery ended before configured recovery target was reached"], "target-not-reached",
     "recovery ended before the target"),
    (["FATAL:  requested recovery stop point is before consistent recovery point"], "target-not-reached",
     "the target lies before the backup's consistent point"),
    (["2026-01-01 UTC [1] FATAL:  could not load library x.so"], "not-started", "the server stopped: could not"),
    ([], "not-started", "the server stopped during recovery"),
])
def test_classify_failure(lines: list[str], outcome: str, reason: str) -> None:
    got_outcome, got_reason = classify_failure(lines)
    assert got_outcome == outcome and got_reason.startswith(reason), got_reason


def test_check_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "checks.sql"
    f.write_text("-- a comment\n\nselect true;\n# another\n  select count(*) > 0 from t  \n")
    assert read_check_file(str(f)) == ["select true", "select count(*) > 0 from t"]


def test_refuses_a_work_directory_inside_a_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "pgdata"
    (data / "global").mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    (data / "global" / "pg_control").write_bytes(b"x")
    assert inside_data_directory(data / "sub" / "dir") == data
    assert inside_data_directory(tmp_path / "elsewhere") is None
    with pytest.raises(RefusedError, match="inside the data directory"):
        WorkDir.create(data / "rt", "20260101T000000Z-abcdef")
    assert not (data / "rt").exists()


def test_stale_work_directories_are_removed_live_and_kept_ones_stay() -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="wk-rt-"))  # short: the socket path must fit in sun_path
    live = WorkDir.create(tmp_path, "20260101T000000Z-aaaaaa")  # holds its lock
    stale = tmp_path / f"{WORK_PREFIX}20260101T000000Z-bbbbbb"
    (stale / "data").mkdir(parents=True)
    (stale / LOCK_NAME).write_text("999999\n")  # its process is gone: nobody holds the lock
    kept = tmp_path / f"{WORK_PREFIX}20260101T000000Z-cccccc"
    kept.mkdir()
    (kept / LOCK_NAME).write_text("1\n")
    (kept / "keep").touch()
    assert remove_stale(tmp_path) == [stale]
    assert live.root.exists() and kept.exists() and not stale.exists()
    fd = os.open(live.root / LOCK_NAME, os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # two runs never share a directory
    os.close(fd)
    live.remove()
    assert not live.root.exists()
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize(("found", "dump_major", "chosen"), [
    ([(15, "a"), (16, "b"), (18, "c")], 16, (16, "b")),  # the same major when there is one
    ([(15, "a"), (18, "c")], 16, (18, "c")),  # else the oldest newer one (pg_restore reads older dumps)
    ([(15, "a")], 18, None),  # nothing new enough: refused
    ([], 15, None),
])
def test_choose_server_for_a_dump(found: list, dump_major: int, chosen: tuple | None) -> None:
    from walkeeper.commands.restore_test_dump import choose_server

    assert choose_server([(m, Path(p)) for m, p in found], dump_major) == (
        None if chosen is None else (chosen[0], Path(chosen[1])))


@pytest.mark.parametrize("chunks", [
    [b"CREATE ROLE a;\nCREATE TABLESPACE t OWNER a LOCATION '/srv/t';\nALTER ROLE a;\n"],
    [b"CREATE ROLE a;\nCREATE TABLE", b"SPACE t OWNER a LOCATION '/srv/t';\nALTER", b" ROLE a;\n"],
    [b"CREATE ROLE a;\n", b"CREATE TABLESPACE t LOCATION '/srv/t';", b"\nALTER ROLE a;"],
])
def test_globals_without_tablespaces(chunks: list[bytes]) -> None:
    from walkeeper.postgres.dump_restore import _without_tablespaces

    out = b"".join(_without_tablespaces(iter(chunks)))
    assert out.rstrip(b"\n") == b"CREATE ROLE a;\nALTER ROLE a;"


def _dump(*items: tuple[str, str | None]):  # type: ignore[no-untyped-def]
    from walkeeper.repo.catalog import DumpItem, DumpMeta

    return DumpMeta(id="20260101T000000Z", label="", kind="all" if items[0][0] == "globals" else "database",
                    start_time="", stop_time="", server_version=150004, pg_dump_version="15.4", options=[],
                    items=[DumpItem(f"k{n}", kind, db, 1, 1, "") for n, (kind, db) in enumerate(items)],
                    plain_size=1, stored_size=1)


@pytest.mark.parametrize(("items", "order", "contents"), [
    ([("globals", None), ("database", "postgres"), ("database", "shop")],
     [("globals", None), ("database", "postgres"), ("database", "shop")], "globals + databases postgres, shop"),
    ([("database", "shop")], [("database", "shop")], "database shop"),
])
def test_dump_restore_order_and_contents(items: list, order: list, contents: str) -> None:
    from walkeeper.commands.restore_test_dump import dump_contents, restore_order

    dump = _dump(*items)
    assert restore_order(dump) == order and dump_contents(dump) == contents

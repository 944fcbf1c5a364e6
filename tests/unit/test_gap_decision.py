"""The gap decision of Repository.fetch_wal and the pusher's ordered stores, in process on a local
repository (no root, seconds).

A missing segment is "not found" when nothing later of its timeline is stored; with a later one
stored it is waited for (a parallel push may still be storing it) and served if it appears, and
only after ``gap_wait`` seconds a gap. tests/contract/test_wal_contract.py checks the same through the
installed command (exit codes 0 / 1 / 208) on local storage and S3, tests/postgres/test_log_shipping.py
with a real standby.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers.walfactory import MiB, fake_datadir, make_segment
from walkeeper.accel import state
from walkeeper.commands.pusher import NotYourTurn, Pusher
from walkeeper.core.config import load_config
from walkeeper.core.errors import GapError, NotFound
from walkeeper.core.wal import parse_wal_name
from walkeeper.repo.fanout import Fanout, Target
from walkeeper.repo.repository import Repository, open_repository

SYSID = 7300000000000000001


def repository(root: Path) -> Repository:
    config = load_config(env={"WALKEEPER_ENCRYPTION_METHOD": "none", "WALKEEPER_COMPRESSION_METHOD": "none"},
                         repo=str(root))
    return open_repository(config)


def store(repo: Repository, name: str) -> None:
    _, data = make_segment(int(name[:8], 16), int(name[16:24], 16), sysid=SYSID)
    repo.push_wal(parse_wal_name(name), data[: MiB // 2] if name.endswith(".partial") else data)


SEG = "0000000{}000000000000000{}".format


@pytest.mark.parametrize(("stored", "wanted", "appears_after", "gap_wait", "outcome"), [
    # stored first by a parallel push: waited for, then served
    ([SEG(1, 3), SEG(1, 5)], SEG(1, 4), 0.4, 5.0, "served"),
    # still missing after the bound: a gap, after the whole wait
    ([SEG(1, 3), SEG(1, 5)], SEG(1, 4), None, 0.5, "gap"),
    ([SEG(1, 3), SEG(1, 5)], SEG(1, 4), None, 0.0, "gap"),
    # appears only after the bound: still a gap (the bound is the promise)
    ([SEG(1, 3), SEG(1, 5)], SEG(1, 4), 1.5, 0.3, "gap"),
    # nothing later: "not found" at once, whatever the bound
    ([SEG(1, 3)], SEG(1, 4), None, 30.0, "not found"),
    ([SEG(1, 3), SEG(1, 5)], SEG(1, 6), None, 30.0, "not found"),
    # later WAL of another timeline, or only this segment's .partial: not a gap of this timeline
    ([SEG(1, 3), SEG(2, 5)], SEG(1, 4), None, 30.0, "not found"),
    ([SEG(1, 3), SEG(1, 4) + ".partial"], SEG(1, 4), None, 30.0, "not found"),
])
def test_missing_segment_decision(tmp_path: Path, stored: list[str], wanted: str, appears_after: float | None,
                                  gap_wait: float, outcome: str) -> None:
    repo = repository(tmp_path / "repo")
    repo.ensure_identity(SYSID, MiB, 15)
    for name in stored:
        store(repo, name)
    storer = None
    if appears_after is not None:  # another writer (its own Repository, as another process would be)
        storer = threading.Timer(appears_after, store, (repository(tmp_path / "repo"), wanted))
        storer.start()
    began = time.monotonic()
    try:
        if outcome == "served":
            assert repo.fetch_wal(parse_wal_name(wanted), gap_wait=gap_wait) == make_segment(
                1, int(wanted[16:24], 16), sysid=SYSID)[1]
        else:
            with pytest.raises(GapError if outcome == "gap" else NotFound) as caught:
                repo.fetch_wal(parse_wal_name(wanted), gap_wait=gap_wait)
            if outcome == "gap":
                assert f"did not appear within {gap_wait:g} s" in str(caught.value)
    finally:
        elapsed = time.monotonic() - began
        if storer is not None:
            storer.join()
    if outcome == "served":
        assert appears_after is not None and appears_after <= elapsed < gap_wait
    elif outcome == "gap":
        assert gap_wait <= elapsed < gap_wait + 1.0
    else:
        assert elapsed < 1.0


# -- the pusher publishes in order ------------------------------------------------------------------------


def pusher_world(tmp_path: Path, ready: list[str], done: Sequence[str] = ()) -> tuple[Pusher, Repository]:
    """A pusher over a fake data directory whose archive_status lists ``ready`` (.ready) and ``done`` (.done)."""
    config = load_config(env={"WALKEEPER_ENCRYPTION_METHOD": "none", "WALKEEPER_COMPRESSION_METHOD": "none"},
                         repo=str(tmp_path / "repo"))
    repo = open_repository(config)
    repo.ensure_identity(SYSID, MiB, 15)
    datadir = fake_datadir(tmp_path / "pgdata")
    for name in ready:
        (datadir / "pg_wal" / "archive_status" / f"{name}.ready").touch()
    for name in done:
        (datadir / "pg_wal" / "archive_status" / f"{name}.done").touch()
    status = tmp_path / "status"
    status.mkdir(mode=0o700)
    return Pusher(config, Fanout([Target("default", repo)]), str(status), str(datadir)), repo


@pytest.mark.parametrize(("ready", "done", "stored", "wanted", "outcome"), [
    ([SEG(1, 3), SEG(1, 4)], [], [], SEG(1, 4), "refused"),  # 3 neither stored nor being stored: its push failed
    ([SEG(1, 3), SEG(1, 4)], [], [SEG(1, 3)], SEG(1, 4), "now"),  # stored, not marked .done yet
    ([SEG(1, 4)], [SEG(1, 3)], [], SEG(1, 4), "now"),  # .done: PostgreSQL's own call stored it
    ([SEG(1, 3), SEG(1, 4)], [], [], SEG(1, 3), "now"),  # later ones do not count
    ([SEG(1, 3), SEG(2, 4)], [], [], SEG(2, 4), "now"),  # nor another timeline's
    ([SEG(1, 3)], [], [], "00000002.history", "now"),  # nor anything but segments
])
def test_pusher_stores_a_segment_only_after_the_earlier_ones(
        tmp_path: Path, ready: list[str], done: list[str], stored: list[str], wanted: str, outcome: str) -> None:
    pusher, repo = pusher_world(tmp_path, ready, done)
    for name in stored:
        store(repo, name)
    if outcome == "refused":
        with pytest.raises(NotYourTurn, match=SEG(1, 3)):
            pusher.wait_turn(wanted)
    else:
        pusher.wait_turn(wanted)


def test_pusher_waits_for_an_earlier_segment_being_stored(tmp_path: Path) -> None:
    """Earlier one being stored (PostgreSQL's own call, marked NAME.pushing): wait for its store."""
    pusher, repo = pusher_world(tmp_path, [SEG(1, 3), SEG(1, 4)])
    marker = Path(pusher.status) / (SEG(1, 3) + state.PUSHING_SUFFIX)
    state.write_record(str(marker), {"v": state.RECORD_VERSION, "name": SEG(1, 3), "pid": os.getpid()})

    def finish() -> None:  # the other call stores it, removes its marker; PostgreSQL then marks it .done
        store(repository(tmp_path / "repo"), SEG(1, 3))
        marker.unlink()

    storer = threading.Timer(0.4, finish)
    storer.start()
    began = time.monotonic()
    pusher.wait_turn(SEG(1, 4))
    assert time.monotonic() - began >= 0.4 and repo.stored_sha256(f"wal/00000001/{SEG(1, 3)}")
    storer.join()

"""Backup writers: which writer is alive, which leftover may go (pure decisions), and id reservation.

Tables for the decisions (no root, no PostgreSQL, no clock: ``now`` and the process table are
arguments); the reservation runs against a real local repository with real processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from walkeeper.repo.writers import (
    DIR_GRACE,
    STALE_AFTER,
    TEMP_SAFE_AGE,
    Here,
    Reservation,
    Writer,
    WriterState,
    judge,
    leftover_is_dead,
    marker_key,
    process_start,
    read_writer,
)
from walkeeper.storage.base import Leftover

NOW = 1_800_000_000.0
PROCS = {100: "5000", 200: "7000"}  # pid -> start time on "this" host
HERE = Here("db1", "boot-a", PROCS.get)


def writer(host: str = "db1", pid: int = 100, boot: str | None = "boot-a", start: str | None = "5000") -> Writer:
    return Writer("20260101T000000Z", host, pid, "2026-01-01T00:00:00+00:00", boot, start, "t")


@pytest.mark.parametrize(("marker", "refreshed", "alive", "why"), [
    # On the writer's own host the process table decides, whatever the marker's age.
    (writer(), NOW - 10 * STALE_AFTER, True, "process 100 is running"),
    (writer(pid=300), NOW, False, "process 300 is gone"),
    (writer(start="4999"), NOW, False, "the pid now belongs to another process"),
    (writer(boot="boot-b"), NOW, False, "rebooted"),
    (writer(start=None), NOW - 10 * STALE_AFTER, True, "process 100 is running"),  # no start recorded: pid only
    # Another host (or no boot id to compare): the heartbeat's age decides.
    (writer(host="db2", pid=300), NOW - 60, True, "refreshed 60s ago"),
    (writer(host="db2"), NOW - STALE_AFTER - 1, False, "last refreshed"),
    (writer(boot=None, pid=300), NOW - 60, True, "refreshed"),
    (writer(boot=None), NOW - STALE_AFTER - 1, False, "last refreshed"),
    (None, NOW - 60, True, "refreshed"),  # an unreadable marker: by age too
    (None, NOW - STALE_AFTER - 1, False, "last refreshed"),
])
def test_judge(marker: Writer | None, refreshed: float, alive: bool, why: str) -> None:
    got_alive, got_why = judge(marker, refreshed, NOW, HERE)
    assert got_alive is alive and why in got_why, got_why


def test_judge_without_proc_falls_back_to_age() -> None:
    blind = Here("db1", None, lambda _pid: None)
    assert judge(writer(pid=300), NOW - 60, NOW, blind)[0] is True
    assert judge(writer(pid=300), NOW - STALE_AFTER - 1, NOW, blind)[0] is False


RUNNING = "20260101T000000Z"
DEAD = "20260101T000001Z"
DONE = "20260101T000002Z"
STATES = {RUNNING: WriterState(RUNNING, writer(), NOW, True, "running"),
          DEAD: WriterState(DEAD, writer(pid=300), NOW, False, "gone")}


def item(kind: str, path: str, age: float) -> Leftover:
    return Leftover(kind, path, 10, NOW - age)


@pytest.mark.parametrize(("leftover", "removed", "dead"), [
    (item("temp", f"backups/{RUNNING}/.tmp.base.tar.1", 10 * TEMP_SAFE_AGE), (), False),  # running: never
    (item("upload", f"backups/{RUNNING}/base.tar", 10 * TEMP_SAFE_AGE), (), False),
    (item("temp", f"backups/{DEAD}/.tmp.base.tar.1", 1), (), True),  # dead writer: at once
    (item("upload", f"backups/{DEAD}/base.tar", 1), (), True),
    (item("temp", f"backups/{DONE}/.tmp.base.tar.1", 1), (), True),  # complete: nothing is in flight
    (item("temp", "backups/20260101T000009Z/.tmp.base.tar.1", 60), (), False),  # no marker: by age
    (item("temp", "backups/20260101T000009Z/.tmp.base.tar.1", TEMP_SAFE_AGE + 1), (), True),
    (item("temp", "wal/00000001/.tmp.000000010000000000000001.ab", 60), (), False),  # a wal-push in flight
    (item("temp", "wal/00000001/.tmp.000000010000000000000001.ab", TEMP_SAFE_AGE + 1), (), True),
    (item("temp", ".tmp.walkeeper.json.ab", TEMP_SAFE_AGE + 1), (), True),
    (item("dir", "backups/20260101T000009Z", 5), (), False),  # maybe a backup about to write its marker
    (item("dir", "backups/20260101T000009Z", DIR_GRACE + 1), (), True),
    (item("dir", "backups/20260101T000009Z", 5), ("20260101T000009Z",), True),  # its backup just removed
    (item("dir", "backups", DIR_GRACE * 100), (), False),  # only backup directories
    (item("dir", "wal/00000001", DIR_GRACE * 100), (), False),
    (item("dir", "backups/not-an-id", DIR_GRACE * 100), (), False),
])
def test_leftover_is_dead(leftover: Leftover, removed: tuple[str, ...], dead: bool) -> None:
    assert leftover_is_dead(leftover, NOW, {DONE}, STATES, removed) is dead


def test_writer_marker_round_trip_and_process_start() -> None:
    w = writer()
    assert Writer.from_json(w.to_json(), "x") == w
    assert process_start(os.getpid())  # this process has a start time
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_start(child.pid) is None  # reaped: gone


def test_reservations_never_share_an_id(tmp_path: Path) -> None:
    """Twenty threads reserve ids for the same second: twenty distinct ids, each marker its owner's."""
    from walkeeper.repo.catalog import Catalog
    from walkeeper.repo.repository import Repository
    from walkeeper.storage.local import LocalStorage

    storage = LocalStorage(tmp_path / "repo")
    catalog = Catalog(Repository(storage))
    held: list[Reservation] = []
    barrier = threading.Barrier(20)

    def take() -> None:
        barrier.wait()
        held.append(Reservation.take(catalog, "20260101T000000Z"))

    threads = [threading.Thread(target=take) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = sorted(r.backup_id for r in held)
    assert len(set(ids)) == 20 and ids[0] == "20260101T000000Z" and "20260101T000000Z-19" in ids
    for r in held:
        assert read_writer(storage, r.backup_id) == r.writer
    # A failing backup removes only what it wrote, then its marker; another backup's objects stay.
    first, second = held[0], held[1]
    first.put(f"backups/{first.backup_id}/base.tar", b"mine")
    storage.put(f"backups/{first.backup_id}/other.tar", b"not written through the reservation")
    second.put(f"backups/{second.backup_id}/base.tar", b"theirs")
    first.abandon()
    assert [i.key for i in storage.list(f"backups/{first.backup_id}/")] == [f"backups/{first.backup_id}/other.tar"]
    assert storage.get(f"backups/{second.backup_id}/base.tar") == b"theirs"
    assert storage.get(marker_key(second.backup_id))


def test_marker_age_is_measured_on_the_storage_clock(tmp_path: Path) -> None:
    """From another host, a heartbeat is stale only by the storage's clock: a host whose clock runs
    ahead (or a quiet repository) must not find a live writer dead."""
    from walkeeper.repo.writers import writer_states
    from walkeeper.storage.local import LocalStorage

    storage = LocalStorage(tmp_path / "repo")
    other = Writer("20260101T000000Z", "db2", 4242, "2026-01-01T00:00:00+00:00", "boot-z", "1", "t")
    storage.put(marker_key(other.backup_id), other.to_json())
    hour_ago = NOW - 3600
    os.utime(storage.root / marker_key(other.backup_id), (hour_ago, hour_ago))
    listing = list(storage.list("backups/"))
    _complete, states = writer_states(storage, listing, now=NOW, machine=HERE)
    assert states[other.backup_id].alive  # nothing newer was written: no evidence an hour went by
    _complete, states = writer_states(storage, listing, now=NOW, machine=HERE, newest=NOW - 60)
    assert not states[other.backup_id].alive and "last refreshed 3540s ago" in states[other.backup_id].why
    _complete, states = writer_states(storage, listing, now=hour_ago + 60, machine=HERE, newest=NOW)
    assert states[other.backup_id].alive  # our clock is behind: ours counts

"""wal-receive's partial segments in a real repository, and wal-fetch at the end of the archive.

The receiver's store (repo/received.py) runs in-process on synthetic segments; wal-fetch runs as
PostgreSQL calls it. The end of the archive serves the newest received partial under the segment's
name; a later segment or partial stored makes a missing segment a gap (exit 208), never "not found".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.contract.test_wal_contract import assert_fatal, assert_quiet_not_found, fetch, push
from tests.helpers.pgharness import give_to_pg
from tests.helpers.walfactory import MiB, make_segment
from walkeeper.commands.wal_receive import ReceiveOptions, Receiver
from walkeeper.core.config import load_config
from walkeeper.core.wal import parse_wal_name
from walkeeper.postgres.client import ConnOptions
from walkeeper.repo.received import drop_partials, list_received, received_length, store_partial
from walkeeper.repo.repository import open_repository


def partial(segno: int, filled: int) -> tuple[str, bytes]:
    """Segment ``segno`` as pg_receivewal's .partial holds it: ``filled`` bytes written, zeros after."""
    name, data = make_segment(1, segno)
    return name, data[:filled] + b"\0" * (MiB - filled)


def store(setup: Setup, segno: int, filled: int) -> int | None:
    name, data = partial(segno, filled)
    repo = open_repository(load_config(str(setup.config), env={}))
    try:
        return store_partial(repo, parse_wal_name(name), data)
    finally:
        give_to_pg(setup.repo)  # written by this (root) process; wal-fetch runs as postgres


def received_keys(setup: Setup) -> list[str]:
    return [p.key for p in list_received(open_repository(load_config(str(setup.config), env={})))]


@pytest.fixture
def archive(setup: Setup) -> Setup:
    for segno in (1, 2):
        name, data = make_segment(1, segno)
        assert push(setup, name, data).returncode == 0
    return setup


def test_newest_partial_is_served_at_the_end_of_the_archive(archive: Setup) -> None:
    setup = archive
    assert store(setup, 3, 100_000) is not None
    grown = store(setup, 3, 300_000)
    assert grown is not None and grown > 100_000
    assert store(setup, 3, 200_000) == grown  # older than what is stored: never replaces it
    assert len(received_keys(setup)) == 1  # the smaller upload went once the newer was stored
    proc, dest = fetch(setup, "000000010000000000000003")
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == partial(3, 300_000)[1]
    assert_quiet_not_found(fetch(setup, "000000010000000000000004")[0])


def test_a_later_partial_makes_a_missing_segment_a_gap(archive: Setup) -> None:
    setup = archive
    assert store(setup, 4, 100_000) is not None
    env = {"WALKEEPER_RESTORE_GAP_WAIT": "0.3"}
    assert_fatal(fetch(setup, "000000010000000000000003", env=env)[0], 208, "missing")
    proc, _dest = fetch(setup, "000000010000000000000004", env=env)
    assert proc.returncode == 0, proc.stderr
    assert_quiet_not_found(fetch(setup, "000000010000000000000005", env=env)[0])


def test_the_complete_segment_wins_and_drops_the_partials(archive: Setup) -> None:
    setup = archive
    assert store(setup, 3, 100_000) is not None
    name, data = make_segment(1, 3)
    assert push(setup, name, data).returncode == 0
    proc, dest = fetch(setup, name)
    assert proc.returncode == 0 and dest.read_bytes() == data
    repo = open_repository(load_config(str(setup.config), env={}))
    assert drop_partials(repo, name) == 1 and received_keys(setup) == []


def test_a_partial_of_another_system_is_refused(archive: Setup) -> None:
    setup = archive
    name, data = make_segment(1, 3, sysid=42)
    repo = open_repository(load_config(str(setup.config), env={}))
    with pytest.raises(Exception, match="database system"):
        store_partial(repo, parse_wal_name(name), data[:50_000] + b"\0" * (MiB - 50_000))
    assert not (Path(setup.repo) / "received").exists() or received_keys(setup) == []


def receiver(setup: Setup, spool: Path) -> Receiver:
    spool.mkdir(mode=0o700, exist_ok=True)
    config = load_config(str(setup.config), env={})
    return Receiver(config, ReceiveOptions(conn=ConnOptions(), slot="walkeeper", spool=str(spool)))


def test_receiver_stores_completed_segments_with_wal_push_rules(archive: Setup) -> None:
    """New: stored and its partials dropped; identical to archive_command's: "already"; different: refused,
    kept aside as NAME.conflict, the stored object untouched. Each leaves the sweep."""
    setup = archive
    spool = setup.work / "spool"
    recv = receiver(setup, spool)
    assert store(setup, 3, 100_000) is not None
    name3, data3 = make_segment(1, 3)
    (spool / name3).write_bytes(data3)
    name2, data2 = make_segment(1, 2)
    (spool / name2).write_bytes(data2)  # archive_command stored the same segment
    name1, _ = make_segment(1, 1)
    (spool / name1).write_bytes(make_segment(1, 1, seed=99)[1])  # a different segment 1
    before = (setup.repo / "wal" / "00000001" / name1).read_bytes()
    recv.sweep(partial=False)
    assert (recv.stats.segments, recv.stats.already, recv.stats.conflicts) == (1, 1, 1)
    assert sorted(p.name for p in spool.iterdir()) == [name1 + ".conflict"]
    assert (setup.repo / "wal" / "00000001" / name1).read_bytes() == before
    assert received_keys(setup) == []  # segment 3's partial went once the segment was stored
    give_to_pg(setup.repo)
    proc, dest = fetch(setup, name3)
    assert proc.returncode == 0 and dest.read_bytes() == data3


def test_receiver_uploads_the_growing_partial(archive: Setup) -> None:
    setup = archive
    spool = setup.work / "spool"
    recv = receiver(setup, spool)
    name, data = partial(3, 50_000)
    (spool / f"{name}.partial").write_bytes(data)
    recv.sweep(partial=True, heartbeat=False)
    (spool / f"{name}.partial").write_bytes(partial(3, 90_000)[1])
    recv.sweep(partial=True, heartbeat=False)
    recv.sweep(partial=True, heartbeat=False)  # nothing new: no upload
    assert recv.stats.partials == 2
    assert [k.rsplit(".", 1)[1] for k in received_keys(setup)] == [f"{received_length(partial(3, 90_000)[1]):08X}"]


# -- two repositories: the end of the archive judged across both -------------------------------------------------


@pytest.fixture
def two(setup: Setup) -> Setup:
    """Repositories "one" (setup.repo) and "two", both holding segments 1 and 2."""
    setup.write_config(f'[encryption]\nkey_file = "{setup.key_file}"\n'
                       f'[[repository]]\nname = "one"\nrepo = "{setup.repo}"\n'
                       f'[[repository]]\nname = "two"\nrepo = "{setup.work / "second"}"\n')
    for segno in (1, 2):
        name, data = make_segment(1, segno)
        assert push(setup, name, data).returncode == 0
    return setup


def store_in(setup: Setup, repository: str, segno: int, filled: int) -> int | None:
    name, data = partial(segno, filled)
    repo = open_repository(load_config(str(setup.config), env={}).for_repository(repository))
    try:
        return store_partial(repo, parse_wal_name(name), data)
    finally:
        give_to_pg(setup.work)


def test_two_repositories_serve_the_newest_partial_of_either(two: Setup) -> None:
    setup = two
    assert store_in(setup, "one", 3, 100_000) is not None  # "one" was behind: its upload is older
    assert store_in(setup, "two", 3, 300_000) is not None
    proc, dest = fetch(setup, "000000010000000000000003")
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == partial(3, 300_000)[1]


def test_two_repositories_a_later_partial_in_either_makes_a_gap(two: Setup) -> None:
    setup = two
    assert store_in(setup, "one", 3, 100_000) is not None
    assert store_in(setup, "two", 4, 100_000) is not None  # "two" received on: 3 must be complete somewhere
    env = {"WALKEEPER_RESTORE_GAP_WAIT": "0.3"}
    assert_fatal(fetch(setup, "000000010000000000000003", env=env)[0], 208, "missing")
    proc, dest = fetch(setup, "000000010000000000000004", env=env)
    assert proc.returncode == 0 and dest.read_bytes() == partial(4, 100_000)[1], proc.stderr

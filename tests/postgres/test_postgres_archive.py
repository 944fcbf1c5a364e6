"""PostgreSQL itself archives through walkeeper wal-push and recovers through walkeeper wal-fetch."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import Cluster, run_pg, walkeeper_cmd

pytestmark = pytest.mark.postgres


def start_archiving_primary(setup: Setup) -> Cluster:
    primary = Cluster(setup.work / "primary", bin_dir=setup.pg).initdb()
    primary.configure({
        **primary.base_settings(),
        "archive_mode": "on",
        "archive_command": f"{walkeeper_cmd(setup.config)} wal-push %p",
        "wal_level": "replica",
    })
    primary.start()
    return primary


def test_postgres_archives_and_replays_through_walkeeper(setup: Setup, pg_major: Path) -> None:
    primary = start_archiving_primary(setup)
    try:
        run_pg([primary.bin("pgbench"), "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        first = primary.switch_wal()
        primary.wait_archived(first)

        # A base backup *without* WAL: consistency itself must come from the archive.
        backup = setup.work / "backup"
        run_pg([primary.bin("pg_basebackup"), "-D", backup, "-X", "none", "-c", "fast", *primary.conninfo()])

        primary.psql("create table after_backup(id int primary key, note text)")
        primary.psql("insert into after_backup select g, md5(g::text) from generate_series(1, 5000) g")
        run_pg([primary.bin("pgbench"), "-t", "200", "-n", *primary.conninfo(), "postgres"])
        expected = primary.psql("select count(*), sum(hashtext(note)) from after_backup")
        accounts = primary.psql("select sum(abalance) from pgbench_accounts")
        last = primary.switch_wal()
        primary.wait_archived(last)
    finally:
        primary.stop()

    # The repository holds what PostgreSQL archived, encrypted: no plaintext WAL on disk.
    listing = json.loads(setup.wk("wal-list", "--json").stdout)
    (tl1,) = listing["timelines"]
    assert tl1["first"] <= first <= tl1["last"] and last <= tl1["last"]
    assert tl1["gaps"] == []
    stored = setup.repo / "wal" / "00000001" / last
    assert stored.exists() and stored.stat().st_mode & 0o777 == 0o600
    assert (setup.repo / "wal").stat().st_mode & 0o777 == 0o700
    assert b"after_backup" not in stored.read_bytes()

    # Rebuild from the backup + archive only; the original data directory is gone.
    shutil.rmtree(primary.datadir)
    restored = Cluster.from_backup(backup, setup.work / "restored", f"{walkeeper_cmd(setup.config)} wal-fetch %f %p",
                                   bin_dir=pg_major)
    restored.start()
    try:
        restored.wait_recovery_done()
        assert restored.psql("select count(*), sum(hashtext(note)) from after_backup") == expected
        assert restored.psql("select sum(abalance) from pgbench_accounts") == accounts
        log = restored.log()
        fetched = set(re.findall(r'restored log file "([0-9A-F]{24})" from archive', log))
        assert last in fetched, log[-3000:]
    finally:
        restored.stop()


def test_second_cluster_is_refused_by_the_repository(setup: Setup) -> None:
    primary = start_archiving_primary(setup)
    try:
        primary.wait_archived(primary.switch_wal())
    finally:
        primary.stop()
    other = Cluster(setup.work / "other").initdb()
    other.configure({**other.base_settings(), "archive_mode": "on",
                     "archive_command": f"{walkeeper_cmd(setup.config)} wal-push %p"})
    other.start()
    try:
        other.psql("select pg_switch_wal()")
        other.psql("create table t(x int)")
        other.psql("select pg_switch_wal()")
        import time

        deadline = time.time() + 30
        while time.time() < deadline:
            failed = other.psql("select failed_count, coalesce(last_archived_wal, '') from pg_stat_archiver")
            if int(failed.split("|")[0]) > 0:
                break
            time.sleep(0.3)
        count, archived = failed.split("|")
        assert int(count) > 0 and archived == ""
        assert "belongs to system" in other.log()
    finally:
        other.stop("immediate")

"""pitr without --repo plans across repositories: the backup from one, the WAL from another.

The cluster archives into both repositories (wal-push stores into every one); the backup goes into
"local" only; then local loses the WAL after the backup's start (as if expired there), which "offsite"
still holds. pitr must choose local's backup, judge the WAL coverage over both, and restore_command
(wal-fetch's fallback) reads the segments from offsite. The table contents at the target must match.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import PG_BIN, Cluster, give_to_pg, run_pg
from tests.postgres.test_copy import wk
from tests.postgres.test_pitr import STATE_SQL, archive_everything, conn, ok, pgbench, server_time, start_primary

pytestmark = pytest.mark.postgres


def test_pitr_takes_the_backup_from_one_repository_and_the_wal_from_another(setup: Setup) -> None:
    setup.config.write_text(
        f'[encryption]\nkey_file = "{setup.key_file}"\n'
        f'[[repository]]\nname = "local"\nrepo = "{setup.repo}"\n'
        f'[[repository]]\nname = "offsite"\nrepo = "{setup.work / "offsite"}"\n')
    give_to_pg(setup.config)
    primary = start_primary(setup)  # archive_command: wal-push into both
    try:
        run_pg([PG_BIN / "pgbench", "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        primary.psql("create table notes(id serial primary key, note text)")
        archive_everything(primary)
        backup = json.loads(ok(setup.wk("--repo", "local", "backup", *conn(primary), "--fast-checkpoint",
                                        "--json")).stdout)
        pgbench(primary, 200)
        primary.psql("insert into notes(note) values ('at the target')")
        expected = primary.psql(STATE_SQL)
        target = server_time(primary)
        pgbench(primary, 100)
        archive_everything(primary)
    finally:
        primary.stop()
    stop = backup["stop_wal"]
    gone = [p for p in (setup.repo / "wal" / "00000001").iterdir() if p.name[:24] > stop]
    assert gone, "the work after the backup filled no segment"
    for path in gone:
        path.unlink()
    assert not (setup.work / "offsite" / "backups").exists()  # the backup is in local alone

    # --repo local alone cannot reach the target (its WAL ends at the backup): refused, nothing written ...
    alone = wk(setup.config, "--repo", "local", "pitr", "--pgdata", str(setup.work / "dry"), "--target-time",
               target, "--dry-run")
    assert alone.returncode == 15 and "the archive ends before" in alone.stderr, alone.stderr
    # ... and its restore_command names the repository (not a path of that name)
    plan = ok(wk(setup.config, "--repo", "local", "pitr", "--pgdata", str(setup.work / "dry"),
                 "--target-immediate", "--dry-run")).stdout
    assert "--repo local wal-fetch %f %p" in plan and "repositories:" not in plan, plan

    cluster = Cluster(setup.work / "recovered")
    out = ok(wk(setup.config, "pitr", "--pgdata", str(cluster.datadir), "--target-time", target,
                "--target-action", "promote")).stdout
    assert backup["id"] in out and "local" in out and "offsite" in out, out
    cluster.configure({**cluster.base_settings(), "archive_mode": "off"})
    try:
        cluster.start()
        cluster.wait_recovery_done()
        assert cluster.psql(STATE_SQL) == expected
    finally:
        cluster.stop()

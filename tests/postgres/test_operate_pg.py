"""verify / status / check / expire against a real server with real base backups."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import Cluster
from tests.postgres.test_pitr import archive_everything, conn, ok, start_primary

pytestmark = pytest.mark.postgres


def libpq_env(cluster: Cluster) -> dict[str, str]:
    return {"PGHOST": str(cluster.sockdir), "PGPORT": str(cluster.port), "PGUSER": "postgres"}


def test_operating_a_real_archive(setup: Setup) -> None:
    primary = start_primary(setup)
    try:
        archive_everything(primary)
        first = json.loads(ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--json")).stdout)
        primary.psql("create table t as select g from generate_series(1, 20000) g")
        ok(setup.wk("restore-point", "between-backups", *conn(primary), "--switch-wal"))
        archive_everything(primary)
        time.sleep(1.1)  # backup ids have a one-second resolution
        second = json.loads(ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--json")).stdout)
        primary.psql("insert into t select g from generate_series(1, 1000) g")
        archive_everything(primary)
        env = libpq_env(primary)

        doc = json.loads(ok(setup.wk("status", "--json", env=env)).stdout)
        assert [b["id"] for b in doc["backups"]] == [first["id"], second["id"]]
        cluster = doc["cluster"]
        assert cluster["failed_count"] == 0 and not cluster["failing"] and cluster["archived_count"] >= 4
        assert cluster["archive_lag_segments"] == 0
        assert doc["system_identifier"] == cluster["system_identifier"]
        assert doc["newest_segment"]["name"] == cluster["last_archived_wal"]
        text = ok(setup.wk("status", env=env)).stdout
        assert "archive lag: 0 segments" in text and f"backup {second['id']}" in text

        line = ok(setup.wk("check", "--cluster", "--max-wal-age", "1h", "--max-backup-age", "1h", env=env)).stdout
        assert line.startswith("WALKEEPER OK - ") and "archive lag 0 segments" in line
        assert ok(setup.wk("verify", "--deep")).stdout.strip().endswith("verify: OK, the archive is whole")

        # Expire the first backup: the dry run names exactly what then goes.
        dry = ok(setup.wk("expire", "--keep", "1", "--dry-run", "--json")).stdout
        plan = json.loads(dry)
        assert plan["expired_backups"] == [first["id"]] and plan["first_wal_kept"] == second["start_wal"]
        assert f"backups/{first['id']}/backup.json" == plan["objects"][0]
        assert any(k.startswith("restore-points/") for k in plan["objects"])
        before = {str(p.relative_to(setup.repo)) for p in setup.repo.rglob("*") if p.is_file()}
        done = json.loads(ok(setup.wk("expire", "--keep", "1", "--json")).stdout)
        after = {str(p.relative_to(setup.repo)) for p in setup.repo.rglob("*") if p.is_file()}
        assert before - after == set(plan["objects"]) == set(done["objects"])
        assert json.loads(ok(setup.wk("backups", "--json")).stdout)["backups"][0]["id"] == second["id"]
        ok(setup.wk("verify", "--deep"))

        # The archiver starts failing: check says WARNING, status shows the lag.
        primary.psql("alter system set archive_command = 'false'")
        primary.psql("select pg_reload_conf()")
        primary.psql("insert into t values (0)")  # a switch with nothing written is a no-op
        primary.switch_wal()
        deadline = time.time() + 30
        while time.time() < deadline and primary.psql("select failed_count from pg_stat_archiver") == "0":
            time.sleep(0.2)
        proc = setup.wk("check", "--cluster", "--max-wal-age", "1h", env=env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stdout.startswith("WALKEEPER WARNING - archive_command is failing on the server")
        doc = json.loads(ok(setup.wk("status", "--json", env=env)).stdout)
        assert doc["cluster"]["failing"] and doc["cluster"]["archive_lag_segments"] >= 1

        # A segment of the kept backup goes missing: verify says which and that the backup is unusable.
        stop = second["stop_wal"]
        (setup.repo / "wal" / stop[:8] / stop).unlink()
        proc = setup.wk("verify", "--json")
        assert proc.returncode == 5
        kinds = {p["kind"] for p in json.loads(proc.stdout)["problems"]}
        assert "backup-wal-incomplete" in kinds
    finally:
        primary.stop()

"""Backup and restore on several threads ([backup] workers), against a real cluster: the restored cluster
holds exactly the backed-up state, and a damaged frame of a backup written in parallel still stops the
restore (exit 5, nothing left behind)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import PG_BIN, Cluster, run_pg, walkeeper_cmd

pytestmark = pytest.mark.postgres

STATE = ("select (select sum(abalance) from pgbench_accounts), (select count(*) from pgbench_accounts), "
         "(select md5(string_agg(t, ',' order by i)) from noise)")


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def test_backup_and_pitr_with_two_workers(setup: Setup) -> None:
    workers = {"WALKEEPER_BACKUP_WORKERS": "2"}
    primary = Cluster(setup.work / "primary").initdb()
    primary.configure({**primary.base_settings(), "wal_level": "replica", "archive_mode": "on",
                       "archive_command": f"{walkeeper_cmd(setup.config)} wal-push %p"})
    primary.start()
    try:
        run_pg([PG_BIN / "pgbench", "-i", "-s", "3", "-q", *primary.conninfo(), "postgres"])
        # barely compressible rows too, so that the compressed stream spans many frames
        primary.psql("create table noise as select i, md5(random()::text) || md5(random()::text) as t "
                     "from generate_series(1, 100000) i")
        primary.psql("update pgbench_accounts set abalance = aid % 97 where aid % 5 = 0")
        state = primary.psql(STATE)
        meta = json.loads(ok(setup.wk("backup", "-h", primary.sockdir, "-p", str(primary.port), "-U", "postgres",
                                      "--fast-checkpoint", "--json", env=workers)).stdout)
        primary.wait_archived(primary.switch_wal())
    finally:
        primary.stop()
    base = next(o for o in meta["objects"] if o["tar"] == "base.tar")
    assert base["stored_size"] > 4 * 1024 * 1024  # several frames, several zstd jobs

    recovered = Cluster(setup.work / "recovered")
    ok(setup.wk("pitr", "--pgdata", recovered.datadir, "--target-immediate", "--target-action", "promote",
                env=workers))
    recovered.configure({**recovered.base_settings(), "archive_mode": "off"})
    recovered.start()
    try:
        recovered.wait_recovery_done()
        assert recovered.psql(STATE) == state
    finally:
        recovered.stop()

    # One flipped bit in the middle of the stored base tar: authentication fails at that frame.
    stored = setup.repo / base["key"]
    blob = bytearray(stored.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    stored.write_bytes(bytes(blob))
    target = setup.work / "damaged"
    proc = setup.wk("restore", meta["id"], "--pgdata", target, env=workers)
    assert proc.returncode == 5, proc.stderr
    assert "failed authentication at frame" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr
    assert not target.exists()

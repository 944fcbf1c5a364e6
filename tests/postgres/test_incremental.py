"""Incremental backups (PostgreSQL 17+: summarize_wal, pg_basebackup --incremental, pg_combinebackup).

A full backup and a chain of three incrementals with changes between them on PostgreSQL 18; the newest
restored, and PITR to points between two incrementals, each state compared with what the primary held
at that point; expire keeps chains whole; verify and restore on a chain whose member is gone; refusals on
PostgreSQL 15 and with summarize_wal off.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import PG18_BIN, PG_BIN, Cluster, run_pg, walkeeper_cmd
from tests.postgres.test_pitr import STATE_SQL, archive_everything, conn, ok, server_time

pytestmark = pytest.mark.postgres

needs_pg18 = pytest.mark.skipif(PG18_BIN is None, reason="PostgreSQL 18 not installed (WALKEEPER_PG18_BIN)")


def start(setup: Setup, bin_dir: Path, *, summarize: bool = True, name: str = "primary") -> Cluster:
    primary = Cluster(setup.work / name, bin_dir=bin_dir).initdb()
    settings: dict[str, str | int] = {**primary.base_settings(), "wal_level": "replica", "archive_mode": "on",
                                      "archive_command": f"{walkeeper_cmd(setup.config)} wal-push %p"}
    if summarize:
        settings["summarize_wal"] = "on"
    primary.configure(settings)
    primary.start()
    return primary


def work(primary: Cluster, transactions: int, note: str) -> None:
    run_pg([primary.bin("pgbench"), "-n", "-t", str(transactions), *primary.conninfo(), "postgres"])
    primary.psql(f"insert into notes(note) values ('{note}')")


def backup(setup: Setup, primary: Cluster, *args: str) -> dict:
    return json.loads(ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--json", *args)).stdout)


def recovered_state(setup: Setup, name: str, *pitr_args: str) -> tuple[str, str]:
    """pitr into a new directory, start it (PostgreSQL 18), wait for promotion; (state, pitr output)."""
    cluster = Cluster(setup.work / name, bin_dir=PG18_BIN)  # type: ignore[arg-type]
    out = ok(setup.wk("pitr", "--pgdata", cluster.datadir, *pitr_args, "--target-action", "promote")).stdout
    assert not (cluster.datadir / ".walkeeper-combine").exists()
    cluster.configure({**cluster.base_settings(), "archive_mode": "off"})
    cluster.start()
    try:
        cluster.wait_recovery_done()
        return cluster.psql(STATE_SQL), out
    finally:
        cluster.stop()
        shutil.rmtree(cluster.datadir)


@needs_pg18
def test_incremental_chain_restore_pitr_expire_verify(setup: Setup) -> None:
    setup.use_pg(PG18_BIN)  # type: ignore[arg-type]
    primary = start(setup, PG18_BIN)  # type: ignore[arg-type]
    states: dict[str, str] = {}
    marks: dict[str, str] = {}
    try:
        run_pg([primary.bin("pgbench"), "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        primary.psql("create table notes(id serial primary key, note text)")
        archive_everything(primary)
        full = backup(setup, primary)
        assert (full["type"], full["parent"]) == ("full", None) and full["manifest_key"]
        work(primary, 100, "after the full")
        inc1 = backup(setup, primary, "--incremental")
        work(primary, 100, "between 1 and 2")
        states["time"], marks["time"] = primary.psql(STATE_SQL), server_time(primary)
        work(primary, 50, "still between 1 and 2")
        inc2 = backup(setup, primary, "--incremental")
        work(primary, 100, "between 2 and 3")
        states["lsn"], marks["lsn"] = primary.psql(STATE_SQL), primary.psql("select pg_current_wal_insert_lsn()")
        work(primary, 50, "still between 2 and 3")
        inc3 = backup(setup, primary, "--incremental")
        states["newest"] = primary.psql(STATE_SQL)  # nothing written since the third incremental
        work(primary, 50, "after 3")
        full2 = backup(setup, primary)  # a second chain, for expire
        work(primary, 50, "on the second chain")
        inc4 = backup(setup, primary, "--incremental")
        work(primary, 10, "the end")  # a switch right after a backup's own one would not switch
        archive_everything(primary)
    finally:
        primary.stop()
    assert [(b["type"], b["parent"]) for b in (inc1, inc2, inc3, inc4)] == [
        ("incremental", full["id"]), ("incremental", inc1["id"]), ("incremental", inc2["id"]),
        ("incremental", full2["id"])]
    assert inc3["stored_size"] < full["stored_size"] / 2, (inc3["stored_size"], full["stored_size"])

    listing = json.loads(ok(setup.wk("backups", "--json")).stdout)["backups"]
    assert [(b["id"], b["type"], b["parent"], b["chain_length"]) for b in listing] == [
        (full["id"], "full", None, 1), (inc1["id"], "incremental", full["id"], 2),
        (inc2["id"], "incremental", inc1["id"], 3), (inc3["id"], "incremental", inc2["id"], 4),
        (full2["id"], "full", None, 1), (inc4["id"], "incremental", full2["id"], 2)]
    text = ok(setup.wk("backups")).stdout
    assert "incremental" in text and inc2["id"] in text
    assert ok(setup.wk("check")).returncode == 0  # chains of 4 and 2: below max_chain's default (8)
    proc = setup.wk("check", env={"WALKEEPER_BACKUP_MAX_CHAIN": "3"})
    assert proc.returncode == 1 and f"restoring backup {inc3['id']} needs a chain of 4 backups" in proc.stdout, \
        proc.stdout

    dry = ok(setup.wk("restore", inc3["id"], "--pgdata", setup.work / "dry", "--dry-run")).stdout
    assert "chain: 4 backups" in dry and all(b["id"] in dry for b in (full, inc1, inc2, inc3)), dry
    assert not (setup.work / "dry").exists()

    # The newest restored (restore, then the recovery settings), state as at the third incremental's end.
    newest = Cluster(setup.work / "newest", bin_dir=PG18_BIN)  # type: ignore[arg-type]
    out = ok(setup.wk("restore", inc3["id"], "--pgdata", newest.datadir)).stdout
    assert f"restored backup {inc3['id']}" in out and "4 backups combined" in out, out
    assert not (newest.datadir / ".walkeeper-combine").exists()
    assert (newest.datadir / "global" / "pg_control").exists()
    ok(setup.wk("pitr", "--pgdata", newest.datadir, "--no-restore", "--backup", inc3["id"], "--target-immediate",
                "--target-action", "promote"))
    newest.configure({**newest.base_settings(), "archive_mode": "off"})
    newest.start()
    try:
        newest.wait_recovery_done()
        assert newest.psql(STATE_SQL) == states["newest"]
        assert newest.psql("select count(*) from pg_tables where tablename like 'pgbench_%'") == "4"
    finally:
        newest.stop()
        shutil.rmtree(newest.datadir)

    # PITR to points between two incrementals: the chain up to the one before the target.
    plan = ok(setup.wk("pitr", "--pgdata", setup.work / "dry", "--target-lsn", marks["lsn"], "--dry-run")).stdout
    assert f"backup: {inc2['id']}" in plan and "chain: 3 backups" in plan, plan
    doc = json.loads(ok(setup.wk("pitr", "--pgdata", setup.work / "dry", "--target-lsn", marks["lsn"], "--dry-run",
                                 "--json")).stdout)
    assert doc["chain"] == [full["id"], inc1["id"], inc2["id"]] and doc["backup"]["type"] == "incremental"
    state, out = recovered_state(setup, "pitr-lsn", "--target-lsn", marks["lsn"])
    assert state == states["lsn"], out
    state, out = recovered_state(setup, "pitr-time", "--target-time", marks["time"])
    assert f"backup: {inc1['id']}" in out and state == states["time"], out

    # restore-test goes through the chain too (restores, recovers, checks, records)
    proc = setup.wk("restore-test", "--workdir", setup.work / "rt", "--backup", inc3["id"], "--target", "immediate",
                    "--check", "select count(*) = 5 from notes", "--json")
    record = json.loads(proc.stdout)
    assert proc.returncode == 0 and record["ok"] and record["backup"] == inc3["id"], (proc.stdout, proc.stderr)

    # expire: with the second chain, --keep 1 drops the first chain whole, --keep 2 keeps both whole.
    keep2 = json.loads(ok(setup.wk("expire", "--keep", "2", "--dry-run", "--json")).stdout)
    assert keep2["expired_backups"] == [] and len(keep2["kept_backups"]) == 6
    keep1 = json.loads(ok(setup.wk("expire", "--keep", "1", "--json")).stdout)
    assert keep1["expired_backups"] == [full["id"], inc1["id"], inc2["id"], inc3["id"]]
    assert keep1["kept_backups"] == [full2["id"], inc4["id"]] and keep1["kept_by"][full2["id"]] == [
        f"chain of {inc4['id']}"]
    assert ok(setup.wk("verify")).returncode == 0

    # A chain whose member is gone: verify says which and what to do, restore refuses before writing.
    (setup.repo / "backups" / full2["id"] / "backup.json").unlink()
    proc = setup.wk("verify")
    assert proc.returncode != 0 and f"backup {inc4['id']} is incremental on backup {full2['id']}" in proc.stdout
    assert "take a full backup" in proc.stdout
    proc = setup.wk("restore", inc4["id"], "--pgdata", setup.work / "broken")
    assert proc.returncode == 15 and f"needs backup {full2['id']}" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2 and "Traceback" not in proc.stderr
    assert not (setup.work / "broken").exists()


def test_incremental_refused_on_postgresql_15(setup: Setup) -> None:
    primary = start(setup, PG_BIN, summarize=False)
    try:
        archive_everything(primary)
        backup(setup, primary)  # full backups unchanged
        proc = setup.wk("backup", *conn(primary), "--fast-checkpoint", "--incremental")
    finally:
        primary.stop()
    assert proc.returncode == 15, proc.stderr
    assert "needs PostgreSQL 17 or later" in proc.stderr and "Traceback" not in proc.stderr
    listing = json.loads(ok(setup.wk("backups", "--json")).stdout)["backups"]
    assert [b["type"] for b in listing] == ["full"]


@needs_pg18
def test_incremental_refused_with_summarize_wal_off(setup: Setup) -> None:
    setup.use_pg(PG18_BIN)  # type: ignore[arg-type]
    primary = start(setup, PG18_BIN, summarize=False)  # type: ignore[arg-type]
    try:
        archive_everything(primary)
        backup(setup, primary)
        proc = setup.wk("backup", *conn(primary), "--fast-checkpoint", "--incremental")
    finally:
        primary.stop()
    assert proc.returncode == 15, proc.stderr
    assert "summarize_wal is off" in proc.stderr and "summarize_wal = on" in proc.stderr
    assert len(json.loads(ok(setup.wk("backups", "--json")).stdout)["backups"]) == 1

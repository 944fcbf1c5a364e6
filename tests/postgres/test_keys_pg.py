"""Key rotation and rekey against a real PostgreSQL that keeps archiving, then PITR without the old key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import PG_BIN, WALKEEPER_BIN, as_pg, give_to_pg, run_pg
from tests.postgres.test_key_rotation import use_keys
from tests.postgres.test_pitr import (
    STATE_SQL,
    archive_everything,
    conn,
    ok,
    pgbench,
    recover,
    server_time,
    start_primary,
)

pytestmark = pytest.mark.postgres


def test_rotation_rekey_while_archiving_then_pitr_without_old_key(setup: Setup) -> None:
    old_key, new_key = setup.key_file, setup.work / "key-new"
    primary = start_primary(setup)
    stop = threading.Event()
    errors: list[str] = []

    def load() -> None:  # PostgreSQL keeps archiving while keys rotate and objects are rewritten
        try:
            while not stop.is_set():
                pgbench(primary, 50)
                primary.switch_wal()
        except Exception as exc:
            errors.append(repr(exc))

    try:
        run_pg([PG_BIN / "pgbench", "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        primary.psql("create table notes(id serial primary key, note text)")
        archive_everything(primary)
        ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--label", "before-rotation"))
        pgbench(primary, 200)
        primary.psql("insert into notes(note) values ('under the old key')")
        archive_everything(primary)
        old_id = json.loads(ok(setup.wk("key", "list", "--json")).stdout)["keys"][-1]["key_id"]

        ok(setup.wk("key", "rotate", "--generate", new_key))
        give_to_pg(new_key)
        use_keys(setup, new_key, old_key)  # archive_command reads it at its next call
        time.sleep(0.5)  # a pusher started earlier sees the changed file within one poll and stops
        pgbench(primary, 200)
        primary.psql("insert into notes(note) values ('under the new key')")
        state, mark = primary.psql(STATE_SQL), server_time(primary)
        archive_everything(primary)
        counts = json.loads(ok(setup.wk("key", "list", "--json")).stdout)["objects_per_key_id"]
        new_id = next(k for k in counts if k != old_id)
        assert counts[old_id] > 0 and counts[new_id] > 0, counts

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        # rekey killed part-way, then resumed, while segments keep arriving
        killed = subprocess.Popen(as_pg([str(WALKEEPER_BIN), "--config", str(setup.config), "rekey",
                                         "--retire", old_id, "--json"]),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(1.0)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.communicate()
        mid = json.loads(ok(setup.wk("key", "list", "--json")).stdout)["objects_per_key_id"]
        resumed = json.loads(ok(setup.wk("rekey", "--retire", old_id, "--json")).stdout)
        stop.set()
        worker.join(60)
        assert not errors, errors
        assert resumed["retired"] and resumed["remaining"] == 0, resumed
        print(f"\nrekey: killed after 1 s with {mid.get(old_id, 0)} of {counts[old_id]} objects left under the "
              f"old key; resumed run rewrote {resumed['rewritten']} objects, {resumed['stored_bytes']} bytes "
              f"at {resumed['mib_per_s']} MiB/s")
        archive_everything(primary)
    finally:
        stop.set()
        primary.stop()

    old_key.unlink()  # the old key is destroyed
    use_keys(setup, new_key)
    deep = json.loads(setup.wk("verify", "--deep", "--json").stdout)
    assert deep["ok"] and list(deep["objects_per_key_id"]) == [new_id], deep
    cluster, _out = recover(setup, "pitr", "--target-time", mark, "--target-action", "promote")
    try:
        assert cluster.psql(STATE_SQL) == state
    finally:
        cluster.stop()


def test_public_key_host_archives_private_key_host_restores(setup: Setup) -> None:
    """The database host has only the public key: it archives and backs up, cannot read; a restore host can."""
    private, public = setup.work / "private.key", setup.work / "public.key"
    ok(setup.wk("key", "generate", "--output", private, "--public-key-out", public, config=False))
    give_to_pg(private)
    give_to_pg(public)
    assert (public.stat().st_mode & 0o777) == 0o644 and (private.stat().st_mode & 0o777) == 0o600
    repo = setup.repo_url or setup.repo
    db_host = setup.config  # what archive_command uses
    db_host.write_text(f'repo = "{repo}"\n[encryption]\nmethod = "x25519-aes-256-gcm"\nkey_file = "{public}"\n')
    restore_host = setup.work / "restore-host.toml"
    restore_host.write_text(f'repo = "{repo}"\n[encryption]\nmethod = "x25519-aes-256-gcm"\nkey_file = "{private}"\n')
    give_to_pg(restore_host)
    primary = start_primary(setup)
    try:
        run_pg([PG_BIN / "pgbench", "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        primary.psql("create table notes(id serial primary key, note text)")
        archive_everything(primary)
        ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--label", "public-host"))
        pgbench(primary, 200)
        primary.psql("insert into notes(note) values ('archived by a host that cannot read it')")
        state, mark = primary.psql(STATE_SQL), server_time(primary)
        primary.psql("insert into notes(note) values ('after the target')")
        archive_everything(primary)
    finally:
        primary.stop()
    # what the database host can still do without the private key
    for args in (["wal-list", "--json"], ["backups", "--json"], ["status", "--json", "--no-cluster"],
                 ["check"], ["expire", "--keep", "1", "--dry-run"]):
        ok(setup.wk(*args))
    segment = json.loads(setup.wk("wal-list", "--json").stdout)["timelines"][0]["last"]
    for args in (["verify", "--deep"], ["wal-fetch", segment, str(setup.work / "x")],
                 ["pitr", "--pgdata", str(setup.work / "nope"), "--target-time", mark]):
        proc = setup.wk(*args)
        assert proc.returncode in (4, 204), (args, proc.returncode, proc.stderr)
        assert "this host holds only the public key" in proc.stdout + proc.stderr, (args, proc.stdout, proc.stderr)
    # the restore host, holding the private key, recovers
    setup.config = restore_host
    ok(setup.wk("verify", "--deep"))
    cluster, _out = recover(setup, "pitr", "--target-time", mark, "--target-action", "promote")
    try:
        assert cluster.psql(STATE_SQL) == state
    finally:
        cluster.stop()

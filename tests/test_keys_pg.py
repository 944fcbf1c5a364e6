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
from tests.pgharness import PG_BIN, WALKEEPER_BIN, as_pg, give_to_pg, run_pg
from tests.test_key_rotation import use_keys
from tests.test_pitr import STATE_SQL, archive_everything, conn, ok, pgbench, recover, server_time, start_primary

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

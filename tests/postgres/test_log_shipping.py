"""A log-shipping standby reads the archive while the primary archives into it with push-ahead.

The pusher works on several segments at once, and a nearly empty segment N+1 is ready long before a heavy,
poorly compressible N. A standby asking for N must never find N missing while N+1 is stored and stop
recovery with a "gap" (exit 208, FATAL in the standby's log). Two defences, both checked here: the pusher
stores a segment only after the earlier ones (so wal-fetch never even has to wait), and wal-fetch waits,
bounded, for a segment missing while a later one is stored (other writers; tests/contract/test_wal_contract.py).
Before either, this failed in the first round on local storage and on S3.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.conftest import Setup, backends_by_major
from tests.helpers.pgharness import Cluster, run_pg, walkeeper_cmd

pytestmark = pytest.mark.postgres

ROUNDS = int(os.environ.get("WALKEEPER_TEST_STANDBY_ROUNDS", "15"))
# ~12 MB of poorly compressible WAL: within one segment, so that the segment the standby is polling for is the
# heavy one (120000 rows fill one segment and spill into the next, and the standby, still busy with the
# first one, then asked for the spill-over too late to meet the out-of-order store on S3).
HEAVY = "insert into t(note) select md5(random()::text) from generate_series(1, 70000)"


def ok(proc):  # type: ignore[no-untyped-def]
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def psql_each(cluster: Cluster, *statements: str) -> list[str]:
    """One psql run, each statement its own transaction (``-c`` per statement); their outputs in order."""
    args = [arg for sql in statements for arg in ("-c", sql)]
    proc = run_pg([cluster.bin("psql"), "-h", cluster.sockdir, "-p", cluster.port, "-d", "postgres", "-X", "-A", "-t",
                   "-v", "ON_ERROR_STOP=1", *args])
    return proc.stdout.decode().split()


def wait_replayed(standby: Cluster, count: str, timeout: float = 60) -> None:
    """Until the standby sees ``count`` rows; fails at once if it stopped (FATAL) meanwhile."""
    deadline = time.time() + timeout
    seen = ""
    while time.time() < deadline:
        seen = standby.psql("select count(*) from t", check=False)
        if seen == count:
            return
        if not seen and not standby.is_running():
            raise AssertionError(f"the standby stopped; its log:\n{standby.log()[-4000:]}")
        time.sleep(0.02)
    raise AssertionError(f"standby at {seen} rows, not {count}, after {timeout}s; log:\n{standby.log()[-4000:]}")


@backends_by_major([("local", "15"), ("s3", "15"), ("local", "18")])
def test_standby_follows_archive_while_pusher_stores_out_of_order(backend_setup: Setup, pg_major: Path) -> None:
    setup = backend_setup
    primary = Cluster(setup.work / "primary", bin_dir=pg_major).initdb()
    primary.configure({**primary.base_settings(), "wal_level": "replica", "archive_mode": "on",
                       "archive_command": f"{walkeeper_cmd(setup.config)} wal-push %p"})  # default push-ahead
    primary.start()
    standby = Cluster(setup.work / "standby", bin_dir=pg_major)
    try:
        primary.psql("create table t(id bigserial primary key, note text)")
        primary.wait_archived(primary.switch_wal())
        ok(setup.wk("backup", *primary.conninfo(), "--fast-checkpoint"))
        ok(setup.wk("pitr", "--pgdata", standby.datadir, "--standby"))
        auto = standby.datadir / "postgresql.auto.conf"  # -v: wal-fetch logs each wait for an earlier segment
        auto.write_text(auto.read_text().replace(" --config ", " -v --config "))
        standby.configure({**standby.base_settings(), "archive_mode": "off", "hot_standby": "on",
                           "wal_retrieve_retry_interval": "20ms"})
        standby.start()
        wait_replayed(standby, primary.psql("select count(*) from t"))
        last = ""
        for _ in range(ROUNDS):
            # A heavy segment N, then at once a nearly empty N+1, while the standby polls for N.
            *_, last = psql_each(primary, HEAVY, "select pg_walfile_name(pg_switch_wal())",
                                 "insert into t(note) values ('light')", "select pg_walfile_name(pg_switch_wal())")
            wait_replayed(standby, primary.psql("select count(*) from t"))
        log = standby.log()
        assert "FATAL" not in log and "exit code 208" not in log, log[-4000:]
        restored = set(re.findall(r'restored log file "([0-9A-F]{24})" from archive', log))
        assert last in restored, log[-3000:]
        waits = re.findall(r"\S+ is missing while \S+ is stored: waiting", log)
        print(f"{setup.backend}: {ROUNDS} rounds, {len(waits)} wait(s) for a segment stored after a later one")
        assert waits == [], f"the pusher stored a segment before an earlier one: {waits}"
    finally:
        standby.stop("immediate")
        primary.stop("immediate")

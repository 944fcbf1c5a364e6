"""walkeeper restore-test against real PostgreSQL 15: passing, failing check, corrupted WAL, unreachable target,
and a primary that keeps archiving into the same repository while the test runs."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import PG_BIN, Cluster, give_to_pg, run_pg, running_as_root
from tests.postgres.test_operate_backends import corrupt_object
from tests.postgres.test_pitr import archive_everything, conn, ok, start_primary

pytestmark = pytest.mark.postgres


def postgres_processes_in(path: Path) -> list[str]:
    """Command lines of running postgres processes whose data directory lies under ``path``."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "postgres" in line and str(path) in line]


def prepared(setup: Setup) -> tuple[Cluster, dict]:
    primary = start_primary(setup)
    run_pg([PG_BIN / "pgbench", "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
    archive_everything(primary)
    backup = json.loads(ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--json")).stdout)
    primary.psql("create table orders(id int primary key); insert into orders select generate_series(1, 500)")
    archive_everything(primary)
    return primary, backup


def test_restore_test_story(backend_setup: Setup) -> None:
    setup = backend_setup
    primary, backup = prepared(setup)
    work = setup.work / "rt"
    stop = threading.Event()

    def keep_archiving() -> None:  # the primary goes on working and archiving during the tests
        while not stop.is_set():
            primary.psql("insert into orders select max(id) + 1 from orders; select pg_switch_wal()")
            time.sleep(0.5)

    writer = threading.Thread(target=keep_archiving)
    writer.start()
    try:
        began = time.time()
        proc = setup.wk("restore-test", "--workdir", work, "--check", "select count(*) >= 500 from orders",
                        "--check", "select count(*) = 100000 from pgbench_accounts", "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        record = json.loads(proc.stdout)
        print(f"restore-test took {time.time() - began:.1f}s: {record['total_seconds']}s recorded")
        assert record["ok"] and record["outcome"] == "passed" and record["backup"] == backup["id"]
        names = [c["name"] for c in record["checks"]]
        assert names[:3] == ["cluster started", "target reached", "databases connect"]
        assert all(c["ok"] for c in record["checks"]) and len(record["checks"]) == 5
        assert record["row_counts"]["postgres"]["public.pgbench_accounts"] == 100000
        assert record["row_counts"]["postgres"]["public.orders"] >= 500
        assert record["bytes_restored"] > 10_000_000 and record["total_seconds"] > 0
        assert list(work.iterdir()) == [], "the work directory is removed after a passing test"

        # A failing check: its own exit code, one line, the directory kept, nothing left running.
        proc = setup.wk("restore-test", "--workdir", work, "--target", "immediate", "--check", "select false",
                        "--keep-on-failure")
        assert proc.returncode == 21, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and "check: select false: returned 'f'" in proc.stderr, proc.stderr
        (kept,) = list(work.iterdir())
        assert (kept / "data" / "PG_VERSION").exists() and f"kept in {kept}" in proc.stderr
        assert not (kept / "data" / "postmaster.pid").exists() and not postgres_processes_in(work)

        # A target the archive cannot reach is refused at plan, before anything is restored.
        proc = setup.wk("restore-test", "--workdir", work, "--target-lsn", "FF/0")
        assert proc.returncode not in (0, 21, 22, 23), proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert list(work.iterdir()) == [kept]
    finally:
        stop.set()
        writer.join()
    try:
        archive_everything(primary)
        failed = primary.psql("select failed_count from pg_stat_archiver")
        assert failed == "0", primary.log()[-2000:]
    finally:
        primary.stop()
    wal = json.loads(ok(setup.wk("wal-list", "--json")).stdout)
    assert [t["timeline"] for t in wal["timelines"]] == [1], "the test clusters archived nothing"
    assert not any(t["history"] for t in wal["timelines"])

    tests = json.loads(ok(setup.wk("restore-tests", "--json")).stdout)
    assert [t["ok"] for t in tests] == [True, False]
    status = ok(setup.wk("status", "--no-cluster")).stdout
    assert f"last restore test {tests[1]['id']}" in status and "FAILED" in status
    prom = setup.work / "metrics.prom"
    check = setup.wk("check", "--max-restore-test-age", "8d", "--prometheus", prom)
    assert check.returncode == 1 and "restore test" in check.stdout, check.stdout  # WARNING: the last one failed
    text = prom.read_text()
    assert "walkeeper_restore_test_ok{" in text and "walkeeper_restore_test_last_success_timestamp_seconds{" in text
    assert "walkeeper_restore_test_duration_seconds{" in text


def test_corrupted_segment_fails_with_the_integrity_reason(backend_setup: Setup) -> None:
    setup = backend_setup
    primary, backup = prepared(setup)
    primary.stop()
    # the backup's stop segment lies in the range recovery replays
    stop_wal = backup["stop_wal"]
    victim = f"wal/{stop_wal[:8]}/{stop_wal}"
    corrupt_object(setup, victim)
    work = setup.work / "rt"
    notified = setup.work / "notified"
    notify = f'[notify]\non_failure = "echo $WALKEEPER_EVENT > {notified}"\nstate_file = "{setup.work}/notify.json"\n'
    setup.write_config(setup.config.read_text().replace("[compression]", notify + "[compression]"))
    proc = setup.wk("restore-test", "--workdir", work)
    assert proc.returncode == 22, proc.stdout + proc.stderr
    assert "recovery stopped" in proc.stderr and "corrupt" in proc.stderr.lower(), proc.stderr
    assert not postgres_processes_in(work) and list(work.iterdir()) == []
    assert notified.read_text().strip() == "restore-test"


@pytest.mark.skipif(not running_as_root(), reason="the root path needs root")
def test_as_root_the_test_cluster_runs_as_postgres(setup: Setup) -> None:
    primary, backup = prepared(setup)
    primary.stop()
    (setup.work / "rt-root").mkdir()
    work = give_to_pg(setup.work / "rt-root")
    proc = setup.wk("restore-test", "--workdir", work, "--target", "immediate", "--json", as_postgres=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["backup"] == backup["id"] and list(work.iterdir()) == []

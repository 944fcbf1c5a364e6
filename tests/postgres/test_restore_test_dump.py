"""walkeeper restore-test --dump against real PostgreSQL 15: a passing and a failing check, a corrupted dump
object (exit 5, nothing left running), and a dump --all set (globals and two databases)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import PG18_BIN, PG_USER, WALKEEPER_BIN, as_pg, free_port, give_to_pg, run_pg
from tests.postgres.test_dumps import fail, make_shop
from tests.postgres.test_operate_backends import corrupt_object
from tests.postgres.test_pitr import archive_everything, conn, ok, start_primary
from tests.postgres.test_restore_test import postgres_processes_in

pytestmark = pytest.mark.postgres


def test_dump_restore_test_passes_and_fails(setup: Setup) -> None:
    primary = start_primary(setup)
    try:
        archive_everything(primary)  # the repository exists
        make_shop(primary, rows=2000)
        meta = json.loads(ok(setup.wk("dump", *conn(primary), "-d", "shop", "--json")).stdout)
    finally:
        primary.stop()  # the test needs no running server: it starts its own
    work = setup.work / "rt"
    proc = setup.wk("restore-test", "--dump", "latest", "--workdir", work, "--check-db", "shop",
                    "--check", "select count(*) = 2000 from orders", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(proc.stdout)
    assert record["ok"] and record["dump"] == meta["id"] and record["backup"] is None, record
    assert [c["name"] for c in record["checks"]] == ["cluster started", "dump restored", "databases connect",
                                                     "check: select count(*) = 2000 from orders"]
    assert record["row_counts"]["shop"]["public.orders"] == 2000 and record["row_counts"]["shop"]["audit.log"] == 1
    assert record["pg_version"] == 15 and record["bytes_restored"] == meta["plain_size"]
    assert list(work.iterdir()) == [] and not postgres_processes_in(work)

    proc = setup.wk("restore-test", "--dump", meta["id"], "--workdir", work, "--check-db", "shop",
                    "--check", "select count(*) = 1 from orders")
    line = fail(proc, 21, "restore test", "check: select count(*) = 1 from orders: returned 'f'")
    assert "Traceback" not in line and list(work.iterdir()) == [] and not postgres_processes_in(work)
    text = ok(setup.wk("restore-tests")).stdout
    assert text.count(f"dump {meta['id']}") == 2 and "FAILED (check-failed" in text, text
    assert f"of dump {meta['id']}: FAILED" in ok(setup.wk("status", "--no-cluster")).stdout
    status = json.loads(ok(setup.wk("status", "--no-cluster", "--json")).stdout)
    assert status["restore_tests"]["last_success"]["dump"] == meta["id"]
    assert status["restore_tests"]["last_success"]["backup"] is None
    fail(setup.wk("restore-test", "--dump", "latest", "--target", "immediate"), 3, "--dump")


def test_dump_restore_test_of_a_corrupted_dump_fails_with_the_integrity_reason(setup: Setup) -> None:
    primary = start_primary(setup)
    try:
        archive_everything(primary)
        make_shop(primary, rows=20000)
        meta = json.loads(ok(setup.wk("dump", *conn(primary), "-d", "shop", "--json")).stdout)
    finally:
        primary.stop()
    corrupt_object(setup, meta["items"][0]["key"])
    work = setup.work / "rt"
    line = fail(setup.wk("restore-test", "--dump", meta["id"], "--workdir", work), 5, meta["items"][0]["key"])
    print(line)
    assert "restore test" in line and ("corrupt" in line.lower() or "sha256" in line), line
    assert list(work.iterdir()) == [] and not postgres_processes_in(work)
    (record,) = json.loads(ok(setup.wk("restore-tests", "--json")).stdout)
    assert record["outcome"] == "integrity-failed" and not record["ok"] and record["dump"] == meta["id"]


def test_dump_restore_test_of_a_dump_all_set(setup: Setup) -> None:
    primary = start_primary(setup)
    try:
        archive_everything(primary)
        make_shop(primary, rows=300)
        primary.psql("create role shopper login")
        primary.psql("create database stock")
        primary.psql("alter table orders owner to shopper", db="shop")
        primary.psql("create table items(id int); insert into items select generate_series(1, 7)", db="stock")
        meta = json.loads(ok(setup.wk("dump", "--all", *conn(primary), "--json")).stdout)
    finally:
        primary.stop()
    assert meta["kind"] == "all" and {"shop", "stock"} <= set(meta_dbs := [
        i["database"] for i in meta["items"] if i["kind"] == "database"]), meta
    work = setup.work / "rt"
    proc = setup.wk("restore-test", "--dump", "latest", "--workdir", work, "--check-db", "shop",
                    "--check", "select tableowner = 'shopper' from pg_tables where tablename = 'orders'",
                    "--check", "select count(*) = 1 from pg_roles where rolname = 'shopper'")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout)
    assert f"dump {meta['id']}" in proc.stdout and "PASSED" in proc.stdout, proc.stdout
    (record,) = json.loads(ok(setup.wk("restore-tests", "--json")).stdout)
    assert record["row_counts"]["shop"]["public.orders"] == 300 and record["row_counts"]["stock"] == {
        "public.items": 7}
    assert set(meta_dbs) <= set(record["row_counts"]), record["row_counts"]
    assert list(work.iterdir()) == [] and not postgres_processes_in(work)


@pytest.mark.skipif(not PG18_BIN, reason="WALKEEPER_PG18_BIN not set (scripts/setup-env.sh installs it)")
def test_a_pg18_dump_needs_a_pg18_server(setup: Setup) -> None:
    """Without a server of the dump's major: one line, refused; with [backup] pg_bin_dir naming one: tested on it."""
    primary = start_primary(setup)
    assert PG18_BIN is not None
    bin18 = Path(PG18_BIN)
    data18, sock, port = setup.work / "pg18", setup.work / "sock18", free_port()
    sock.mkdir()
    give_to_pg(sock)
    config18 = setup.work / "walkeeper18.toml"
    try:
        archive_everything(primary)  # the repository exists
        primary.stop()
        run_pg([bin18 / "initdb", "-D", data18, "-A", "trust", "-U", PG_USER, "--no-sync"])
        run_pg(["sh", "-c", f"cat >> '{data18}/postgresql.conf'"],
               input=f"port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{sock}'\n".encode())
        run_pg([bin18 / "pg_ctl", "-D", data18, "-l", setup.work / "pg18.log", "-w", "start"])
        c18 = ["-h", str(sock), "-p", str(port), "-U", PG_USER]
        run_pg([bin18 / "psql", *c18, "-d", "postgres", "-X", "-c",
                "create table t(id int); insert into t select generate_series(1, 42)"])
        config18.write_text(setup.config.read_text() + f'[backup]\npg_bin_dir = "{bin18}"\n')
        give_to_pg(config18)
        meta = json.loads(ok(wk_config(config18, "dump", *c18, "-d", "postgres", "--json")).stdout)
    finally:
        run_pg([bin18 / "pg_ctl", "-D", data18, "-m", "immediate", "-w", "stop"], check=False)
    assert meta["server_version"] // 10000 == 18
    work = setup.work / "rt"
    if not any(p.name.isdigit() and int(p.name) >= 18 for p in Path("/usr/lib/postgresql").glob("*")):
        fail(setup.wk("restore-test", "--dump", meta["id"], "--workdir", work), 14,
             "no PostgreSQL server of version 18 or newer", "found: 15")
    proc = wk_config(config18, "restore-test", "--dump", meta["id"], "--workdir", work,
                     "--check", "select count(*) = 42 from t", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(proc.stdout)
    assert record["ok"] and record["pg_version"] == 18 and record["row_counts"]["postgres"] == {"public.t": 42}
    assert list(work.iterdir()) == [] and not postgres_processes_in(work)


def wk_config(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_pg([str(WALKEEPER_BIN), "--config", str(config), *map(str, args)]),
                          capture_output=True, text=True, timeout=300)

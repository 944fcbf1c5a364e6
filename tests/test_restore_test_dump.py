"""walkeeper restore-test --dump against real PostgreSQL 15: a passing and a failing check, a corrupted dump
object (exit 5, nothing left running), and a dump --all set (globals and two databases)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Setup
from tests.test_dumps import fail, make_shop
from tests.test_operate_backends import corrupt_object
from tests.test_pitr import archive_everything, conn, ok, start_primary
from tests.test_restore_test import postgres_processes_in

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
    assert "restore test" in line and ("corrupt" in line.lower() or "sha256" in line), line
    assert list(work.iterdir()) == [] and not postgres_processes_in(work)
    (record,) = json.loads(ok(setup.wk("restore-tests", "--json")).stdout)
    assert record["outcome"] == "integrity-failed" and not record["ok"] and record["dump"] == meta["id"]


def test_dump_restore_test_of_a_dump_all_set(setup: Setup) -> None:
    primary = start_primary(setup)
    try:
        archive_everything(primary)
        make_shop(primary, rows=300)
        primary.psql("create role shopper login; create database stock")
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
    assert f"dump {meta['id']}" in proc.stdout and "PASSED" in proc.stdout, proc.stdout
    (record,) = json.loads(ok(setup.wk("restore-tests", "--json")).stdout)
    assert record["row_counts"]["shop"]["public.orders"] == 300 and record["row_counts"]["stock"] == {
        "public.items": 7}
    assert set(meta_dbs) <= set(record["row_counts"]), record["row_counts"]
    assert list(work.iterdir()) == [] and not postgres_processes_in(work)

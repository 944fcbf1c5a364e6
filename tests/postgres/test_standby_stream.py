"""A standby from a walkeeper backup that streams, falls back to the archive, and streams again.

`walkeeper pitr --standby --primary-conninfo ... --primary-slot-name ... --create-slot` against a real
primary: the standby streams (a row shows up without a segment switch); the primary's replication is
cut (pg_hba.conf reloaded without its replication lines, walsenders terminated), and rows committed
after the cut reach the standby through walkeeper wal-fetch after segment switches; the line restored,
the standby streams again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import Cluster, run_pg, walkeeper_cmd

pytestmark = pytest.mark.postgres


def wait_until(what: str, check: Callable[[], bool], timeout: float = 40) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def set_hba(cluster: Cluster, *, replication: bool) -> None:
    hba = cluster.datadir / "pg_hba.conf"
    lines = [line for line in hba.read_text().splitlines(keepends=True) if "replication" not in line]
    if replication:
        lines.append("local replication all trust\n")
    run_pg(["sh", "-c", f"cat > '{hba}'"], input="".join(lines).encode())
    cluster.psql("select pg_reload_conf()")


def streaming(primary: Cluster) -> bool:
    return primary.psql("select count(*) from pg_stat_replication where state = 'streaming' "
                        "and application_name = 'walkeeper_standby'") == "1"


@pytest.fixture(params=["local", "s3"])
def archive_setup(request: pytest.FixtureRequest, setup: Setup) -> Setup:
    """The test world on a local or an S3 (moto) repository: the fallback reads the archive through either."""
    setup.backend = request.param
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        setup.repo_url, setup.extra_config = s3.url(), s3.config_toml()
        setup.write_config()
    return setup


def test_standby_streams_falls_back_to_the_archive_and_reconnects(archive_setup: Setup) -> None:
    setup = archive_setup
    primary = Cluster(setup.work / "primary").initdb()
    primary.configure({**primary.base_settings(), "wal_level": "replica", "max_wal_senders": 5,
                       "max_replication_slots": 5, "archive_mode": "on",
                       "archive_command": f"{walkeeper_cmd(setup.config)} wal-push %p"})
    primary.start()
    standby = Cluster(setup.work / "standby")
    try:
        primary.psql("create table t(id int primary key, note text)")
        proc = setup.wk("backup", "-h", primary.sockdir, "-p", primary.port, "-U", "postgres", "--fast-checkpoint")
        assert proc.returncode == 0, proc.stderr
        conninfo = f"host={primary.sockdir} port={primary.port} user=postgres"
        proc = setup.wk("pitr", "--pgdata", standby.datadir, "--standby", "--primary-conninfo", conninfo,
                        "--primary-slot-name", "standby1", "--create-slot")
        assert proc.returncode == 0, proc.stderr
        auto = (standby.datadir / "postgresql.auto.conf").read_text()
        assert "primary_conninfo = 'host=" in auto and "primary_slot_name = 'standby1'" in auto, auto
        assert primary.psql("select slot_type from pg_replication_slots where slot_name = 'standby1'") == "physical"
        standby.configure({**standby.base_settings(), "archive_mode": "off", "wal_retrieve_retry_interval": "200ms",
                           "hot_standby": "on"})
        standby.start()

        def seen(row: int) -> Callable[[], bool]:
            return lambda: standby.psql(f"select count(*) from t where id = {row}", check=False) == "1"

        # 1. streaming: a row shows up without any segment switch
        primary.psql("insert into t values (1, 'streamed')")
        wait_until("the standby to stream", lambda: streaming(primary))
        wait_until("row 1 on the standby (streamed)", seen(1))

        # 2. replication cut: the standby keeps up from the archive through walkeeper
        set_hba(primary, replication=False)
        primary.psql("select pg_terminate_backend(pid) from pg_stat_replication")
        wait_until("the walsender to go", lambda: not streaming(primary))
        for row in (2, 3):
            primary.psql(f"insert into t values ({row}, 'from the archive')")
            primary.wait_archived(primary.switch_wal())
            wait_until(f"row {row} on the standby (from the archive)", seen(row))
        assert not streaming(primary)
        assert "wal-fetch" in (standby.datadir / "postgresql.auto.conf").read_text()

        # 3. the line back: the standby streams again, a row shows up without a segment switch
        set_hba(primary, replication=True)
        wait_until("the standby to stream again", lambda: streaming(primary), timeout=60)
        primary.psql("insert into t values (4, 'streamed again')")
        wait_until("row 4 on the standby (streamed)", seen(4))
    finally:
        standby.destroy()
        primary.destroy()


def test_pitr_refuses_a_password_without_password_file(setup: Setup) -> None:
    """A password in --primary-conninfo with no password file to serve it: refused, nothing written."""
    target = setup.work / "standby"
    proc = setup.wk("pitr", "--pgdata", target, "--standby", "--primary-conninfo",
                    "host=primary user=rep password=secret", env={"HOME": str(setup.work)})
    assert proc.returncode == 15, proc.stderr
    assert "never writes" in proc.stderr and "secret" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not target.exists()

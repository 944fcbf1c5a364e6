"""wal-receive against a real primary: the recovery point after kill -9, refusals, the partial at the end.

The primary commits one row at a time (each row records its own commit-time clock_timestamp()),
then is killed -9 without a segment switch: archive_command never saw the segment being written.
A PITR from the repository alone must bring back every row committed more than partial_interval
(plus one upload) before the kill, and with --synchronous (synchronous_standby_names naming the
receiver, which survives the primary) every single one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import WALKEEPER_BIN, Cluster, as_pg, run_pg, walkeeper_cmd

pytestmark = pytest.mark.postgres

PARTIAL_INTERVAL = 1.0
UPLOAD_SLACK = 1.5  # one upload (read 16 MiB, compress, encrypt, store) on a busy 2-core machine


@pytest.fixture(params=["local", "s3"])
def receive_setup(request: pytest.FixtureRequest, setup: Setup) -> Setup:
    """The test world on a local or an S3 (moto) repository, with the receive spool in the work directory."""
    setup.backend = request.param
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        setup.repo_url, setup.extra_config = s3.url(), s3.config_toml()
    setup.extra_config += f'\n[receive]\nspool_dir = "{setup.work / "spool"}"\n'
    setup.write_config()
    return setup


def start_primary(setup: Setup, **extra: str | int) -> Cluster:
    primary = Cluster(setup.work / "primary").initdb()
    primary.configure({**primary.base_settings(), "wal_level": "replica", "max_wal_senders": 5,
                       "max_replication_slots": 5, "synchronous_commit": "on", "archive_mode": "on",
                       "archive_command": f"{walkeeper_cmd(setup.config)} wal-push %p", **extra})
    primary.start()
    return primary


def conn(cluster: Cluster) -> list[str]:
    return ["-h", str(cluster.sockdir), "-p", str(cluster.port), "-U", "postgres"]


class Receiver:
    """``walkeeper wal-receive`` as a service, its log in the work directory."""

    def __init__(self, setup: Setup, primary: Cluster, *args: str) -> None:
        self.log_path = setup.work / "receive.log"
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        env = {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}
        self.proc = subprocess.Popen(as_pg([WALKEEPER_BIN, "--config", setup.config, "wal-receive",
                                            *conn(primary), *args]),
                                     stdout=self.log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def receivewal_pid(self) -> int:
        """pg_receivewal, the child of walkeeper, the child of runuser."""
        def children(pid: int) -> list[int]:
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
            return [int(p) for p in out.split()]
        for service in children(self.proc.pid) or [self.proc.pid]:
            for child in children(service):
                return child
        raise AssertionError(f"no pg_receivewal running:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.log():
                return
            assert self.proc.poll() is None, f"wal-receive exited {self.proc.returncode}:\n{self.log()}"
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not logged in {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """SIGKILL: the service and its pg_receivewal at once (the host is lost); else the service alone,
        as systemd would stop it (runuser in between passes its exit status on)."""
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, sig)
            else:
                ps = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
                for pid in map(int, ps.stdout.split() or [self.proc.pid]):
                    os.kill(pid, sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log_file.close()


def kill9(cluster: Cluster) -> None:
    """The host is lost: the postmaster and every child of it, SIGKILL, no shutdown, no segment switch."""
    pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    for p in [pid, *map(int, children.split())]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def commit_rows(primary: Cluster, count: int, pause: float) -> None:
    """``count`` transactions, each one row stamped with its own time just before its COMMIT."""
    primary.psql(f"do $$ begin for i in 1..{count} loop insert into t(at) values (clock_timestamp()); commit; "
                 f"perform pg_sleep({pause}); end loop; end $$")


def rows(cluster: Cluster) -> list[tuple[int, datetime]]:
    out = cluster.psql("select id, extract(epoch from at) from t order by id")
    return [(int(i), datetime.fromtimestamp(float(at))) for i, at in (line.split("|") for line in out.splitlines())]


def recover_from_repository(setup: Setup, name: str = "recovered") -> tuple[Cluster, str]:
    cluster = Cluster(setup.work / name)
    proc = setup.wk("pitr", "--pgdata", cluster.datadir, "--target-latest")
    assert proc.returncode == 0, proc.stderr
    cluster.configure({**cluster.base_settings(), "archive_mode": "off"})
    cluster.start()
    cluster.wait_recovery_done()
    return cluster, proc.stdout + proc.stderr


@pytest.fixture
def primary_with_backup(receive_setup: Setup) -> Iterator[tuple[Setup, Cluster]]:
    setup = receive_setup
    primary = start_primary(setup)
    try:
        primary.psql("create table t(id serial primary key, at timestamptz not null)")
        proc = setup.wk("backup", *conn(primary), "--fast-checkpoint")
        assert proc.returncode == 0, proc.stderr
        yield setup, primary
    finally:
        primary.destroy()


def server_kill_time(primary: Cluster) -> float:
    return float(primary.psql("select extract(epoch from clock_timestamp())"))


def test_receive_recovery_point_after_kill9(primary_with_backup: tuple[Setup, Cluster]) -> None:
    """The receiver dies with the primary: every row committed more than partial_interval before is back."""
    setup, primary = primary_with_backup
    receiver = Receiver(setup, primary, "--create-slot", "--partial-interval", str(PARTIAL_INTERVAL))
    recovered = None
    try:
        receiver.wait_for("streaming slot walkeeper")
        commit_rows(primary, 50, 0.1)
        committed = rows(primary)
        kill_at = server_kill_time(primary)
        kill9(primary)
        receiver.stop(signal.SIGKILL)  # the same host: no last upload
        recovered, plan = recover_from_repository(setup)
        got = [i for i, _ in rows(recovered)]
        assert got == [i for i, _ in committed][:len(got)], "recovery skipped a transaction"
        must = [i for i, at in committed if at.timestamp() < kill_at - PARTIAL_INTERVAL - UPLOAD_SLACK]
        assert must and set(must) <= set(got), (
            f"recovered {len(got)} of {len(committed)}, {len(must)} were committed more than "
            f"{PARTIAL_INTERVAL + UPLOAD_SLACK}s before the kill\n{receiver.log()}")
        assert "partial segment received by wal-receive" in plan, plan
    finally:
        receiver.stop(signal.SIGKILL)
        if recovered is not None:
            recovered.destroy()


def test_receive_synchronous_loses_nothing(primary_with_backup: tuple[Setup, Cluster]) -> None:
    """--synchronous with synchronous_standby_names naming the receiver: every committed row is back."""
    setup, primary = primary_with_backup
    receiver = Receiver(setup, primary, "--create-slot", "--synchronous", "--partial-interval", str(PARTIAL_INTERVAL))
    recovered = None
    try:
        receiver.wait_for("streaming slot walkeeper")
        primary.psql("alter system set synchronous_standby_names = 'walkeeper_receive'")
        primary.psql("select pg_reload_conf()")
        deadline = time.time() + 30
        while primary.psql("select count(*) from pg_stat_replication where sync_state = 'sync'") != "1":
            assert time.time() < deadline, primary.psql("select * from pg_stat_replication")
            time.sleep(0.2)
        commit_rows(primary, 20, 0.05)
        kill9(primary)
        time.sleep(PARTIAL_INTERVAL + UPLOAD_SLACK)  # the receiver survives and stores what it has
        assert receiver.stop() == 0, receiver.log()
        recovered, plan = recover_from_repository(setup)
        assert [i for i, _ in rows(recovered)] == list(range(1, 21)), receiver.log()
        assert "partial segment received by wal-receive" in plan, plan
    finally:
        receiver.stop(signal.SIGKILL)
        if recovered is not None:
            recovered.destroy()


def test_receive_stores_segments_and_already_archived(setup: Setup) -> None:
    """Completed segments are stored once: archive_command's copy reads as "already archived"."""
    setup.extra_config = f'\n[receive]\nspool_dir = "{setup.work / "spool"}"\n'
    setup.write_config()
    primary = start_primary(setup)
    receiver = Receiver(setup, primary, "--create-slot", "--partial-interval", "1")
    try:
        receiver.wait_for("streaming slot walkeeper")
        primary.psql("create table t(x int); insert into t select generate_series(1, 1000)")
        for _ in range(2):
            primary.wait_archived(primary.switch_wal())
        primary.psql("insert into t select generate_series(1, 1000)")
        name = primary.switch_wal()
        receiver.wait_for(f"{name}")
        primary.wait_archived(name)
        lines = [line for line in receiver.log().splitlines() if name in line]
        assert len(lines) == 1 and ("stored" in lines[0] or "already archived" in lines[0]), receiver.log()
        # pg_receivewal dies: walkeeper restarts it (backoff) and goes on storing
        os.kill(receiver.receivewal_pid(), signal.SIGKILL)
        receiver.wait_for("restarting in")
        primary.psql("insert into t select generate_series(1, 1000)")
        later = primary.switch_wal()
        receiver.wait_for(later)
        primary.wait_archived(later)
        status = json.loads(setup.wk("status", "--json").stdout)
        assert status["receive"]["slot"] == "walkeeper" and status["receive"]["lag_seconds"] < 30, status
        prom = setup.work / "walkeeper.prom"
        check = setup.wk("check", "--max-receive-lag", "1m", "--prometheus", prom)
        assert check.returncode == 0 and "receive lag" in check.stdout, check.stdout + check.stderr
        assert "walkeeper_receive_lag_seconds{" in prom.read_text()
        assert receiver.stop() == 0, receiver.log()
        time.sleep(1.5)
        check = setup.wk("check", "--max-receive-lag", "1s")
        assert check.returncode == 2, check.stdout + check.stderr  # stopped: the lag grows
        spool = list((setup.work / "spool").glob("receive-*/0*"))
        assert all(p.name.endswith(".partial") for p in spool), spool  # stored segments left the spool
    finally:
        receiver.stop(signal.SIGKILL)
        primary.destroy()


@pytest.mark.parametrize("case", ["no slot", "refused"])
def test_receive_refusals(setup: Setup, case: str) -> None:
    """A missing slot or a server refusing replication: one line, exit 24, no retry loop."""
    setup.extra_config = f'\n[receive]\nspool_dir = "{setup.work / "spool"}"\n'
    setup.write_config()
    primary = start_primary(setup)
    try:
        if case == "refused":
            hba = primary.datadir / "pg_hba.conf"
            text = "".join(line for line in hba.read_text().splitlines(keepends=True) if "replication" not in line)
            run_pg(["sh", "-c", f"cat > '{hba}'"], input=text.encode())
            primary.psql("select pg_reload_conf()")
            primary.psql("select pg_create_physical_replication_slot('walkeeper', true)")
        proc = setup.wk("wal-receive", *conn(primary), timeout=60)
        assert proc.returncode == 24, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if "error" in line]
        assert len(lines) == 1, proc.stderr
        assert ("slot walkeeper does not exist" if case == "no slot" else "refuses replication") in lines[0]
        assert "Traceback" not in proc.stderr
    finally:
        primary.destroy()


def test_receive_rides_out_a_repository_outage(setup: Setup, s3_server) -> None:
    """S3 unreachable: wal-receive keeps running (pg_receivewal keeps receiving into the spool), says so,
    and stores everything once the repository is back."""
    setup.repo_url = s3_server.url()
    setup.extra_config = (s3_server.config_toml(connect_timeout=1.0, read_timeout=3.0)
                          + "[retry]\nattempts = 2\nbase_delay = 0.1\nmax_delay = 0.3\n"
                          + f'[receive]\nspool_dir = "{setup.work / "spool"}"\n')
    setup.write_config()
    primary = start_primary(setup)
    receiver = Receiver(setup, primary, "--create-slot", "--partial-interval", "1")
    try:
        receiver.wait_for("streaming slot walkeeper")
        primary.psql("create table t(x int)")
        s3_server.forwarder.stop()
        try:
            primary.psql("insert into t select generate_series(1, 1000)")
            name = primary.switch_wal()
            receiver.wait_for("cannot store into", timeout=60)
            assert receiver.proc.poll() is None, receiver.log()
        finally:
            s3_server.forwarder.start()
        receiver.wait_for(name, timeout=60)  # stored, or already archived by archive_command (also back)
        assert receiver.stop() == 0, receiver.log()
        status = json.loads(setup.wk("status", "--json").stdout)
        assert status["receive"] is not None, status
    finally:
        receiver.stop(signal.SIGKILL)
        primary.destroy()

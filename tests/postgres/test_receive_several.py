"""wal-receive into two repositories (local + S3 via moto) against a real PostgreSQL 15 primary (README
"Streaming", "Several repositories").

After a kill -9 of the primary (and of the receiver with it), a PITR from either repository *alone* (a
configuration naming only that one) recovers every row committed more than partial_interval before the
kill. With ``require = "any"``, an outage of the S3 repository (its TCP forwarder stopped: connections
refused) keeps the receiver storing into the local one, records the other as behind, and once S3 is back
the receiver catches it up in order: both hold the same segments, no gap.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import Setup
from tests.helpers.servers import TcpForwarder
from tests.postgres.test_receive import (
    PARTIAL_INTERVAL,
    UPLOAD_SLACK,
    Receiver,
    commit_rows,
    conn,
    kill9,
    recover_from_repository,
    rows,
    server_kill_time,
    start_primary,
)
from tests.postgres.test_several_repositories import timeline1, two_repositories, wait_for

pytestmark = pytest.mark.postgres


def receive_into_two(setup: Setup, request: pytest.FixtureRequest, require: str) -> tuple[TcpForwarder, str]:
    forwarder, url = two_repositories(setup, request, "s3", require)
    text = setup.config.read_text().replace("[[repository]]", f'[receive]\nspool_dir = "{setup.work / "spool"}"\n'
                                                               "[[repository]]", 1)
    setup.write_config(text)
    return forwarder, url


def alone(setup: Setup, request: pytest.FixtureRequest, which: str, url: str) -> None:
    """Rewrite the configuration to name only one of the two repositories (what a PITR may rely on)."""
    if which == "local":
        setup.repo_url, setup.extra_config = "", ""
    else:
        setup.repo_url, setup.extra_config = url, request.getfixturevalue("s3_server").config_toml()
    setup.write_config()


def test_receive_two_repositories_pitr_from_either_alone(setup: Setup, request: pytest.FixtureRequest) -> None:
    _forwarder, url = receive_into_two(setup, request, "all")
    primary = start_primary(setup)
    receiver = None
    recovered = []
    try:
        primary.psql("create table t(id serial primary key, at timestamptz not null)")
        for name in ("local", "remote"):
            proc = setup.wk("--repo", name, "backup", *conn(primary), "--fast-checkpoint")
            assert proc.returncode == 0, proc.stderr
        receiver = Receiver(setup, primary, "--create-slot", "--partial-interval", str(PARTIAL_INTERVAL))
        receiver.wait_for("streaming slot walkeeper")
        commit_rows(primary, 40, 0.1)
        committed = rows(primary)
        kill_at = server_kill_time(primary)
        kill9(primary)
        receiver.stop(signal.SIGKILL)  # the same host: no last upload
        must = [i for i, at in committed if at.timestamp() < kill_at - PARTIAL_INTERVAL - UPLOAD_SLACK]
        assert must
        for which in ("local", "remote"):
            alone(setup, request, which, url)
            cluster, plan = recover_from_repository(setup, f"recovered-{which}")
            recovered.append(cluster)
            got = [i for i, _ in rows(cluster)]
            assert got == [i for i, _ in committed][:len(got)], f"{which}: recovery skipped a transaction"
            assert set(must) <= set(got), (
                f"{which}: recovered {len(got)} of {len(committed)}, {len(must)} were committed more than "
                f"{PARTIAL_INTERVAL + UPLOAD_SLACK}s before the kill\n{receiver.log()}")
            assert "partial segment received by wal-receive" in plan, plan
            cluster.stop()
    finally:
        if receiver is not None:
            receiver.stop(signal.SIGKILL)
        for cluster in recovered:
            cluster.destroy()
        primary.destroy()


def test_receive_require_any_outage_keeps_receiving_and_catches_up(setup: Setup,
                                                                  request: pytest.FixtureRequest) -> None:
    forwarder, _url = receive_into_two(setup, request, "any")
    primary = start_primary(setup, archive_mode="off")  # everything stored comes from the receiver
    receiver = None
    try:
        receiver = Receiver(setup, primary, "--create-slot", "--partial-interval", str(PARTIAL_INTERVAL))
        receiver.wait_for("streaming slot walkeeper")
        primary.psql("create table t(id serial primary key, at timestamptz not null)")
        first = primary.switch_wal()
        receiver.wait_for(f"stored {first}")
        forwarder.stop()
        try:
            during = ""
            for i in range(3):
                primary.psql(f"insert into t(at) select clock_timestamp() from generate_series(1, {100 * (i + 1)})")
                during = primary.switch_wal()
            # the receiver goes on storing into local while remote is down, and records remote as behind
            wait_for(lambda: timeline1(setup, "local")["last"] >= during, 30, f"{during} not received into local")
            receiver.wait_for("repository remote is behind")
            status = setup.wk("status", "--no-cluster")
            line = next(x for x in status.stdout.splitlines() if "repository remote" in x)
            assert "up to date" not in line, status.stdout
            assert receiver.proc.poll() is None, receiver.log()
        finally:
            forwarder.start()
        after = primary.switch_wal()
        wait_for(lambda: timeline1(setup, "remote")["last"] >= after, 40, f"remote not caught up to {after}")
        receiver.wait_for("repository remote caught up")
        local, remote = timeline1(setup, "local"), timeline1(setup, "remote")
        assert (local["first"], local["gaps"]) == (remote["first"], []) and remote["gaps"] == [], (local, remote)
        assert remote["first"] <= during <= remote["last"], remote
        status = setup.wk("status", "--no-cluster")
        assert "repository remote (" in status.stdout and status.returncode == 0, status.stdout + status.stderr
        deadline = time.time() + 20  # the heartbeat resumes in remote too: its receive lag is fresh
        while "up to date" not in next(x for x in setup.wk("status", "--no-cluster").stdout.splitlines()
                                       if "repository remote" in x):
            assert time.time() < deadline, setup.wk("status", "--no-cluster").stdout
            time.sleep(0.5)
        assert receiver.stop() == 0, receiver.log()
    finally:
        if receiver is not None:
            receiver.stop(signal.SIGKILL)
        primary.destroy()

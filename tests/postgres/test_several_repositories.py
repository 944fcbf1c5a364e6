"""PostgreSQL 15 archiving into two repositories (local + S3, local + ssh) through an outage of the remote one,
with both ``[archive] require`` modes, and a restore that falls back from one repository to the other
(README "Several repositories"). The outage is a stopped TCP forwarder in front of moto or sshd: connections
are refused, as when the service or the network is down."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import PG_BIN, Cluster, give_to_pg, run_pg, walkeeper_cmd
from tests.helpers.servers import TcpForwarder
from tests.postgres.test_speed import copy_datadir, ready, spool_has, status_records, wal_source  # noqa: F401

pytestmark = pytest.mark.postgres


def two_repositories(setup: Setup, request: pytest.FixtureRequest, remote: str, require: str
                     ) -> tuple[TcpForwarder, str]:
    """Write the configuration: "local" first, then "remote" (S3 or ssh); return the remote's forwarder and URL."""
    server = request.getfixturevalue(f"{remote}_server")
    url = server.url()
    own = "\n".join(f"[repository.{line[1:-1]}]" if line.startswith("[") else line
                    for line in server.config_toml().splitlines())
    setup.write_config(
        f'[compression]\nmethod = "zstd"\n[encryption]\nkey_file = "{setup.key_file}"\n'
        f'[retry]\nattempts = 2\nbase_delay = 0.1\nmax_delay = 0.2\n'
        f'[archive]\nrequire = "{require}"\ncatch_up_interval = 1.0\nidle_timeout = 30\n'
        f'[[repository]]\nname = "local"\nrepo = "{setup.repo}"\n'
        f'[[repository]]\nname = "remote"\nrepo = "{url}"\n{own}\n')
    return server.forwarder, url


def listing(setup: Setup, name: str) -> dict:
    proc = setup.wk("--repo", name, "wal-list", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def timeline1(setup: Setup, name: str) -> dict:
    (tl1,) = [t for t in listing(setup, name)["timelines"] if t["timeline"] == 1]
    return tl1


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout} s")


def start_primary(setup: Setup) -> Cluster:
    primary = Cluster(setup.work / "primary").initdb()
    primary.configure({**primary.base_settings(), "archive_mode": "on", "wal_level": "replica",
                       "archive_command": f"{walkeeper_cmd(setup.config)} -v wal-push %p"})
    primary.start()
    return primary


def write_wal(primary: Cluster, n: int, tag: str) -> str:
    """``n`` segments with a little data each; the name of the last one closed."""
    last = ""
    for i in range(n):
        primary.psql(f"create table {tag}{i} as select g from generate_series(1, 2000) g")
        last = primary.switch_wal()
    return last


def archiver(primary: Cluster) -> tuple[str, int]:
    last, failed = primary.psql("select coalesce(last_archived_wal, ''), failed_count from pg_stat_archiver").split("|")
    return last, int(failed)


def done_segments(primary: Cluster) -> list[str]:
    status = primary.datadir / "pg_wal" / "archive_status"
    return sorted(p.name[:-5] for p in status.glob("*.done") if len(p.name) == 29)


@pytest.mark.parametrize("remote", ["s3", "ssh"])
def test_require_all_outage_postgres_retries_then_resumes(setup: Setup, request: pytest.FixtureRequest,
                                                          remote: str) -> None:
    forwarder, _url = two_repositories(setup, request, remote, "all")
    primary = start_primary(setup)
    try:
        primary.wait_archived(write_wal(primary, 2, "before"))
        forwarder.stop()
        try:
            last_before, failed_before = archiver(primary)
            during = write_wal(primary, 2, "during")
            wait_for(lambda: archiver(primary)[1] > failed_before, 30, "archive_command did not fail")
            # nothing is marked done that is not in both repositories: the archiver is stuck before `during`
            assert archiver(primary)[0] == last_before and last_before < during
            local = timeline1(setup, "local")
            assert all(seg <= local["last"] for seg in done_segments(primary))
            check = setup.wk("check")  # the repository that holds things up is named
            assert check.returncode == 1 and "repository remote cannot be read now" in check.stdout, check.stdout
            status = setup.wk("status", "--no-cluster")
            assert "repository remote" in status.stdout and "lag unknown; cannot be read now" in status.stdout
        finally:
            forwarder.start()
        last = write_wal(primary, 1, "after")  # a new .ready wakes the archiver at once
        primary.wait_archived(last, timeout=60)
    finally:
        primary.stop()
    local, remote_tl = timeline1(setup, "local"), timeline1(setup, "remote")
    assert (local["first"], local["last"], local["segments"], local["gaps"]) == (
        remote_tl["first"], remote_tl["last"], remote_tl["segments"], [])
    assert local["last"] >= last


@pytest.mark.parametrize("remote", ["s3", "ssh"])
def test_require_any_outage_lag_reported_then_caught_up_in_order(setup: Setup, request: pytest.FixtureRequest,
                                                                 remote: str) -> None:
    forwarder, url = two_repositories(setup, request, remote, "any")
    primary = start_primary(setup)
    try:
        primary.wait_archived(write_wal(primary, 2, "before"))
        remote_before = timeline1(setup, "remote")["last"]
        forwarder.stop()
        try:
            during = write_wal(primary, 3, "during")
            primary.wait_archived(during, timeout=60)  # archiving goes on: the local repository has them
            assert timeline1(setup, "local")["last"] >= during
            status = setup.wk("status", "--json", cwd=primary.datadir)
            assert status.returncode == 0, status.stderr
            lag = json.loads(status.stdout)["repositories_behind"]
            assert lag["remote"]["segments"] >= 3, lag
            check = setup.wk("check", cwd=primary.datadir)
            assert "remote" in check.stdout and "behind" in check.stdout, check.stdout
        finally:
            forwarder.start()
        # the pusher (alive while a repository is behind) catches it up without any new WAL
        wait_for(lambda: timeline1(setup, "remote")["last"] >= during, 40, "the remote repository did not catch up")
        last = write_wal(primary, 1, "after")
        primary.wait_archived(last, timeout=60)
        wait_for(lambda: timeline1(setup, "remote")["last"] >= last, 30, "the last segment did not reach the remote")
    finally:
        primary.stop()
    local, remote_tl = timeline1(setup, "local"), timeline1(setup, "remote")
    assert (local["first"], local["last"], local["segments"], local["gaps"]) == (
        remote_tl["first"], remote_tl["last"], remote_tl["segments"], [])
    assert remote_before < during <= remote_tl["last"]
    if remote == "ssh":  # the sshd is on this host: the caught-up files were stored in WAL order
        wal = Path("/" + url.split("://", 1)[1].split("/", 1)[1]) / "wal" / "00000001"
        caught = sorted(p for p in wal.iterdir() if remote_before < p.name <= during)
        assert len(caught) >= 3
        assert sorted(caught, key=lambda p: (p.stat().st_mtime_ns, p.name)) == caught
    status = json.loads(setup.wk("status", "--json").stdout)
    assert status["repositories_behind"]["remote"]["segments"] == 0


def test_restore_falls_back_to_the_second_repository(setup: Setup, request: pytest.FixtureRequest) -> None:
    two_repositories(setup, request, "s3", "all")
    primary = start_primary(setup)
    try:
        primary.wait_archived(primary.switch_wal())
        backup = setup.work / "backup"
        run_pg([PG_BIN / "pg_basebackup", "-D", backup, "-X", "none", "-c", "fast", *primary.conninfo()])
        primary.psql("create table kept as select g, md5(g::text) as note from generate_series(1, 5000) g")
        first_after = primary.switch_wal()
        write_wal(primary, 2, "more")
        expected = primary.psql("select count(*), sum(hashtext(note)) from kept")
        last = primary.switch_wal()
        primary.wait_archived(last)
    finally:
        primary.stop()
    # the first repository loses a segment in the middle (later ones stay): the second still has it
    lost = setup.repo / "wal" / "00000001" / first_after
    assert lost.exists()
    lost.unlink()
    restored = Cluster.from_backup(backup, setup.work / "restored", f"{walkeeper_cmd(setup.config)} -v wal-fetch %f %p")
    restored.start()
    try:
        restored.wait_recovery_done(timeout=90)
        assert restored.psql("select count(*), sum(hashtext(note)) from kept") == expected
        log = restored.log()
        assert f'restored log file "{first_after}" from archive' in log
        assert f'restored log file "{last}" from archive' in log
    finally:
        restored.stop()


# -- push-ahead and prefetch with two repositories: the fast paths answer from records made for both ------------


@pytest.mark.parametrize("require", ["all", "any"])
def test_fast_paths_with_two_repositories(setup: Setup, wal_source: Path, require: str) -> None:  # noqa: F811
    second = setup.work / "second"
    setup.write_config(
        f'[encryption]\nkey_file = "{setup.key_file}"\n'
        f'[archive]\nrequire = "{require}"\npush_ahead = 16\nidle_timeout = 2\nstatus_dir = "{setup.work}/status"\n'
        f'[restore]\nprefetch = 4\nspool_dir = "{setup.work}/spool"\n'
        f'[[repository]]\nname = "one"\nrepo = "{setup.repo}"\n[[repository]]\nname = "two"\nrepo = "{second}"\n')
    data = copy_datadir(wal_source, setup.work / "data")
    names = ready(data)
    proc = setup.wk("-v", "wal-push", f"pg_wal/{names[0]}", cwd=data)
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: status_records(setup) == names[1:], 30, "the pusher did not record the others")
    for root in (setup.repo, second):  # a record vouches for both repositories
        assert all((root / "wal" / n[:8] / n).exists() for n in names), root
    for name in names[1:]:
        proc = setup.wk("-v", "wal-push", f"pg_wal/{name}", cwd=data)
        assert proc.returncode == 0 and "fast path" in proc.stderr, proc.stderr
    # wal-fetch: the second repository alone has the first segment; the prefetcher serves the next ones
    (setup.repo / "wal" / names[0][:8] / names[0]).unlink()
    restore = copy_datadir(wal_source, setup.work / "restore")
    (restore / "recovery.signal").touch()
    give_to_pg(restore)
    proc = setup.wk("-v", "wal-fetch", names[0], "pg_wal/RECOVERYXLOG", cwd=restore)
    assert proc.returncode == 0 and "served by repository two, after one" in proc.stderr, proc.stderr
    wait_for(lambda: spool_has(setup, names[1]), 30, "the prefetcher did not fetch the next")
    proc = setup.wk("-v", "wal-fetch", names[1], "pg_wal/RECOVERYXLOG", cwd=restore)
    assert proc.returncode == 0 and "fast path" in proc.stderr, proc.stderr
    assert (restore / "pg_wal" / "RECOVERYXLOG").read_bytes() == (wal_source / "pg_wal" / names[1]).read_bytes()
    (restore / "recovery.signal").unlink()

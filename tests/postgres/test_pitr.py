"""Base backups, restore and point-in-time recovery against real PostgreSQL clusters.

The stories go through the installed ``walkeeper`` only (backup, pitr, restore-point...) and the
configuration file, so they run unchanged on every storage backend of ``backend_setup``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import PG18_MISSING, Setup, backends_by_major
from tests.helpers.pgharness import PG18_BIN, PG_BIN, WALKEEPER_BIN, Cluster, as_pg, give_to_pg, run_pg, walkeeper_cmd

pytestmark = pytest.mark.postgres

STATE_SQL = (
    "select (select sum(abalance) from pgbench_accounts), (select sum(bbalance) from pgbench_branches), "
    "(select sum(tbalance) from pgbench_tellers), (select count(*) from pgbench_history), "
    "(select md5(string_agg(aid::text || ':' || abalance, ',' order by aid)) from pgbench_accounts), "
    "(select count(*) from pg_tables where tablename like 'pgbench_%' or tablename = 'notes'), "
    "(select coalesce(string_agg(note, ',' order by id), '') from notes)"
)


def start_primary(setup: Setup, name: str = "primary", *, archive: bool = True, xid_epoch: int = 0) -> Cluster:
    primary = Cluster(setup.work / name, bin_dir=setup.pg).initdb()
    if xid_epoch:
        run_pg([primary.bin("pg_resetwal"), "-e", str(xid_epoch), primary.datadir])
    settings: dict[str, str | int] = {**primary.base_settings(), "wal_level": "replica"}
    if archive:
        settings.update({"archive_mode": "on", "archive_command": f"{walkeeper_cmd(setup.config)} wal-push %p"})
    primary.configure(settings)
    primary.start()
    return primary


def conn(cluster: Cluster) -> list[str]:
    return ["-h", str(cluster.sockdir), "-p", str(cluster.port), "-U", "postgres"]


def pgbench(cluster: Cluster, transactions: int) -> None:
    run_pg([cluster.bin("pgbench"), "-n", "-t", str(transactions), *cluster.conninfo(), "postgres"])


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def server_time(cluster: Cluster) -> str:
    """A moment strictly between the commits before and after it (the server's clock, with offset)."""
    time.sleep(0.05)
    moment = cluster.psql("select clock_timestamp()")
    time.sleep(0.05)
    return moment


def recover(setup: Setup, name: str, *pitr_args: str, archive: bool = False) -> tuple[Cluster, str]:
    """walkeeper pitr into a new directory, start it, wait for the end of recovery."""
    cluster = Cluster(setup.work / name, bin_dir=setup.pg)
    out = ok(setup.wk("pitr", "--pgdata", cluster.datadir, *pitr_args)).stdout
    settings = {**cluster.base_settings(), "archive_mode": "on" if archive else "off"}
    cluster.configure(settings)
    cluster.start()
    cluster.wait_recovery_done()
    return cluster, out


def archive_everything(cluster: Cluster) -> None:
    cluster.wait_archived(cluster.switch_wal())


@backends_by_major([("local", "15"), ("s3", "15"), ("ssh", "15"), ("local", "18")])
def test_pitr_story(backend_setup: Setup, pg_major: Path) -> None:
    """Archive, back up, work, record states, have an accident, lose the data directory, get each state back."""
    setup = backend_setup
    primary = start_primary(setup)
    states: dict[str, str] = {}
    marks: dict[str, str] = {}
    try:
        run_pg([primary.bin("pgbench"), "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        primary.psql("create table notes(id serial primary key, note text)")
        archive_everything(primary)
        began = time.time()
        backup = json.loads(ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--label", "story",
                                        "--json")).stdout)
        backup_seconds = time.time() - began
        states["immediate"] = primary.psql(STATE_SQL)  # nothing written since the backup yet

        pgbench(primary, 300)
        primary.psql("insert into notes(note) values ('at T1')")
        states["time"] = primary.psql(STATE_SQL)
        marks["time"] = server_time(primary)

        pgbench(primary, 200)
        primary.psql("insert into notes(note) values ('at the restore point')")
        states["name"] = primary.psql(STATE_SQL)
        marks["name_time"] = server_time(primary)
        point = ok(setup.wk("restore-point", "before-the-accident", *conn(primary))).stdout
        assert "before-the-accident" in point

        pgbench(primary, 200)
        primary.psql("insert into notes(note) values ('at the LSN')")
        states["lsn"] = primary.psql(STATE_SQL)
        marks["lsn"] = primary.psql("select pg_current_wal_insert_lsn()")

        pgbench(primary, 100)
        marks["xid"] = primary.psql(
            "with ins as (insert into notes(note) values ('at the XID') returning 1) select txid_current() from ins")
        states["xid"] = primary.psql(STATE_SQL)

        pgbench(primary, 100)
        primary.psql("drop table pgbench_history")  # the accident
        archive_everything(primary)
    finally:
        primary.stop()
    shutil.rmtree(primary.datadir)

    listing = json.loads(ok(setup.wk("backups", "--json")).stdout)
    (listed,) = listing["backups"]
    assert listed["id"] == backup["id"] and listed["label"] == "story"
    assert listed["system_identifier"] == json.loads(ok(setup.wk("wal-list", "--json")).stdout)["system_identifier"]
    assert listed["stored_size"] < listed["plain_size"] and listed["objects"][0]["sha256"]
    points = json.loads(ok(setup.wk("restore-points", "--json")).stdout)
    assert [p["name"] for p in points] == ["before-the-accident"]
    print(f"backup of {listed['plain_size']} bytes took {backup_seconds:.1f}s")

    # --dry-run only plans.
    plan = ok(setup.wk("pitr", "--pgdata", setup.work / "dry", "--target-time", marks["time"], "--dry-run")).stdout
    assert "dry run: nothing written" in plan and "pause (PostgreSQL's default)" in plan
    assert not (setup.work / "dry").exists()

    cases = [
        ("time", ["--target-time", marks["time"]]),
        ("name", ["--target-name", "before-the-accident"]),
        ("lsn", ["--target-lsn", marks["lsn"]]),
        ("xid", ["--target-xid", marks["xid"]]),
        ("immediate", ["--target-immediate"]),
    ]
    for kind, args in cases:
        cluster, out = recover(setup, f"pitr-{kind}", *args, "--target-action", "promote")
        try:
            assert f"backup: {backup['id']}" in out
            assert cluster.psql(STATE_SQL) == states[kind], f"{kind}: state differs\n{out}"
            assert (cluster.datadir / "recovery.signal").exists() is False  # consumed at promotion
            auto = (cluster.datadir / "postgresql.auto.conf").read_text()
            assert auto.count("# BEGIN walkeeper pitr") == 1 and "wal-fetch %f %p" in auto
            assert (cluster.datadir.stat().st_mode & 0o777) == 0o700
        finally:
            cluster.stop()
            shutil.rmtree(cluster.datadir)

    # Timelines: a PITR that promotes and archives becomes timeline 2 in the same repository...
    tl2, _out = recover(setup, "tl2", "--target-time", marks["time"], "--target-action", "promote", archive=True)
    try:
        assert tl2.psql("select timeline_id from pg_control_checkpoint()") == "2"
        tl2.psql("insert into notes(note) values ('on timeline 2')")
        states["tl2"] = tl2.psql(STATE_SQL)
        marks["tl2"] = server_time(tl2)
        tl2.psql("insert into notes(note) values ('later on timeline 2')")
        archive_everything(tl2)
    finally:
        tl2.stop()
    shutil.rmtree(tl2.datadir)
    wal = json.loads(ok(setup.wk("wal-list", "--json")).stdout)
    assert [t["timeline"] for t in wal["timelines"]] == [1, 2] and wal["timelines"][1]["history"]

    # ... a second PITR reaches a point on timeline 2 (following the history from the timeline-1 backup) ...
    again, out = recover(setup, "tl2-again", "--target-time", marks["tl2"], "--target-action", "promote")
    try:
        assert "timeline: 1 -> 2" in out, out
        assert again.psql(STATE_SQL) == states["tl2"]
    finally:
        again.stop()
        shutil.rmtree(again.datadir)

    # ... and timeline 1 after the branch point is still reachable when asked for.
    old, out = recover(setup, "tl1-after-branch", "--target-time", marks["name_time"], "--target-timeline", "1",
                       "--target-action", "promote")
    try:
        assert "timeline: 1" in out
        assert old.psql(STATE_SQL) == states["name"]
    finally:
        old.stop()
        shutil.rmtree(old.datadir)


def test_pitr_second_run_replaces_block_and_comments_out_other_targets(setup: Setup) -> None:
    primary = start_primary(setup)
    try:
        run_pg([primary.bin("pgbench"), "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        ok(setup.wk("backup", *conn(primary), "--fast-checkpoint"))
        pgbench(primary, 50)
        lsn = primary.psql("select pg_current_wal_insert_lsn()")
        archive_everything(primary)
    finally:
        primary.stop()
    target = setup.work / "restored"
    ok(setup.wk("restore", "latest", "--pgdata", target))
    assert (target / "global" / "pg_control").exists() and target.stat().st_mode & 0o777 == 0o700
    run_pg(["sh", "-c", f"echo \"recovery_target_name = 'stale'\" >> '{target}/postgresql.conf'"])
    out = ok(setup.wk("pitr", "--pgdata", target, "--no-restore", "--target-lsn", lsn)).stdout
    assert "pause (PostgreSQL's default)" in out and "next: pg_ctl -D" in out
    out = ok(setup.wk("pitr", "--pgdata", target, "--no-restore", "--target-immediate", "--exclusive",
                      "--target-action", "shutdown")).stdout
    auto = (target / "postgresql.auto.conf").read_text()
    assert auto.count("# BEGIN walkeeper pitr") == 1 and "recovery_target = 'immediate'" in auto
    assert "recovery_target_lsn" not in auto and "recovery_target_action = 'shutdown'" in auto
    conf = (target / "postgresql.conf").read_text()
    assert "# commented out by walkeeper pitr" in conf and "\nrecovery_target_name" not in conf
    assert (target / "recovery.signal").exists()
    # A standby needs no target: it follows the archive.
    out = ok(setup.wk("pitr", "--pgdata", target, "--no-restore", "--standby")).stdout
    assert (target / "standby.signal").exists() and not (target / "recovery.signal").exists()
    auto = (target / "postgresql.auto.conf").read_text()
    assert auto.count("# BEGIN walkeeper pitr") == 1 and "recovery_target =" not in auto
    # Invalid targets are refused before anything is written.
    for args in (["--target-time", "yesterday-ish"], ["--target-time", "2026-01-01 10:00:00 CEST"],
                 ["--target-time", "2026-01-01 10:00:00 Mars/Olympus"], ["--target-lsn", "0/XYZ"],
                 ["--target-lsn", "0/1", "--target-immediate"]):
        proc = setup.wk("pitr", "--pgdata", setup.work / "never", *args)
        assert proc.returncode == 3, (args, proc.stderr)
        assert not (setup.work / "never").exists()
    # Full zone names and numeric offsets are accepted (and written with an explicit offset).
    for text, utc in (("2030-01-01 10:00:00 Europe/Berlin", "2030-01-01 09:00:00.000000+00"),
                      ("2030-07-01 10:00:00 Europe/Berlin", "2030-07-01 08:00:00.000000+00"),
                      ("2030-01-01 10:00:00+05:30", "2030-01-01 04:30:00.000000+00")):
        proc = setup.wk("pitr", "--pgdata", setup.work / "never", "--target-time", text, "--dry-run")
        # The archive does not reach 2030: refused, naming the target as it would be written.
        assert proc.returncode == 15 and f"target time {utc} is in the future" in proc.stderr, proc.stderr
        assert "pg_switch_wal" not in proc.stderr and proc.stderr.startswith("walkeeper pitr: error: ")


@pytest.mark.pg18
@pytest.mark.skipif(PG18_BIN is None, reason=PG18_MISSING)
def test_backup_of_a_newer_server_needs_its_own_pg_basebackup(setup: Setup) -> None:
    """pg_basebackup 15 refuses a PostgreSQL 18 server ("incompatible server version"): without 18's tools
    walkeeper says so in one line naming both majors and [backup] pg_bin_dir, before storing anything."""
    assert PG18_BIN is not None
    setup.use_pg(PG18_BIN)
    primary = start_primary(setup, archive=False)
    try:
        setup.use_pg(PG_BIN)  # no pg_bin_dir: PATH's and Debian's pg_basebackup are 15's here
        found = setup.wk("backup", *conn(primary), "--fast-checkpoint")
        setup.pg_bin_dir = PG_BIN  # [backup] pg_bin_dir naming 15's
        setup.write_config()
        pinned = setup.wk("backup", *conn(primary), "--fast-checkpoint")
    finally:
        primary.stop()
    for proc, prefix in ((found, "pg_basebackup 15 ("), (pinned, f"[backup] pg_bin_dir: pg_basebackup 15 ({PG_BIN}")):
        assert proc.returncode == 14, proc
        (line,) = proc.stderr.splitlines()
        assert prefix in line and "older than the server (PostgreSQL 18)" in line, line
        assert "set [backup] pg_bin_dir" in line and "Traceback" not in line, line
    assert json.loads(ok(setup.wk("backups", "--json")).stdout)["backups"] == []


def test_refusals(setup: Setup) -> None:
    primary = start_primary(setup)
    try:
        run_pg([primary.bin("pgbench"), "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        before = server_time(primary)
        time.sleep(1)
        backup = json.loads(ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--json")).stdout)
        for _ in range(3):
            pgbench(primary, 50)
            archive_everything(primary)
        after = server_time(primary)
        pgbench(primary, 20)
        archive_everything(primary)
    finally:
        primary.stop()
    target = setup.work / "target"

    # A target before the oldest backup.
    proc = setup.wk("pitr", "--pgdata", target, "--target-time", before)
    assert proc.returncode == 15 and "before the end of every backup" in proc.stderr, proc.stderr
    assert not target.exists()

    # A non-empty target directory.
    target.mkdir()
    (target / "precious").write_text("keep me")
    give_to_pg(target)
    proc = setup.wk("pitr", "--pgdata", target, "--target-time", after)
    assert proc.returncode == 15 and "not empty" in proc.stderr
    proc = setup.wk("restore", "--pgdata", target)
    assert proc.returncode == 15 and (target / "precious").read_text() == "keep me"
    shutil.rmtree(target)

    # A gap in the archive between the backup and the target.
    segments = sorted((setup.repo / "wal" / "00000001").glob("0000000100000000000000??"))
    stop_wal = backup["stop_wal"]
    later = [s for s in segments if s.name > stop_wal]
    assert len(later) >= 3
    hole = later[1]
    saved = hole.read_bytes()
    hole.unlink()
    began = time.monotonic()
    proc = setup.wk("pitr", "--pgdata", target, "--target-time", after, env={"WALKEEPER_RESTORE_GAP_WAIT": "1"})
    assert proc.returncode == 8 and hole.name in proc.stderr and "Nothing was written" in proc.stderr, proc.stderr
    assert not target.exists() and time.monotonic() - began >= 1  # a gap only once [restore] gap_wait is over

    def put_back() -> None:  # as a primary still storing it would, while the plan is being checked
        hole.write_bytes(saved)
        give_to_pg(hole)

    storer = threading.Timer(1.0, put_back)
    storer.start()
    ok(setup.wk("pitr", "--pgdata", target, "--target-time", after, "--dry-run",
                env={"WALKEEPER_RESTORE_GAP_WAIT": "30"}))
    storer.join()

    # A corrupted backup object: an error, and no directory left that looks usable.
    (obj,) = (setup.repo / "backups" / backup["id"]).glob("*.tar")
    data = bytearray(obj.read_bytes())
    original = bytes(data)
    data[len(data) // 2] ^= 0x40
    obj.write_bytes(bytes(data))
    proc = setup.wk("restore", backup["id"], "--pgdata", target)
    assert proc.returncode == 5, proc.stderr
    assert not target.exists()
    empty = setup.work / "empty-before"
    empty.mkdir()
    give_to_pg(empty)
    proc = setup.wk("pitr", "--pgdata", empty, "--target-time", after)
    assert proc.returncode == 5, proc.stderr
    assert empty.exists() and list(empty.iterdir()) == []
    obj.write_bytes(original)

    # Another cluster: its backup is refused by this repository...
    other = start_primary(setup, "other", archive=False)
    try:
        proc = setup.wk("backup", *conn(other), "--fast-checkpoint")
        assert proc.returncode == 7 and "belongs to system" in proc.stderr, proc.stderr
        assert json.loads(ok(setup.wk("backups", "--json")).stdout)["incomplete"] == []
        # ... and one of its backups copied into this repository is refused at restore.
        other_setup = Setup(work=setup.work, repo=setup.work / "other-repo", key_file=setup.key_file,
                            config=setup.work / "other.toml")
        other_setup.write_config()
        foreign = json.loads(ok(other_setup.wk("backup", *conn(other), "--fast-checkpoint", "--wal", "include",
                                               "--json")).stdout)
        # Without archiving, a --wal archive backup never gets its WAL: a clear error, nothing listed.
        proc = other_setup.wk("backup", *conn(other), "--fast-checkpoint", "--wal-wait-timeout", "3")
        assert proc.returncode == 15 and "did not reach the repository" in proc.stderr, proc.stderr
        listing = json.loads(ok(other_setup.wk("backups", "--json")).stdout)
        assert [b["id"] for b in listing["backups"]] == [foreign["id"]] and listing["incomplete"] == []
    finally:
        other.stop()
    shutil.copytree(other_setup.repo / "backups" / foreign["id"], setup.repo / "backups" / foreign["id"])
    give_to_pg(setup.repo / "backups")
    proc = setup.wk("restore", foreign["id"], "--pgdata", target)
    assert proc.returncode == 7 and "belongs to system" in proc.stderr, proc.stderr
    assert not target.exists()


def insert_rows(cluster: Cluster, first: int, last: int) -> None:
    """Rows ``first``..``last``, one committed transaction each, recording its 64-bit xid."""
    cluster.psql(f"do $$ begin for i in {first}..{last} loop insert into rows values (i, pg_current_xact_id()); "
                 "commit; end loop; end $$")


def test_pitr_xid_chooses_a_backup_that_reaches_the_transaction(setup: Setup, pg_major: Path) -> None:
    """Two backups; --target-xid of a transaction that committed between them starts from the older one.

    The cluster runs in xid epoch 1, so a row's 64-bit xid and its 32-bit xid differ (both forms are given).
    """
    primary = start_primary(setup, xid_epoch=1)
    try:
        primary.psql("create table rows(id int primary key, xid xid8 not null)")
        insert_rows(primary, 1, 50)
        archive_everything(primary)
        first = json.loads(ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--json")).stdout)
        insert_rows(primary, 51, 400)
        second = json.loads(ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--json")).stdout)
        insert_rows(primary, 401, 450)
        archive_everything(primary)
        xids = dict(line.split("|") for line in primary.psql("select id, xid from rows").splitlines())
    finally:
        primary.stop()
    xid = {int(k): int(v) for k, v in xids.items()}
    assert all(v >> 32 == 1 for v in xid.values())

    # New backups record where transaction ids stood: the checkpoint's (as pg_controldata reads the
    # backup's pg_control) and the next one once the backup had ended.
    for meta, before, after in ((first, 50, 51), (second, 400, 401)):
        assert meta["checkpoint_next_xid"] <= meta["stop_next_xid"], meta
        assert xid[before] < meta["stop_next_xid"] <= xid[after], (meta, xid[before], xid[after])
    restored = setup.work / "first-restored"
    ok(setup.wk("restore", first["id"], "--pgdata", restored))
    controldata = run_pg([pg_major / "pg_controldata", restored]).stdout.decode()
    (line,) = [x for x in controldata.splitlines() if x.startswith("Latest checkpoint's NextXID:")]
    epoch, low = line.split()[-1].split(":")
    assert (int(epoch) << 32) + int(low) == first["checkpoint_next_xid"], line
    shutil.rmtree(restored)

    def rows_after_pitr(name: str, target: str) -> tuple[str, str]:
        cluster, out = recover(setup, name, "--target-xid", target, "--target-action", "promote")
        try:
            return cluster.psql("select count(*), min(id), max(id) from rows"), out
        finally:
            cluster.stop()
            shutil.rmtree(cluster.datadir)

    # Row 100 committed between the backups: the older one, whatever form of its xid is given.
    rows, out = rows_after_pitr("xid-100", str(xid[100] & 0xFFFFFFFF))
    assert rows == "100|1|100", out
    assert f"backup: {first['id']}" in out and "ended before transaction" in out, out
    plan = ok(setup.wk("pitr", "--pgdata", setup.work / "dry", "--target-xid", str(xid[420]), "--dry-run")).stdout
    assert f"backup: {second['id']}" in plan, plan
    plan = ok(setup.wk("pitr", "--pgdata", setup.work / "dry", "--target-xid", str(xid[10]), "--dry-run")).stdout
    assert f"backup: {first['id']}" in plan and "the oldest backup" in plan, plan
    plan = ok(setup.wk("pitr", "--pgdata", setup.work / "dry", "--target-xid", str(xid[100]), "--backup",
                       second["id"], "--dry-run")).stdout  # the user's choice stands, with a warning
    assert f"backup: {second['id']}" in plan and f"began before backup {second['id']} ended" in plan, plan

    # Backups taken before walkeeper recorded the fields: read from their stored pg_control.
    from walkeeper.core.config import load_config
    from walkeeper.repo.catalog import Catalog
    from walkeeper.repo.layout import BACKUP_META, backup_key
    from walkeeper.repo.repository import open_repository

    repo = open_repository(load_config(str(setup.config), env={}))
    catalog = Catalog(repo)
    for meta in catalog.backups():
        repo.storage.delete([backup_key(meta.id, BACKUP_META)])
        catalog.save_backup(dataclasses.replace(meta, checkpoint_next_xid=None, stop_next_xid=None))
    give_to_pg(setup.repo)
    assert json.loads(ok(setup.wk("backups", "show", first["id"], "--json")).stdout)["checkpoint_next_xid"] is None
    proc = ok(setup.wk("pitr", "--pgdata", setup.work / "dry", "--target-xid", str(xid[420]), "--dry-run"))
    assert f"backup: {second['id']}" in proc.stdout and "stored global/pg_control" in proc.stdout, proc.stdout
    assert proc.stderr.count("from its stored global/pg_control") == 1, proc.stderr  # the newest only
    rows, out = rows_after_pitr("xid-150", str(xid[150]))
    assert rows == "150|1|150", out
    assert f"backup: {first['id']}" in out and "stored global/pg_control" in out, out


def test_backup_memory_is_bounded(setup: Setup) -> None:
    """A backup several times larger than the RSS limit streams through in bounded memory."""
    limit_kb = 100 * 1024
    primary = start_primary(setup)
    try:
        # ~400 MB of barely compressible rows.
        primary.psql("create table big as select g, decode(md5(g::text) || md5((g * 7)::text) || "
                     "md5((g * 13)::text) || md5((g * 31)::text), 'hex') as payload "
                     "from generate_series(1, 4000000) g")
        size = int(primary.psql("select sum(pg_database_size(oid)) from pg_database"))
        assert size > 3 * limit_kb * 1024
        archive_everything(primary)
        probe = ("import resource, subprocess, sys, time; t = time.time(); "
                 "rc = subprocess.run(sys.argv[1:]).returncode; "
                 "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.time() - t)")
        cmd = [sys.executable, "-c", probe, walkeeper_cmd(None), "--config", str(setup.config), "backup",
               *conn(primary), "--fast-checkpoint", "--json"]
        proc = subprocess.run(as_pg(cmd), capture_output=True, text=True, timeout=600,
                              env={k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")})
    finally:
        primary.stop()
    lines = proc.stdout.strip().splitlines()
    rc, peak_kb, seconds = lines[-1].split()
    assert rc == "0", proc.stderr
    meta = json.loads("\n".join(lines[:-1]))
    plain = meta["plain_size"]
    print(f"backup {plain / 2**20:.0f} MiB -> {meta['stored_size'] / 2**20:.0f} MiB stored in {float(seconds):.1f}s "
          f"({plain / 2**20 / float(seconds):.0f} MiB/s), peak RSS {int(peak_kb) / 1024:.0f} MiB")
    assert plain > 3 * limit_kb * 1024
    assert int(peak_kb) < limit_kb, f"peak RSS {peak_kb} kB"
    # The restore streams too, and verifies.
    target = setup.work / "restored"
    cmd = [sys.executable, "-c", probe, walkeeper_cmd(None), "--config", str(setup.config), "restore", meta["id"],
           "--pgdata", str(target)]
    proc = subprocess.run(as_pg(cmd), capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")})
    rc, peak_kb, seconds = proc.stdout.strip().splitlines()[-1].split()
    assert rc == "0", proc.stderr
    print(f"restore in {float(seconds):.1f}s ({plain / 2**20 / float(seconds):.0f} MiB/s), "
          f"peak RSS {int(peak_kb) / 1024:.0f} MiB")
    assert int(peak_kb) < limit_kb, f"restore peak RSS {peak_kb} kB"
    assert Path(target / "PG_VERSION").exists()


def test_tablespaces_are_staged_and_mapped(setup: Setup) -> None:
    primary = start_primary(setup)
    space = setup.work / "space"
    space.mkdir()
    give_to_pg(space)
    try:
        primary.psql(f"create tablespace extra location '{space}'")
        primary.psql("create table t_in_space(id int) tablespace extra")
        primary.psql("insert into t_in_space select generate_series(1, 1000)")
        proc = ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--json"))
        backup = json.loads(proc.stdout)
        assert "temporary directory" in proc.stderr
        archive_everything(primary)
    finally:
        primary.stop()
    assert [t["location"] for t in backup["tablespaces"]] == [str(space)]
    assert len(backup["objects"]) == 2
    moved = setup.work / "space-restored"
    cluster, _out = recover(setup, "with-space", "--target-immediate", "--target-action", "promote",
                           "--tablespace-map", f"{space}={moved}")
    try:
        assert cluster.psql("select count(*) from t_in_space") == "1000"
        assert os.path.realpath(cluster.datadir / "pg_tblspc" / backup["objects"][1]["tablespace_oid"]) \
            == str(moved)
    finally:
        cluster.stop()


_CALL = re.compile(r"^(\d+) +(\w+)\((.*?)(?:\) += (-?\d+).*| <unfinished \.\.\.>)$")
_RESUMED = re.compile(r"^(\d+) +<\.\.\. \w+ resumed>.*= (-?\d+).*$")
_PATH_IN_FD = re.compile(r"^\d+<(.*)>")


def traced(setup: Setup, *args: str | os.PathLike[str]) -> list[tuple[str, list[str]]]:
    """Run walkeeper under strace; the completed (syscall, [paths]) in the order they returned."""
    out = setup.work / "strace.out"
    cmd = ["strace", "-f", "-qq", "-y", "-o", str(out), "-e", "signal=none",
           "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat",
           *as_pg([str(WALKEEPER_BIN), "--config", str(setup.config), *map(str, args)])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}
    ok(subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300))
    calls: list[tuple[str, list[str]]] = []
    pending: dict[str, tuple[str, str]] = {}
    for line in out.read_text().splitlines():
        if line.split(" ", 1)[-1].lstrip().startswith(("+++", "---")):
            continue
        call, resumed = _CALL.match(line), _RESUMED.match(line)
        assert call or resumed, line
        if call:
            pid, name, argtext, result = call.groups()
            if result is None:
                pending[pid] = (name, argtext)  # unfinished: it counts when it returns
                continue
        else:
            pid, result = resumed.groups()  # type: ignore[union-attr]
            name, argtext = pending.pop(pid)
        assert int(result) == 0, line
        if name in ("fsync", "fdatasync"):
            fd_path = _PATH_IN_FD.match(argtext)
            assert fd_path, line
            calls.append((name, [fd_path.group(1)]))
        else:
            calls.append((name, re.findall(r'"([^"]*)"', argtext)))
    return calls


def check_synced_before_pg_control(pgdata: Path, calls: list[tuple[str, list[str]]]) -> None:
    """Every file and directory of ``pgdata`` was fsynced (a file: itself, or the temp name it was renamed
    from) before global/pg_control got its name; pg_control itself before that, its directory after."""
    control = str(pgdata / "global" / "pg_control")
    synced: set[str] = set()
    for at, (name, paths) in enumerate(calls):
        if name in ("fsync", "fdatasync"):
            synced.add(paths[0])
        elif paths[-1] == control:
            assert paths[0] in synced, "pg_control's data was not synced before it got its name"
            assert (("fsync", [str(pgdata / "global")]) in calls[at + 1:]), "global/ not synced after pg_control"
            break
        elif paths[0] in synced:  # rename or link of a synced temp file
            synced.add(paths[-1])
    else:
        raise AssertionError(f"no rename or link to {control} in the trace")
    tree = [pgdata, *(p for p in pgdata.rglob("*") if not p.is_symlink() and str(p) != control)]
    assert len(tree) > 500
    missing = sorted(str(p) for p in tree if str(p) not in synced)
    assert not missing, f"{len(missing)} of {len(tree)} not synced before pg_control, e.g. {missing[:5]}"
    assert str(pgdata.parent) in synced  # the new target directory's own entry


@pytest.mark.skipif(not shutil.which("strace"), reason="strace is not installed (scripts/setup-env.sh installs it)")
def test_restore_and_pitr_sync_everything_before_pg_control(setup: Setup) -> None:
    """After a power loss a restored directory is complete or not startable: strace shows every file and
    directory fsynced (pitr: the recovery settings too) before global/pg_control is written."""
    setup.work = Path(os.path.realpath(setup.work))  # strace names descriptors by their real paths
    primary = start_primary(setup)
    try:
        run_pg([primary.bin("pgbench"), "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        ok(setup.wk("backup", *conn(primary), "--fast-checkpoint"))
        archive_everything(primary)
    finally:
        primary.stop()
    restored = setup.work / "restored"
    check_synced_before_pg_control(restored, traced(setup, "restore", "latest", "--pgdata", restored))
    recovered = setup.work / "recovered"
    calls = traced(setup, "pitr", "--pgdata", recovered, "--target-immediate", "--target-action", "promote")
    check_synced_before_pg_control(recovered, calls)
    assert (recovered / "recovery.signal").exists() and "walkeeper" in (recovered / "postgresql.auto.conf").read_text()
    cluster = Cluster(recovered, bin_dir=setup.pg)  # and it recovers
    cluster.configure({**cluster.base_settings(), "archive_mode": "off"})
    cluster.start()
    try:
        cluster.wait_recovery_done()
        assert int(cluster.psql("select count(*) from pgbench_branches")) == 1
    finally:
        cluster.stop()


def test_whole_second_mtimes_count_as_anywhere_in_their_second() -> None:
    """S3 lists LastModified in whole seconds; a segment stored 0.4 s after the target lists before it."""
    from datetime import UTC, datetime

    from walkeeper.repo.pitr_plan import archived_after

    target = datetime(2026, 11, 21, 12, 0, 0, 300000, tzinfo=UTC)
    second = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC).timestamp()
    assert archived_after(second, target)  # S3: stored somewhere in 12:00:00.000-.999
    assert not archived_after(second - 1, target)  # 11:59:59.x: surely before
    assert not archived_after(second + 0.2, target)  # a precise (local) mtime before the target
    assert archived_after(second + 0.4, target)

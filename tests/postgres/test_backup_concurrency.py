"""Several backups at once, a backup racing an expire, a backup killed mid-stream: on every backend.

Real PostgreSQL, real pg_basebackup, the installed walkeeper as separate processes (as cron and an
operator would run them). Backups started together pick their id in the same second (the ids have a
one-second resolution), so the reservation (walkeeper/repo/writers.py) has to resolve it. (faketime
cannot pin the clock here: under libfaketime 0.9.10 Python's timed waits hang or fail.) A slowed
pg_basebackup (a wrapper adding --max-rate, found through [backup] pg_bin_dir) keeps a backup
running long enough to race it or kill it.
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
from tests.helpers.pgharness import PG_BIN, WALKEEPER_BIN, as_pg, give_to_pg
from tests.postgres.test_operate_backends import repository
from tests.postgres.test_pitr import archive_everything, conn, ok, start_primary

pytestmark = [pytest.mark.postgres, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}


def start_backup(setup: Setup, primary: object, *, config: Path | None = None) -> subprocess.Popen[str]:
    """`walkeeper backup` as its own process."""
    cmd = [str(WALKEEPER_BIN), "--config", str(config or setup.config), "backup", *conn(primary),  # type: ignore
           "--fast-checkpoint", "--json"]
    return subprocess.Popen(as_pg(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def slow_config(setup: Setup, rate: str = "2M") -> Path:
    """The same repository, with a pg_basebackup that streams at most ``rate`` per second."""
    bindir = setup.work / f"slow-bin-{rate}"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "pg_basebackup"
    # --version alone is how walkeeper checks the tool's major: answered unslowed, as the real one does
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec {PG_BIN}/pg_basebackup --version\n'
                       f'exec {PG_BIN}/pg_basebackup --max-rate={rate} "$@"\n')
    wrapper.chmod(0o755)
    if not (bindir / "psql").exists():
        (bindir / "psql").symlink_to(PG_BIN / "psql")
    give_to_pg(bindir)
    config = setup.work / f"slow-{rate}.toml"
    config.write_text(setup.config.read_text() + f'\n[backup]\npg_bin_dir = "{bindir}"\n')
    give_to_pg(config)
    return config


def fill(primary: object, rows: int) -> None:
    """Barely compressible rows (~70 bytes each), so that the stored stream is as large as the table."""
    primary.psql(f"create table filler as select g, decode(md5(g::text) || md5((g * 7)::text), 'hex') as p "  # type: ignore
                 f"from generate_series(1, {rows}) g")
    archive_everything(primary)


def status(setup: Setup) -> dict:
    return json.loads(ok(setup.wk("status", "--json", "--no-cluster")).stdout)


def listed(setup: Setup) -> list[str]:
    return [b["id"] for b in json.loads(ok(setup.wk("backups", "--json")).stdout)["backups"]]


def marker_pids(setup: Setup) -> dict[str, int]:
    from walkeeper.repo.layout import WRITER_NAME
    from walkeeper.repo.writers import read_writer

    with repository(setup) as repo:
        ids = [i.key.split("/")[1] for i in repo.storage.list("backups/") if i.key.endswith(f"/{WRITER_NAME}")]
        return {backup_id: read_writer(repo.storage, backup_id).pid for backup_id in ids}


def leftovers(setup: Setup, *, dirs: bool = False) -> list[object]:
    with repository(setup) as repo:
        return [i for i in repo.storage.list_leftovers("") if dirs or i.kind != "dir"]


# -- two and five at once ----------------------------------------------------------------------------

def test_concurrent_backups_all_end_listed_and_restorable(backend_setup: Setup) -> None:
    setup = backend_setup
    primary = start_primary(setup)
    ids: list[str] = []
    try:
        archive_everything(primary)
        for count in (2, 5):
            time.sleep(1 - time.time() % 1)  # start at a second's beginning: the ids are picked ~0.5 s later
            procs = [start_backup(setup, primary) for _ in range(count)]
            results = [finish(p) for p in procs]
            for code, out, err in results:
                assert code == 0, (code, out, err)  # here every one can succeed: none may claim a false one
            got = sorted(json.loads(out)["id"] for _code, out, _err in results)
            print(f"{count} backups at once: ids {got}")
            assert len(set(got)) == count, got
            if count == 5:  # five within a second or two: some share a second
                assert any("-" in i for i in got), got
            ids += got
    finally:
        primary.stop()
    assert sorted(listed(setup)) == sorted(ids)
    doc = status(setup)
    assert doc["incomplete_backups"] == [] and doc["running_backups"] == [], doc
    assert doc["leftovers"]["objects"] == 0, doc["leftovers"]
    code = setup.wk("verify", "--deep", "--json")
    report = json.loads(code.stdout)
    assert code.returncode == 0 and report["ok"] and report["problems"] == [], report["problems"]
    assert sorted(report["backups"]) == sorted(ids)
    for backup_id in ids:  # each one restores, checksums verified
        target = setup.work / f"restored-{backup_id}"
        ok(setup.wk("restore", backup_id, "--pgdata", target))
        assert (target / "global" / "pg_control").exists()
        shutil.rmtree(target)


# -- a backup racing expire ----------------------------------------------------------------------------

def test_expire_never_touches_a_running_backup(backend_setup: Setup) -> None:
    """B starts first and streams slowly; A starts and ends during B; expire loops meanwhile.

    B's id sorts before the newest complete backup's, and its writer is alive: expire must leave its
    marker, its temporary object or upload and its data alone, and B must end listed.
    """
    setup = backend_setup
    primary = start_primary(setup)
    try:
        fill(primary, 150_000)
        slow = start_backup(setup, primary, config=slow_config(setup))
        deadline = time.monotonic() + 60
        while not marker_pids(setup) and time.monotonic() < deadline:
            time.sleep(0.2)
        [slow_id] = marker_pids(setup)
        time.sleep(1.1)  # A's id is later than B's
        fast = json.loads(ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--json")).stdout)
        assert fast["id"] > slow_id
        seen_running = 0
        while slow.poll() is None:
            plan = json.loads(ok(setup.wk("expire", "--keep", "1", "--json")).stdout)
            # (B may have ended just before this expire: it is then the newest backup, and A goes.)
            assert plan["kept_backups"] in ([fast["id"]], [slow_id]), plan
            assert not any(k.startswith(f"backups/{slow_id}/") for k in plan["objects"]), plan
            assert not any(i["path"].startswith(f"backups/{slow_id}/") for i in plan["leftovers"]), plan
            assert slow_id not in plan["incomplete_backups"], plan
            seen_running += slow_id in plan["running_backups"]
            listing = json.loads(ok(setup.wk("backups", "--json")).stdout)
            if slow_id not in [b["id"] for b in listing["backups"]]:  # still running: shown as such
                assert listing["incomplete"] == [], listing
                if listing["running"]:
                    [running] = listing["running"]
                    assert running["id"] == slow_id and "is running" in running["writer"], running
                else:  # it ended between the command's listing of backups and of writers
                    assert slow_id in listed(setup), listing
        code, out, err = finish(slow)
        assert code == 0, (code, out, err)
        assert json.loads(out)["id"] == slow_id
        assert seen_running >= 1  # the race really happened
    finally:
        primary.stop()
    ok(setup.wk("restore", slow_id, "--pgdata", setup.work / "restored"))
    # Once it ended it is the newest backup: expire takes A (now, or already did in the loop's last round).
    plan = json.loads(ok(setup.wk("expire", "--keep", "1", "--json")).stdout)
    assert plan["kept_backups"] == [slow_id], plan
    assert listed(setup) == [slow_id]


# -- a backup killed mid-stream -------------------------------------------------------------------------

def test_killed_backup_leftovers_are_reported_then_removed(backend_setup: Setup) -> None:
    setup = backend_setup
    primary = start_primary(setup)
    try:
        fill(primary, 250_000)
        slow = start_backup(setup, primary, config=slow_config(setup, "3M"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and slow.poll() is None:
            pids = marker_pids(setup)
            # local/S3: a temp object or upload holding data; ssh spools locally first: stream a while.
            if pids and (leftovers(setup) or (setup.backend == "ssh" and time.monotonic() > deadline - 85)):
                break
            time.sleep(0.2)
        [(killed_id, pid)] = marker_pids(setup).items()
        while setup.backend != "ssh" and time.monotonic() < deadline and slow.poll() is None and \
                sum(i.size for i in leftovers(setup)) < 6 * 1024 * 1024:  # type: ignore[attr-defined]
            time.sleep(0.2)  # some megabytes into it (S3: a part uploaded)
        assert slow.poll() is None, finish(slow)
        os.kill(pid, signal.SIGKILL)
        finish(slow)
        held = sum(i.size for i in leftovers(setup))  # type: ignore[attr-defined]
        assert setup.backend == "ssh" or held > 1024 * 1024, leftovers(setup)

        # Reported, with the space held, before anything removes it.
        doc = status(setup)
        assert doc["incomplete_backups"] == [killed_id] and doc["running_backups"] == []
        assert doc["leftovers"]["bytes"] == held and doc["leftovers"]["objects"] == len(leftovers(setup))
        text = ok(setup.wk("status", "--no-cluster")).stdout
        assert f"incomplete backup {killed_id}" in text
        if held:
            assert "leftovers of dead writers: " in text, text
        proc = setup.wk("verify", "--json")
        report = json.loads(proc.stdout)
        assert proc.returncode == 0 and report["ok"], report  # warnings only
        kinds = {p["kind"]: p for p in report["problems"]}
        assert f"process {pid} is gone" in kinds["incomplete-backup"]["message"], kinds
        if held:
            assert kinds["leftovers"]["details"]["bytes"] == held

        # The next backup removes the dead one's leftovers (not its objects: expire's job).
        done = json.loads(ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--json")).stdout)
        assert leftovers(setup) == []
        assert status(setup)["incomplete_backups"] == [killed_id]
    finally:
        primary.stop()

    # expire removes the dead backup's objects and directory; the complete one stays.
    plan = json.loads(ok(setup.wk("expire", "--keep", "1", "--json")).stdout)
    assert plan["incomplete_backups"] == [killed_id] and plan["kept_backups"] == [done["id"]], plan
    mine = [k for k in plan["objects"] if k.startswith(f"backups/{killed_id}/")]
    assert mine[-1] == f"backups/{killed_id}/writer.json", mine  # the id stays reserved till the end
    with repository(setup) as repo:
        assert not list(repo.storage.list(f"backups/{killed_id}/"))  # type: ignore[attr-defined]
    assert [i for i in leftovers(setup, dirs=True) if i.path.startswith("backups/")] == []  # type: ignore
    doc = status(setup)
    assert doc["incomplete_backups"] == [] and doc["leftovers"]["objects"] == 0
    assert listed(setup) == [done["id"]]

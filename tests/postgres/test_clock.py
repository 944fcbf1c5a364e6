"""A wrong host clock against a real server: backups taken by a walkeeper whose clock is 30 days off
(libfaketime preloaded into the walkeeper process only, never into PostgreSQL)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import WALKEEPER_BIN, as_pg
from tests.postgres.test_pitr import archive_everything, conn, ok, start_primary

pytestmark = pytest.mark.postgres
DAY = 86400


def wk_faked(setup: Setup, offset: str, *args: str) -> subprocess.CompletedProcess[str]:
    """walkeeper (and the psql/pg_basebackup it runs) with its clock moved by ``offset`` (e.g. +30d)."""
    if shutil.which("faketime") is None:
        raise pytest.UsageError("this test needs faketime (apt-get install -y faketime; scripts/test.sh installs it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}
    # (not FAKETIME_DONT_FAKE_MONOTONIC: with it, libfaketime 0.9.10 makes Python's time.sleep fail with EINVAL)
    cmd = as_pg(["faketime", "-f", offset, str(WALKEEPER_BIN), "--config", str(setup.config), *args])
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def backup(setup: Setup, primary_conn: list[str], offset: str | None = None) -> tuple[dict, str]:
    args = ("backup", *primary_conn, "--fast-checkpoint", "--json")
    proc = ok(wk_faked(setup, offset, *args) if offset else setup.wk(*args))
    return json.loads(proc.stdout), proc.stderr


def restored_id(setup: Setup, name: str) -> str:
    out = ok(setup.wk("restore", "latest", "--pgdata", setup.work / name)).stdout
    shutil.rmtree(setup.work / name)
    return out.split()[2]  # "restored backup ID into ..."


def check(setup: Setup) -> tuple[int, str]:
    proc = setup.wk("check")
    assert proc.returncode in (0, 1, 2), proc.stdout + proc.stderr
    return proc.returncode, proc.stdout.strip()


def test_a_wrong_clock_never_decides_which_backup_is_latest(setup: Setup) -> None:
    primary = start_primary(setup)
    try:
        archive_everything(primary)
        # 1. A backup taken with the clock 30 days fast, then a real one: the real one is the newest.
        fast, warning = backup(setup, conn(primary), "+30d")
        assert fast["clock_skew"] == pytest.approx(30 * DAY, abs=60)
        assert "this host's clock is 30.0d ahead of the server's" in warning, warning
        primary.psql("create table t as select g from generate_series(1, 1000) g")
        archive_everything(primary)
        real, warning = backup(setup, conn(primary))
        assert abs(real["clock_skew"]) < 5 and "clock" not in warning, warning
        assert fast["id"] > real["id"]  # the ids (host clock) say the fast one is newer; they must not decide

        assert restored_id(setup, "r1") == real["id"]
        assert json.loads(ok(setup.wk("backups", "show", "latest", "--json")).stdout)["id"] == real["id"]
        code, line = check(setup)
        assert code == 1, line
        assert f"a clock is off: backup {fast['id']} ended 30.0d in the future by this host's clock" in line, line
        assert f"last backup {real['id']} " in line, line
        plan = json.loads(ok(setup.wk("expire", "--keep", "1", "--json")).stdout)
        assert plan["kept_backups"] == [real["id"]] and plan["expired_backups"] == [fast["id"]]
        assert check(setup)[0] == 0

        # 2. The newest backup taken with the clock 30 days slow: still the newest.
        primary.psql("insert into t select g from generate_series(1, 1000) g")
        archive_everything(primary)
        slow, warning = backup(setup, conn(primary), "-30d")
        assert slow["clock_skew"] == pytest.approx(-30 * DAY, abs=60)
        assert "this host's clock is 30.0d behind the server's" in warning, warning
        assert slow["id"] < real["id"]
        assert restored_id(setup, "r2") == slow["id"]
        code, line = check(setup)
        assert code == 1, line
        assert f"a clock is off: backup {slow['id']} was taken with its host's clock 30.0d behind the server's" \
            in line, line
        plan = json.loads(ok(setup.wk("expire", "--keep", "1", "--json")).stdout)
        assert plan["kept_backups"] == [slow["id"]] and plan["expired_backups"] == [real["id"]]
        ok(setup.wk("verify"))
    finally:
        primary.stop()

"""Commands run as root act as the owner of what they write, or refuse in one line (walkeeper/core/privileges.py).

The table checks the decision; the story runs backup, restore-point, expire, restore and pitr as
root against a postgres-owned repository and parent directory, then starts the recovered cluster as
postgres: everything they wrote must belong to postgres. The refusals leave nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import Cluster, pg_uid, running_as_root
from tests.postgres.test_pitr import archive_everything, conn, ok, start_primary
from walkeeper.core.privileges import Decision, decide

PG = 101  # any non-root uid


@pytest.mark.parametrize(("command", "euid", "repo_owner", "repo_exists", "target_owner", "expected"), [
    # not root: never changed
    ("backup", 1000, PG, True, None, Decision()),
    ("pitr", 1000, PG, True, 0, Decision()),
    # repository writers: the local repository's owner; remote and root-owned repositories stay as they are
    ("backup", 0, PG, True, None, Decision(uid=PG)),
    ("expire", 0, PG, True, None, Decision(uid=PG)),
    ("restore-point", 0, PG, True, None, Decision(uid=PG)),
    ("backup", 0, None, False, None, Decision()),
    ("backup", 0, 0, True, None, Decision()),
    ("backup", 0, PG, False, None, Decision(uid=PG)),  # a new repository below a postgres-owned directory
    ("backup", 0, 0, False, None, "would create the repository"),
    # data directory writers: the target's owner (or its parent's), never root
    ("pitr", 0, PG, True, PG, Decision(uid=PG)),
    ("restore", 0, None, False, PG, Decision(uid=PG)),
    ("restore", 0, PG, True, 0, "owned by root"),
    ("pitr", 0, None, False, 0, "owned by root"),
    ("pitr", 0, 0, True, PG, "cannot read that repository"),
    ("restore", 0, 1234, True, PG, "cannot read that repository"),
    # everything else runs as it is
    ("verify", 0, PG, True, None, Decision()),
    ("wal-list", 0, PG, True, None, Decision()),
])
def test_who_a_command_runs_as(command: str, euid: int, repo_owner: int | None, repo_exists: bool,
                               target_owner: int | None, expected: Decision | str) -> None:
    got = decide(command, euid, repo_owner=repo_owner, repo_exists=repo_exists, target_owner=target_owner,
                 target="/srv/pg", repo="/srv/repo")
    if isinstance(expected, str):
        assert got.uid is None and got.refusal and expected in got.refusal and got.hint
    else:
        assert got == expected


def owned_by_postgres_below(root: Path) -> None:
    uid, _ = pg_uid()
    wrong = [str(p) for p in [root, *root.rglob("*")] if p.lstat().st_uid != uid]
    assert not wrong, f"not owned by postgres: {wrong[:10]}"


@pytest.mark.postgres
def test_root_runs_commands_as_the_owner(setup: Setup) -> None:
    if not running_as_root():
        pytest.skip("needs root")
    primary = start_primary(setup)
    root_dir = Path(tempfile.mkdtemp(prefix="wk-rootowned-"))  # root-owned, 0700 by mkdtemp
    recovered = Cluster(setup.work / "recovered")
    try:
        archive_everything(primary)
        # backup as root (from a directory postgres cannot enter, as with sudo from /root)
        first = ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", as_postgres=False, cwd=root_dir)).stdout
        primary.psql("create table t as select g from generate_series(1, 5000) g")
        time.sleep(1.1)  # backup ids have a one-second resolution
        ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", as_postgres=False))
        primary.psql("insert into t select g from generate_series(1, 1000) g")
        ok(setup.wk("restore-point", "after-t", *conn(primary), as_postgres=False))
        primary.psql("drop table t")
        archive_everything(primary)
        owned_by_postgres_below(setup.repo)
        # expire as root can remove what backup as root stored
        first_id = first.split()[1]
        ok(setup.wk("expire", "--keep", "1", as_postgres=False))
        assert not (setup.repo / "backups" / first_id).exists()  # its objects gone, and its empty directory
        owned_by_postgres_below(setup.repo)

        # Refused, with nothing written: a data directory root would own; a new repository root would own.
        proc = setup.wk("pitr", "--pgdata", root_dir / "pg", "--target-name", "after-t", as_postgres=False)
        assert proc.returncode == 15 and "owned by root" in proc.stderr and len(proc.stderr.splitlines()) == 1
        proc = setup.wk("restore", "--pgdata", root_dir / "pg", as_postgres=False)
        assert proc.returncode == 15 and "owned by root" in proc.stderr
        proc = setup.wk("--repo", root_dir / "repo", "backup", *conn(primary), as_postgres=False)
        assert proc.returncode == 15 and "walkeeper init --owner postgres" in proc.stderr
        assert list(root_dir.iterdir()) == []

        # restore as root into a postgres-owned parent: the files are postgres's
        restored = setup.work / "restored"
        ok(setup.wk("restore", "--pgdata", restored, as_postgres=False))
        owned_by_postgres_below(restored)
        # pitr as root: the server starts as postgres and reaches the restore point
        out = ok(setup.wk("pitr", "--pgdata", recovered.datadir, "--target-name", "after-t", "--target-action",
                          "promote", as_postgres=False)).stdout
        assert "wrote recovery.signal" in out
        owned_by_postgres_below(recovered.datadir)
        recovered.configure({**recovered.base_settings(), "archive_mode": "off"})
        recovered.start()
        recovered.wait_recovery_done()
        assert recovered.psql("select count(*) from t") == "6000"
    finally:
        recovered.destroy()
        primary.destroy()
        shutil.rmtree(root_dir, ignore_errors=True)

"""Failures people meet on a real machine say what happened and what to do, in one line, without errno
numbers: a full disk or an unwritable directory during restore (and what became of the partial restore),
an unreadable repository, a check before any WAL was archived."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import give_to_pg, pg_uid, running_as_root
from tests.postgres.test_operate import add_backup, push_segments, seg, stored
from walkeeper.core.errors import FATAL_BASE, StorageError

BACKUP_ID = "20260101T000000Z"
BIG = 3 * 1024 * 1024  # does not fit a 1 MiB file system


def backup_tar() -> bytes:
    """A base-backup-shaped tar whose data file is incompressible (the codec cannot shrink it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, payload in (("PG_VERSION", b"15\n"), ("base/1/16384", os.urandom(BIG)),
                              ("global/pg_control", b"C" * 8192)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.fixture
def with_backup(setup: Setup) -> Setup:
    push_segments(setup, 1, [1, 2])  # the repository's identity comes with the first WAL
    add_backup(setup, BACKUP_ID, 1, 1, 1, ended=time.time() - 60, data=backup_tar())
    return setup


@pytest.fixture
def small_fs(setup: Setup) -> Iterator[Path]:
    """A 1 MiB tmpfs owned by postgres (mounting needs root)."""
    if not running_as_root():
        pytest.skip("mounting a small tmpfs needs root")
    mount = setup.work / "small"
    mount.mkdir()
    uid, gid = pg_uid()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,uid={uid},gid={gid},mode=0700", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Errno" not in lines[0] and "internal error" not in lines[0] and "Traceback" not in proc.stderr
    return lines[0]


def test_full_disk_into_a_directory_the_restore_created(with_backup: Setup, small_fs: Path) -> None:
    target = small_fs / "data"
    line = error_line(with_backup.wk("restore", BACKUP_ID, "--pgdata", target), StorageError.code)
    assert f"no space left on device writing {target}: the backup needs 3.0 MiB there; free that much or " \
           "choose another --pgdata" in line, line
    assert f"the partial restore was removed ({target}, created by this restore, is gone)" in line, line
    assert not target.exists()


def test_full_disk_into_an_empty_directory_that_existed(with_backup: Setup, small_fs: Path) -> None:
    line = error_line(with_backup.wk("restore", BACKUP_ID, "--pgdata", small_fs), StorageError.code)
    assert f"no space left on device writing {small_fs}: " in line, line
    assert f"the partial restore was removed from {small_fs} (empty again, as before)" in line, line
    assert small_fs.is_dir() and list(small_fs.iterdir()) == []


def test_unwritable_parent_directory_means_nothing_was_written(with_backup: Setup) -> None:
    if not running_as_root():
        pytest.skip("needs a directory postgres cannot write: made by root")
    parent = with_backup.work / "root-owned"
    parent.mkdir(mode=0o755)  # root's, not postgres's
    target = parent / "data"
    line = error_line(with_backup.wk("restore", BACKUP_ID, "--pgdata", target), StorageError.code)
    assert f"permission denied writing {target} (running as postgres (uid " in line, line
    assert f"make {parent} writable by this user or choose another --pgdata; nothing was written" in line, line
    assert not target.exists()


def test_unreadable_repository_asks_for_read_permission_only(setup: Setup) -> None:
    if not running_as_root():
        pytest.skip("needs an object postgres cannot read")
    push_segments(setup, 1, [1])
    obj = stored(setup, seg(1, 1))
    uid, _gid = pg_uid()
    os.chown(obj, 0, 0)  # root's, 0600: postgres cannot read it
    pg_wal = setup.work / "data" / "pg_wal"
    pg_wal.mkdir(parents=True)
    give_to_pg(setup.work / "data")
    proc = setup.wk("wal-fetch", seg(1, 1), "pg_wal/RECOVERYXLOG", cwd=setup.work / "data")
    line = error_line(proc, FATAL_BASE + StorageError.code)
    assert f"permission denied while reading {obj} (running as postgres (uid {uid}))" in line, line
    assert "reading needs read permission only" in line and "writable" not in line, line


def test_check_before_any_wal_was_archived(setup: Setup) -> None:
    from walkeeper.core.config import load_config
    from walkeeper.repo.repository import open_repository

    open_repository(load_config(str(setup.config), env={})).ensure_identity(7, 1024 * 1024, 15)
    give_to_pg(setup.repo)
    proc = setup.wk("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no WAL archived yet" in proc.stdout and "never ago" not in proc.stdout, proc.stdout

"""The one durable-write helper (walkeeper/core/durable.py): atomic, exact modes, no temp left, errors surface.

Whether it really syncs, and in which order, is checked with strace on a real restore and pitr
(tests/postgres/test_pitr.py::test_restore_and_pitr_sync_everything_before_pg_control).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from walkeeper.core.durable import TEMP_PREFIX, TreeSync, write_file
from walkeeper.storage.base import TEMP_PREFIX as STORAGE_TEMP_PREFIX


def test_write_replaces_atomically_with_the_exact_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_file(target, b"one")
    assert target.read_bytes() == b"one" and stat.S_IMODE(target.stat().st_mode) == 0o600
    old = os.umask(0o077)
    try:
        write_file(target, [b"t", b"wo"], mode=0o644)  # chunks; the mode is exact whatever the umask
    finally:
        os.umask(old)
    assert target.read_bytes() == b"two" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["f"]


def test_no_clobber_refuses_an_existing_name(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_file(target, b"first", replace=False)
    with pytest.raises(FileExistsError):
        write_file(target, b"second", replace=False)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):  # not even a dangling link is replaced (or written through)
        write_file(tmp_path / "link", b"x", replace=False)
    assert target.read_bytes() == b"first" and not (tmp_path / "nowhere").exists()
    assert sorted(os.listdir(tmp_path)) == ["f", "link"]


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_file(target, b"old")

    def chunks() -> Iterator[bytes]:
        yield b"half"
        raise OSError("source broke")

    with pytest.raises(OSError, match="source broke"):
        write_file(target, chunks())
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


def test_temp_names_are_hidden_from_storage_listings() -> None:
    assert TEMP_PREFIX.startswith(STORAGE_TEMP_PREFIX)


def test_tree_sync_syncs_files_and_directories_and_reports_errors(tmp_path: Path) -> None:
    sync = TreeSync(threads=2)
    try:
        for i in range(100):  # more than the queue holds: the writer waits for the syncing threads
            fd = os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, b"x")
            sync.add_file(fd)
        sync.add_dir(tmp_path)
        sync.finish()
    finally:
        sync.close()
    sync.close()  # idempotent

    sync = TreeSync(threads=2)
    try:
        r, w = os.pipe()  # fsync of a pipe fails (EINVAL): the error reaches the caller
        os.close(w)
        sync.add_file(r)
        with pytest.raises(OSError):
            sync.finish()
    finally:
        sync.close()

"""FileWriters: files written by threads, bounded bytes in flight, errors raised in the caller, nothing after close."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from walkeeper.core.durable import TreeSync
from walkeeper.core.filewriters import FileWriters


def test_files_are_written_with_their_mode_and_synced(tmp_path: Path) -> None:
    sync = TreeSync(threads=2)
    writers = FileWriters(2, sync=sync)
    try:
        for i in range(50):
            writers.write(tmp_path / f"f{i}", 0o600, bytes([i]) * (i * 1000))
        writers.finish()
        sync.finish()
    finally:
        writers.close()
        sync.close()
    for i in range(50):
        path = tmp_path / f"f{i}"
        assert path.read_bytes() == bytes([i]) * (i * 1000) and path.stat().st_mode & 0o777 == 0o600


def test_an_existing_file_or_link_is_never_written_through(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    writers = FileWriters(2)
    try:
        writers.write(tmp_path / "link", 0o600, b"x")
        with pytest.raises(OSError) as caught:
            writers.finish()
        assert caught.value.errno in (errno.EEXIST, errno.ELOOP)
    finally:
        writers.close()
    assert (tmp_path / "target").read_text() == "keep"


def test_the_first_error_reaches_the_caller_at_its_next_write(tmp_path: Path) -> None:
    writers = FileWriters(1)
    try:
        writers.write(tmp_path / "missing-dir" / "f", 0o600, b"x")
        deadline = time.monotonic() + 10
        with pytest.raises(FileNotFoundError):
            while time.monotonic() < deadline:
                writers.write(tmp_path / f"g{time.monotonic_ns()}", 0o600, b"y")
                time.sleep(0.01)
    finally:
        writers.close()


def test_bytes_in_flight_stay_bounded(tmp_path: Path) -> None:
    """A caller faster than the disk waits: with room for one file in flight, each write returns only
    once every earlier file is completely on disk (a file larger than the bound still goes, alone)."""
    size = 60 * 1024
    writers = FileWriters(2, max_bytes=64 * 1024)
    try:
        for i in range(40):
            writers.write(tmp_path / f"f{i}", 0o600, bytes([i % 251]) * size)
            for earlier in range(i):
                assert (tmp_path / f"f{earlier}").stat().st_size == size, (i, earlier)
        writers.write(tmp_path / "big", 0o600, b"b" * (1 << 20))
        writers.finish()
    finally:
        writers.close()
    assert (tmp_path / "big").stat().st_size == 1 << 20


def test_close_writes_nothing_more(tmp_path: Path) -> None:
    writers = FileWriters(1, max_bytes=1 << 30)
    for i in range(200):
        writers.write(tmp_path / f"f{i}", 0o600, b"z" * 10000)
    writers.close()
    written = len(list(tmp_path.iterdir()))
    time.sleep(0.1)
    assert len(list(tmp_path.iterdir())) == written

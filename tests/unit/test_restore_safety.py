"""Restore never writes outside its target: hostile tars are refused (no PostgreSQL needed)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from walkeeper.core.errors import IntegrityError
from walkeeper.postgres.basebackup import TarScanner
from walkeeper.postgres.extract import extract_tar


def make_tar(*members: tuple[str, str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
                tar.addfile(info)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
                tar.addfile(info)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
    return buf.getvalue()


def extract(data: bytes, root: Path) -> dict[str, bytes]:
    deferred: dict[str, bytes] = {}
    extract_tar(io.BytesIO(data).read, root, deferred)
    return deferred


@pytest.mark.parametrize("members", [
    [("/etc/evil", "file", b"x")],
    [("../evil", "file", b"x")],
    [("base/../../evil", "file", b"x")],
    [("link", "sym", "/etc"), ("link/evil", "file", b"x")],
    [("link", "sym", "../.."), ("link/evil", "file", b"x")],
    [("hard", "hard", "/etc/passwd")],
    [("fifo", "fifo", b"")],
])
def test_hostile_members_are_refused(tmp_path: Path, members: list[tuple[str, str, bytes | str]]) -> None:
    root = tmp_path / "target"
    root.mkdir()
    with pytest.raises(IntegrityError):
        extract(make_tar(*members), root)
    assert not (tmp_path / "evil").exists()
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))


def test_a_symlinked_directory_cannot_be_used_to_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "target"
    root.mkdir()
    (root / "pg_wal").symlink_to(outside)  # planted before the restore
    with pytest.raises(IntegrityError):
        extract(make_tar(("pg_wal/evil", "file", b"x")), root)
    assert list(outside.iterdir()) == []


def test_ordinary_backup_layout_extracts_and_defers_pg_control(tmp_path: Path) -> None:
    data = make_tar(("PG_VERSION", "file", b"15\n"), ("global", "dir", b""), ("global/pg_control", "file", b"C" * 64),
                    ("base/1/1259", "file", b"x" * 10000), ("pg_wal", "dir", b""), ("inside", "sym", "base/1"))
    root = tmp_path / "target"
    root.mkdir()
    deferred = extract(data, root)
    assert deferred == {"global/pg_control": b"C" * 64}
    assert not (root / "global" / "pg_control").exists()  # written by restore only after verification
    assert (root / "base" / "1" / "1259").read_bytes() == b"x" * 10000
    assert (root / "inside" / "1259").exists()
    assert (root / "base").stat().st_mode & 0o777 == 0o700


def test_scanner_captures_small_files_across_chunk_boundaries() -> None:
    label = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
    data = make_tar(("base/1/big", "file", bytes(range(256)) * 5000), ("backup_label", "file", label),
                    ("backup_manifest", "file", b"{}"))
    for step in (1, 7, 511, 512, 513, 65536):
        captured: dict[str, bytes] = {}
        scanner = TarScanner(captured)
        for start in range(0, len(data), step):
            scanner.feed(data[start:start + step])
        assert scanner.ended and captured == {"backup_label": label, "backup_manifest": b"{}"}

"""The archive_command / restore_command contract, through the installed walkeeper as PostgreSQL calls it.

Synthetic segments with real page headers keep these fast; tests/postgres/test_postgres_archive.py proves the
same against a real server.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import give_to_pg
from tests.helpers.walfactory import MiB, fake_datadir, make_segment

SYSID = 7300000000000000001


def push(setup: Setup, name: str, data: bytes, where: str = "pgdata", **kwargs: object
         ) -> subprocess.CompletedProcess[str]:
    """Write ``data`` as pg_wal/NAME in a fake data directory and run wal-push with %p relative."""
    datadir = fake_datadir(setup.work / where)
    (datadir / "pg_wal" / name).write_bytes(data)
    give_to_pg(datadir)
    return setup.wk("wal-push", f"pg_wal/{name}", cwd=datadir, **kwargs)  # type: ignore[arg-type]


def fetch(setup: Setup, name: str, **kwargs: object) -> tuple[subprocess.CompletedProcess[str], Path]:
    datadir = fake_datadir(setup.work / "pgdata")
    give_to_pg(datadir)
    dest = datadir / "pg_wal" / "RECOVERYXLOG"
    if dest.exists():
        dest.unlink()
    return setup.wk("wal-fetch", name, "pg_wal/RECOVERYXLOG", cwd=datadir, **kwargs), dest  # type: ignore[arg-type]


def stored(setup: Setup, name: str) -> Path:
    tli = name[:8]
    return setup.repo / "wal" / tli / name


def assert_quiet_not_found(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""


def assert_fatal(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.returncode > 125
    assert text in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line, no traceback


def test_round_trip_of_every_kind(setup: Setup) -> None:
    seg_name, seg = make_segment(1, 3, sysid=SYSID)
    files = {
        seg_name: seg,
        "00000002.history": b"1\t0/3000158\tno recovery target specified\n",
        "000000010000000000000003.00000028.backup": b"START WAL LOCATION: 0/3000028\n",
        "000000010000000000000004.partial": make_segment(1, 4, sysid=SYSID)[1][: MiB // 2],
    }
    for name, data in files.items():
        proc = push(setup, name, data)
        assert proc.returncode == 0, proc.stderr
        assert stored(setup, name).exists()
        proc, dest = fetch(setup, name)
        assert proc.returncode == 0, proc.stderr
        assert dest.read_bytes() == data
    assert not [p.name for p in (setup.work / "pgdata" / "pg_wal").iterdir() if "tmp" in p.name]  # no temp left


def test_repository_permissions_and_identity(setup: Setup) -> None:
    name, data = make_segment(1, 3, sysid=SYSID)
    assert push(setup, name, data).returncode == 0
    for path in [setup.repo, *setup.repo.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    meta = (setup.repo / "walkeeper.json").read_text()
    assert str(SYSID) in meta and str(MiB) in meta


@pytest.mark.parametrize("size", [1 * MiB, 2 * MiB, 16 * MiB])
def test_any_segment_size(setup: Setup, size: int) -> None:
    name, data = make_segment(1, 7, sysid=SYSID, size=size)
    assert push(setup, name, data).returncode == 0
    proc, dest = fetch(setup, name)
    assert proc.returncode == 0 and dest.read_bytes() == data


def test_duplicate_push_succeeds_without_rewriting(setup: Setup) -> None:
    name, data = make_segment(1, 3, sysid=SYSID)
    assert push(setup, name, data).returncode == 0
    before = stored(setup, name).stat()
    proc = push(setup, name, data)
    assert proc.returncode == 0, proc.stderr
    after = stored(setup, name).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_different_content_is_refused_and_nothing_overwritten(setup: Setup) -> None:
    name, data = make_segment(1, 3, sysid=SYSID, seed=1)
    _, other = make_segment(1, 3, sysid=SYSID, seed=2)
    assert push(setup, name, data).returncode == 0
    original = stored(setup, name).read_bytes()
    proc = push(setup, name, other)
    assert 0 < proc.returncode <= 125
    assert hashlib.sha256(data).hexdigest() in proc.stderr
    assert hashlib.sha256(other).hexdigest() in proc.stderr
    assert stored(setup, name).read_bytes() == original
    proc, dest = fetch(setup, name)
    assert dest.read_bytes() == data


@pytest.mark.parametrize("name", ["foo", "000000010000000000000001.gz", "00000001000000000000001",
                                  "RECOVERYXLOG", "000000010000000000000001.tmp"])
def test_bad_names_are_refused(setup: Setup, name: str) -> None:
    proc = push(setup, name, b"x" * 100)
    assert 0 < proc.returncode <= 125
    assert "not a WAL file name" in proc.stderr
    proc, _ = fetch(setup, name)
    assert proc.returncode > 125


def test_path_tricks_in_fetch_names_are_refused(setup: Setup) -> None:
    for name in ["../walkeeper.json", "wal/00000001/000000010000000000000001", "/etc/passwd"]:
        proc, dest = fetch(setup, name)
        assert proc.returncode > 125 and not dest.exists()


def test_push_of_file_that_is_not_wal(setup: Setup) -> None:
    name, data = make_segment(1, 3, sysid=SYSID)
    proc = push(setup, name, b"\0" * MiB)
    assert 0 < proc.returncode <= 125 and "magic" in proc.stderr
    _, renamed = make_segment(1, 4, sysid=SYSID)  # segment 4's content under segment 3's name
    proc = push(setup, name, renamed)
    assert 0 < proc.returncode <= 125 and "renamed" in proc.stderr
    proc = push(setup, name, data[: MiB // 2])
    assert 0 < proc.returncode <= 125 and "truncated" in proc.stderr
    assert not stored(setup, name).exists()


def test_missing_source_file(setup: Setup) -> None:
    datadir = fake_datadir(setup.work / "pgdata")
    give_to_pg(datadir)
    proc = setup.wk("wal-push", "pg_wal/000000010000000000000009", cwd=datadir)
    assert 0 < proc.returncode <= 125 and "does not exist" in proc.stderr


def test_foreign_cluster_is_refused(setup: Setup) -> None:
    name, data = make_segment(1, 3, sysid=SYSID)
    assert push(setup, name, data).returncode == 0
    name2, data2 = make_segment(1, 4, sysid=SYSID + 1)
    proc = push(setup, name2, data2)
    assert 0 < proc.returncode <= 125
    assert "belongs to system" in proc.stderr and str(SYSID) in proc.stderr
    assert not stored(setup, name2).exists()


def test_missing_segment_and_history_exit_1_quietly(setup: Setup) -> None:
    name, data = make_segment(1, 3, sysid=SYSID)
    assert push(setup, name, data).returncode == 0
    for missing in ["000000010000000000000004", "00000002.history", "00000001.history",
                    "000000020000000000000003"]:
        proc, dest = fetch(setup, missing)
        assert_quiet_not_found(proc)
        assert not dest.exists()


@pytest.mark.parametrize("backend_setup", ["local", "s3"], indirect=True)
def test_segment_stored_out_of_order_is_waited_for_and_a_real_gap_is_fatal(backend_setup: Setup) -> None:
    """Missing N with N+1 stored: served if N is stored during the wait, exit 208 after it; no N+1: exit 1."""
    setup = backend_setup
    segments = dict(make_segment(1, segno, sysid=SYSID) for segno in range(3, 9))
    names = sorted(segments)
    for name in (names[0], names[2], names[4]):  # 3, 5, 7: 4 and 6 missing, later ones stored
        assert push(setup, name, segments[name]).returncode == 0

    # 4 is being stored by another process (a parallel push) while PostgreSQL asks for it.
    storer = threading.Timer(1.5, lambda: push(setup, names[1], segments[names[1]], where="other"))
    storer.start()
    began = time.monotonic()
    proc, dest = fetch(setup, names[1], env={"WALKEEPER_RESTORE_GAP_WAIT": "30"})
    elapsed = time.monotonic() - began
    storer.join()
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == segments[names[1]] and 1.5 <= elapsed < 30

    # 6 never comes: a gap, once the wait is over (and never "not found").
    began = time.monotonic()
    proc, dest = fetch(setup, names[3], env={"WALKEEPER_RESTORE_GAP_WAIT": "1"})
    elapsed = time.monotonic() - began
    assert_fatal(proc, 208, names[4])
    assert "did not appear within 1 s" in proc.stderr and "gap_wait" in proc.stderr
    assert not dest.exists() and elapsed >= 1

    # Nothing after 8: "not found" at once, however long the wait for a gap would be.
    began = time.monotonic()
    proc, dest = fetch(setup, names[5], env={"WALKEEPER_RESTORE_GAP_WAIT": "30"})
    assert_quiet_not_found(proc)
    assert not dest.exists() and time.monotonic() - began < 15


def test_tampered_object_is_fatal(setup: Setup) -> None:
    name, data = make_segment(1, 3, sysid=SYSID)
    assert push(setup, name, data).returncode == 0
    path = stored(setup, name)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    path.write_bytes(bytes(blob))
    proc, dest = fetch(setup, name)
    assert_fatal(proc, 205, "failed authentication")
    assert not dest.exists()


def test_truncated_object_is_fatal(setup: Setup) -> None:
    name, data = make_segment(1, 3, sysid=SYSID)
    assert push(setup, name, data).returncode == 0
    path = stored(setup, name)
    path.write_bytes(path.read_bytes()[:-40])
    proc, dest = fetch(setup, name)
    assert_fatal(proc, 205, "truncated")
    assert not dest.exists()


def test_swapped_objects_are_fatal(setup: Setup) -> None:
    for segno in (3, 4):
        name, data = make_segment(1, segno, sysid=SYSID)
        assert push(setup, name, data).returncode == 0
    a, b = stored(setup, "000000010000000000000003"), stored(setup, "000000010000000000000004")
    a.write_bytes(b.read_bytes())
    proc, _ = fetch(setup, "000000010000000000000003")
    assert_fatal(proc, 205, "swapped")


def test_wrong_key_is_fatal_on_fetch_and_refused_on_push(setup: Setup) -> None:
    name, data = make_segment(1, 3, sysid=SYSID)
    assert push(setup, name, data).returncode == 0
    from tests.conftest import make_key

    make_key(setup.key_file.with_name("other-key"))
    setup.key_file.unlink()
    setup.key_file.with_name("other-key").rename(setup.key_file)
    proc, dest = fetch(setup, name)
    assert_fatal(proc, 204, "key id")
    assert not dest.exists()
    name2, data2 = make_segment(1, 4, sysid=SYSID)
    proc = push(setup, name2, data2)
    assert 0 < proc.returncode <= 125 and "key id" in proc.stderr


def test_loose_key_file_permissions_are_refused(setup: Setup) -> None:
    setup.key_file.chmod(0o644)
    name, data = make_segment(1, 3, sysid=SYSID)
    proc = push(setup, name, data)
    assert proc.returncode == 4 and "chmod 600" in proc.stderr
    proc, _ = fetch(setup, name)
    assert proc.returncode == 204
    assert setup.key_file.read_text().strip() not in proc.stderr


def test_unreadable_or_missing_repository_is_fatal_not_missing(setup: Setup) -> None:
    proc, _ = fetch(setup, "000000010000000000000003")
    assert_fatal(proc, 209, "no walkeeper repository")
    name, data = make_segment(1, 3, sysid=SYSID)
    assert push(setup, name, data).returncode == 0
    (setup.repo / "wal" / "00000001").chmod(0o000)
    try:
        proc, _ = fetch(setup, name)
        assert_fatal(proc, 209, "permission denied")
    finally:
        (setup.repo / "wal" / "00000001").chmod(0o700)


def test_bad_config_is_fatal_for_fetch(setup: Setup) -> None:
    setup.write_config(f'repo = "{setup.repo}"\n[compresion]\nlevel = 3\n')
    proc, _ = fetch(setup, "000000010000000000000003")
    assert_fatal(proc, 203, "unknown key 'compresion'")
    setup.write_config(f'repo = "{setup.repo}"\n[compression]\nlevel = "high"\n')
    proc = push(setup, *make_segment(1, 3, sysid=SYSID))
    assert proc.returncode == 3 and "[compression] level: expected an integer" in proc.stderr


def test_usage_error_in_restore_command_stops_recovery(setup: Setup) -> None:
    proc = setup.wk("wal-fetch", "000000010000000000000003")  # %p forgotten
    assert proc.returncode > 125


def test_traceback_only_with_verbose(setup: Setup) -> None:
    proc, _ = fetch(setup, "000000010000000000000003")
    assert "Traceback" not in proc.stderr
    datadir = setup.work / "pgdata"
    proc = setup.wk("-vv", "wal-fetch", "000000010000000000000003", "pg_wal/RECOVERYXLOG", cwd=datadir)
    assert proc.returncode == 209 and "Traceback" in proc.stderr


@pytest.fixture
def tiny_disk(setup: Setup):  # type: ignore[no-untyped-def]
    mount = setup.work / "tiny"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up here: {proc.stderr.strip()}")
    give_to_pg(mount)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_fails_push_and_leaves_nothing(setup: Setup, tiny_disk: Path) -> None:
    setup.repo = tiny_disk / "repo"
    setup.write_config()
    setup.write_config(setup.config.read_text().replace('level = 3', 'level = 1').replace(
        '[compression]\nmethod = "zstd"', '[compression]\nmethod = "none"'))
    ok_name, ok = make_segment(1, 3, sysid=SYSID, size=MiB)
    assert push(setup, ok_name, ok).returncode == 0  # ~1 MiB of the 1.5 MiB
    name, data = make_segment(1, 4, sysid=SYSID, size=MiB)
    proc = push(setup, name, data)
    assert 0 < proc.returncode <= 125
    assert "no space left" in proc.stderr
    assert not stored(setup, name).exists()
    assert [p.name for p in stored(setup, name).parent.iterdir()] == [ok_name]  # no temp file left


def test_env_overrides_config(setup: Setup) -> None:
    other = setup.work / "other-repo"
    other.mkdir()
    give_to_pg(other)
    name, data = make_segment(1, 3, sysid=SYSID)
    assert push(setup, name, data, env={"WALKEEPER_REPO": str(other)}).returncode == 0
    assert (other / "wal" / "00000001" / name).exists() and not setup.repo.exists()
    assert os.path.exists(other / "walkeeper.json")


@pytest.mark.parametrize("self_check", ["true", "false"])
def test_self_check_setting_keeps_the_contract(setup: Setup, self_check: str) -> None:
    """[archive] self_check only decides whether the object is decoded before it is stored."""
    name, seg = make_segment(1, 5, sysid=SYSID)
    env = {"WALKEEPER_ARCHIVE_SELF_CHECK": self_check}
    assert push(setup, name, seg, env=env).returncode == 0
    assert push(setup, name, seg, env=env).returncode == 0  # identical re-push
    other = bytearray(seg)
    other[9000] ^= 1
    proc = push(setup, name, bytes(other), env=env)
    assert proc.returncode == 6 and "different content" in proc.stderr
    proc, dest = fetch(setup, name)
    assert proc.returncode == 0 and dest.read_bytes() == seg
    bad = push(setup, name, seg, env={"WALKEEPER_ARCHIVE_SELF_CHECK": "maybe"})
    assert bad.returncode == 3 and "SELF_CHECK" in bad.stderr


def test_push_without_looking_first_never_overwrites(backend_setup: Setup) -> None:
    """The pusher stores without a prior HEAD/stat: the no-clobber store still decides, on every backend."""
    from walkeeper.core.config import load_config
    from walkeeper.core.errors import ConflictError
    from walkeeper.core.wal import parse_wal_name
    from walkeeper.repo.repository import open_repository

    repo = open_repository(load_config(str(backend_setup.config)))
    name, seg = make_segment(1, 7, sysid=SYSID)
    repo.ensure_identity(SYSID, len(seg), None)
    first = repo.push_wal(parse_wal_name(name), seg, look_first=False)
    again = repo.push_wal(parse_wal_name(name), seg, look_first=False)
    assert first.stored and not again.stored and again.sha256 == first.sha256
    other = bytearray(seg)
    other[9000] ^= 1
    with pytest.raises(ConflictError, match="different content"):
        repo.push_wal(parse_wal_name(name), bytes(other), look_first=False)
    assert repo.fetch_wal(parse_wal_name(name)) == seg

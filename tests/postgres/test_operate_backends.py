"""Operating the archive on every storage backend: verify, status, wal-list and expire on local, S3 and ssh.

tests/postgres/test_operate.py proves the rules on the local backend; this file proves that the same commands
see the same archive through the S3 and ssh backends (listing, reading back, deleting). Segments are
synthetic (tests/helpers/walfactory.py) and pushed through the installed CLI as PostgreSQL would; the damage
(a deleted or a corrupted object) is done through the repository's own storage API, so it works the
same on every backend. Backups are published through the real catalog with chosen WAL positions
(as tests/postgres/test_operate.py does), which is what expire and verify read.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from tests.conftest import Setup
from tests.contract.test_wal_contract import SYSID, push
from tests.helpers.pgharness import give_to_pg
from tests.helpers.walfactory import MiB, make_segment

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# -- helpers ------------------------------------------------------------------------------------------

@contextmanager
def repository(setup: Setup) -> Iterator[object]:
    """The repository as walkeeper opens it, from the test process (root), for inspection and damage."""
    from walkeeper.core.config import load_config
    from walkeeper.repo.repository import open_repository

    repo = open_repository(load_config(str(setup.config), env={}))
    try:
        yield repo
    finally:
        repo.storage.close()
        if setup.backend == "local" and setup.repo.exists():
            give_to_pg(setup.repo)  # objects written as root must stay readable by postgres


def seg(tli: int, segno: int) -> str:
    return f"{tli:08X}{0:08X}{segno:08X}"


def key_of(name: str) -> str:
    from walkeeper.core.wal import parse_wal_name
    from walkeeper.repo.layout import wal_key

    return wal_key(parse_wal_name(name))


def lsn(segno: int) -> str:
    return f"0/{segno * MiB:X}"


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")


def push_segments(setup: Setup, timeline: int, segnos: range | list[int]) -> None:
    for segno in segnos:
        name, data = make_segment(timeline, segno, sysid=SYSID)
        proc = push(setup, name, data)
        assert proc.returncode == 0, proc.stderr


def listing(setup: Setup) -> dict[str, int]:
    """Every stored object (key -> size), read through the backend."""
    with repository(setup) as repo:
        return {info.key: info.size for info in repo.storage.list("")}  # type: ignore[attr-defined]


def delete_object(setup: Setup, key: str) -> None:
    with repository(setup) as repo:
        repo.storage.delete([key])  # type: ignore[attr-defined]


def corrupt_object(setup: Setup, key: str) -> None:
    """Flip one bit in the middle of a stored object, in place (same key, same size)."""
    with repository(setup) as repo:
        blob = bytearray(repo.storage.get(key))  # type: ignore[attr-defined]
        blob[len(blob) // 2] ^= 0x01
        repo.storage.put(key, bytes(blob), overwrite=True)  # type: ignore[attr-defined]
        assert repo.storage.get(key) == bytes(blob)  # type: ignore[attr-defined]


def add_backup(setup: Setup, backup_id: str, start: int, stop: int, *, ended: float,
               data: bytes = b"base tar bytes") -> list[str]:
    """Publish a timeline-1 backup through the real catalog: one data object, then its metadata. Its keys."""
    from walkeeper.codec import encode_bytes
    from walkeeper.repo.catalog import BackupMeta, BackupObject, Catalog
    from walkeeper.repo.layout import backup_key

    with repository(setup) as repo:
        key = backup_key(backup_id, "base.tar")
        blob, sha = encode_bytes(repo.codec, key, data)  # type: ignore[attr-defined]
        repo.storage.put(key, blob)  # type: ignore[attr-defined]
        Catalog(repo).save_backup(BackupMeta(  # type: ignore[arg-type]
            id=backup_id, label=f"test {backup_id}", start_lsn=lsn(start), stop_lsn=f"0/{stop * MiB + 0x100:X}",
            start_wal=seg(1, start), stop_wal=seg(1, stop), timeline=1, stop_timeline=1,
            start_time=iso(ended - 60), stop_time=iso(ended), pg_version=150000, system_identifier=str(SYSID),
            wal_segment_size=MiB, wal_mode="archive", plain_size=len(data), stored_size=len(blob),
            objects=[BackupObject(key, "base.tar", None, None, len(data), len(blob), sha)]))
    return [key, backup_key(backup_id, "backup.json")]


def add_restore_point(setup: Setup, name: str, segno: int) -> str:
    """A restore point recorded as `walkeeper restore-point` records it, at the start of segment ``segno``."""
    from walkeeper.repo.catalog import Catalog, RestorePoint

    with repository(setup) as repo:
        point = RestorePoint(name=name, lsn=lsn(segno), time=iso(time.time()), timeline=1,
                             system_identifier=str(SYSID), wal_file=seg(1, segno))
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return Catalog(repo).save_restore_point(point, stamp, segno * MiB)  # type: ignore[arg-type]


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def run_json(setup: Setup, *args: str) -> tuple[int, dict]:
    proc = setup.wk(*args, "--json")
    assert proc.stdout, (proc.returncode, proc.stderr)
    return proc.returncode, json.loads(proc.stdout)


def status_json(setup: Setup) -> dict:
    code, doc = run_json(setup, "status", "--no-cluster")
    assert code == 0, doc
    return doc


def only_timeline(doc: dict) -> dict:
    [tl] = doc["timelines"]
    assert tl["timeline"] == 1
    return tl


def check_line(setup: Setup, *args: str) -> tuple[int, str, dict[str, float]]:
    """`walkeeper check` (monitoring plugin) with a Prometheus textfile: exit code, its line, the metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    target = setup.work / "walkeeper.prom"
    proc = setup.wk("check", "--prometheus", target, *args)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    metrics = {s.name: s.value for f in text_string_to_metric_families(target.read_text()) for s in f.samples
               if not s.labels.get("event")}
    return proc.returncode, lines[0], metrics


# -- 1. a whole run ---------------------------------------------------------------------------------

def test_whole_run_verifies_and_is_reported(backend_setup: Setup) -> None:
    setup = backend_setup
    push_segments(setup, 1, range(3, 9))
    first, last = seg(1, 3), seg(1, 8)

    proc = ok(setup.wk("verify"))
    assert proc.stdout.strip().endswith("verify: OK, the archive is whole"), proc.stdout
    assert f"timeline 1: {first} .. {last}, 6 segments" in proc.stdout
    code, doc = run_json(setup, "verify", "--deep")
    assert code == 0 and doc["ok"] and doc["problems"] == [], doc
    assert doc["objects_read"] == 6 and doc["system_identifier"] == str(SYSID)
    tl = only_timeline(doc)
    assert (tl["first"], tl["last"], tl["segments"]) == (first, last, 6)

    doc = status_json(setup)
    tl = only_timeline(doc)
    assert (tl["first"], tl["last"], tl["segments"], tl["gaps"]) == (first, last, 6, [])
    assert doc["gaps"] == 0 and doc["backups"] == [] and doc["system_identifier"] == str(SYSID)
    assert doc["newest_segment"]["name"] == last
    assert 0 <= doc["newest_segment"]["age_seconds"] < 300
    stored = listing(setup)
    assert doc["total_bytes"] == sum(stored.values()) and doc["wal_bytes"] == tl["stored_bytes"]
    assert set(stored) >= {key_of(seg(1, s)) for s in range(3, 9)}
    text = ok(setup.wk("status", "--no-cluster")).stdout
    assert f"timeline 1: {first} .. {last}, 6 segments" in text and "GAP" not in text
    assert f"newest segment: {last}" in text and "no backups" in text

    code, doc = run_json(setup, "wal-list")
    assert code == 0
    tl = only_timeline(doc)
    assert (tl["first"], tl["last"], tl["segments"], tl["gaps"]) == (first, last, 6, [])
    text = ok(setup.wk("wal-list")).stdout
    assert f"timeline 1: {first} .. {last}, 6 segments" in text and "GAP" not in text

    code, line, metrics = check_line(setup, "--max-wal-age", "1h")
    assert code == 0 and line.startswith("WALKEEPER OK - last WAL "), line
    assert f"({last})" in line and f"repository_bytes={sum(stored.values())}B" in line, line
    assert metrics["walkeeper_up"] == 1 and metrics["walkeeper_wal_gaps"] == 0
    assert metrics["walkeeper_repository_bytes"] == sum(stored.values())


# -- 2. a deleted segment ---------------------------------------------------------------------------

def test_deleted_segment_is_a_gap_everywhere(backend_setup: Setup) -> None:
    setup = backend_setup
    push_segments(setup, 1, range(1, 7))
    missing = seg(1, 4)
    delete_object(setup, key_of(missing))
    assert key_of(missing) not in listing(setup)

    proc = setup.wk("verify")
    assert proc.returncode == 5, (proc.returncode, proc.stdout, proc.stderr)
    assert f"timeline 1: 1 segment missing: {missing};" in proc.stdout
    assert "what to do: put the missing segment back" in proc.stdout
    assert proc.stdout.strip().endswith("verify: FAILED, 1 problem"), proc.stdout
    code, doc = run_json(setup, "verify")
    assert code == 5 and not doc["ok"]
    [gap] = doc["problems"]
    assert gap["kind"] == "gap" and gap["severity"] == "error" and gap["timeline"] == 1
    details = gap["details"]
    assert (details["first_missing"], details["last_missing"], details["count"]) == (missing, missing, 1)
    assert (details["broken_from_lsn"], details["broken_to_lsn"]) == ("0/400000", "0/500000")
    assert (details["last_good_segment"], details["next_good_segment"]) == (seg(1, 3), seg(1, 5))

    for command in ("wal-list", "status"):
        args = ["--no-cluster"] if command == "status" else []
        proc = ok(setup.wk(command, *args))
        assert f"timeline 1: {seg(1, 1)} .. {seg(1, 6)}, 5 segments" in proc.stdout, proc.stdout
        assert f"GAP: {missing} .. {missing} missing" in proc.stdout, proc.stdout
        code, doc = run_json(setup, command, *args)
        assert code == 0
        tl = only_timeline(doc)
        assert (tl["first"], tl["last"], tl["segments"]) == (seg(1, 1), seg(1, 6), 5)
        assert tl["gaps"] == [{"from": missing, "to": missing}]
    assert status_json(setup)["gaps"] == 1
    code, line, metrics = check_line(setup, "--max-wal-age", "1h")
    assert code == 1 and line.startswith("WALKEEPER WARNING - 1 gap in the WAL archive"), line
    assert metrics["walkeeper_wal_gaps"] == 1 and metrics["walkeeper_check_status"] == 1

    # Pushing the segment again closes the gap: the same commands agree that the archive is whole.
    push_segments(setup, 1, [4])
    ok(setup.wk("verify"))
    assert only_timeline(status_json(setup))["gaps"] == []


# -- 3. a corrupted object --------------------------------------------------------------------------

def test_corrupted_segment_is_caught_by_deep_verify_only(backend_setup: Setup) -> None:
    setup = backend_setup
    push_segments(setup, 1, range(1, 6))
    bad = key_of(seg(1, 3))
    size_before = listing(setup)[bad]
    corrupt_object(setup, bad)
    assert listing(setup)[bad] == size_before

    # README: plain verify checks the listing; only --deep reads objects back.
    proc = ok(setup.wk("verify"))
    assert "verify: OK, the archive is whole" in proc.stdout
    assert only_timeline(status_json(setup))["segments"] == 5

    proc = setup.wk("verify", "--deep")
    assert proc.returncode == 5, (proc.returncode, proc.stdout, proc.stderr)
    assert f"ERROR: {bad}: " in proc.stdout and "objects read back: 5" in proc.stdout
    assert "what to do: restore this object from another copy" in proc.stdout
    assert proc.stdout.strip().endswith("verify: FAILED, 1 problem"), proc.stdout
    code, doc = run_json(setup, "verify", "--deep")
    assert code == 5 and not doc["ok"] and doc["objects_read"] == 5
    [problem] = doc["problems"]
    assert problem["kind"] == "corrupt" and problem["objects"] == [bad]
    assert "failed authentication" in problem["message"]
    # wal-fetch refuses it too, as fatal for recovery (205 = 200 + integrity).
    from tests.contract.test_wal_contract import fetch

    proc, dest = fetch(setup, seg(1, 3))
    assert proc.returncode == 205 and not dest.exists(), (proc.returncode, proc.stderr)


def test_swapped_segment_and_corrupted_backup_data_are_caught(backend_setup: Setup) -> None:
    setup = backend_setup
    push_segments(setup, 1, range(1, 5))
    data_key, _meta_key = add_backup(setup, "20260101T000000Z", 2, 2, ended=time.time() - 3600)
    ok(setup.wk("verify", "--deep"))
    # Segment 4's (intact, authentic) object stored under segment 3's name.
    with repository(setup) as repo:
        other = repo.storage.get(key_of(seg(1, 4)))  # type: ignore[attr-defined]
        repo.storage.put(key_of(seg(1, 3)), other, overwrite=True)  # type: ignore[attr-defined]
    corrupt_object(setup, data_key)
    ok(setup.wk("verify"))
    code, doc = run_json(setup, "verify", "--deep")
    assert code == 5 and doc["objects_read"] == 5, doc
    problems = {p["objects"][0]: p for p in doc["problems"]}
    assert set(problems) == {key_of(seg(1, 3)), data_key}, doc["problems"]
    assert all(p["kind"] == "corrupt" for p in problems.values())
    assert "swapped" in problems[key_of(seg(1, 3))]["message"]


def test_interrupted_backup_is_listed_as_incomplete_and_only_warned_about(backend_setup: Setup) -> None:
    setup = backend_setup
    push_segments(setup, 1, range(1, 4))
    now = time.time()
    data_key, meta_key = add_backup(setup, "20260101T000000Z", 1, 1, ended=now - 7200)
    add_backup(setup, "20260102T000000Z", 2, 2, ended=now - 60)
    delete_object(setup, meta_key)  # what an interrupted backup (or expire) leaves: data, no metadata
    assert data_key in listing(setup)
    doc = status_json(setup)
    assert [b["id"] for b in doc["backups"]] == ["20260102T000000Z"]
    assert doc["incomplete_backups"] == ["20260101T000000Z"]
    assert "incomplete backup 20260101T000000Z (not usable)" in ok(setup.wk("status", "--no-cluster")).stdout
    proc = ok(setup.wk("verify"))  # README: a warning, not a failure
    assert "WARNING: backup 20260101T000000Z has data but no metadata" in proc.stdout, proc.stdout
    code, doc = run_json(setup, "verify")
    assert code == 0 and doc["ok"] and doc["backups"] == ["20260102T000000Z"]
    [warning] = doc["problems"]
    assert warning["kind"] == "incomplete-backup" and warning["severity"] == "warning"


# -- 4. expire --------------------------------------------------------------------------------------

def removal_keys(stdout: str, verb: str) -> list[str]:
    return [line.split()[len(verb.split())] for line in stdout.splitlines()
            if line.startswith(verb + " ") and line.endswith(" bytes)") and " object, " not in line
            and " objects, " not in line]


def test_expire_removes_exactly_what_readme_says(backend_setup: Setup) -> None:
    setup = backend_setup
    push_segments(setup, 1, range(1, 8))
    label = f"{seg(1, 2)}.00000028.backup"
    assert push(setup, label, b"START WAL LOCATION: 0/200028\n").returncode == 0

    # With no backup at all nothing goes.
    before = listing(setup)
    proc = ok(setup.wk("expire", "--keep", "1"))
    assert "nothing expires" in proc.stdout
    assert listing(setup) == before

    now = time.time()
    old = add_backup(setup, "20260101T000000Z", 2, 2, ended=now - 3 * 86400)
    add_backup(setup, "20260102T000000Z", 4, 4, ended=now - 2 * 86400)
    add_backup(setup, "20260103T000000Z", 6, 6, ended=now - 86400)
    old_point = add_restore_point(setup, "before-cutoff", 3)
    new_point = add_restore_point(setup, "after-cutoff", 5)
    before = listing(setup)
    # --keep 2 keeps the two newest backups; everything before the older one's start (segment 4) goes.
    expected = {*old, old_point, key_of(label), *(key_of(seg(1, s)) for s in range(1, 4))}
    assert expected <= set(before)

    proc = ok(setup.wk("expire", "--keep", "2", "--dry-run"))
    assert listing(setup) == before  # a dry run changes nothing
    planned = removal_keys(proc.stdout, "would remove")
    assert set(planned) == expected and len(planned) == len(expected), proc.stdout
    assert planned[0] == "backups/20260101T000000Z/backup.json"  # metadata first
    for key in expected:  # one line per object, with its stored size
        assert f"would remove {key} ({before[key]} bytes)" in proc.stdout.splitlines(), key
    assert [k for k in planned if k.startswith("wal/")] == [  # WAL oldest first
        key_of(seg(1, 1)), key_of(seg(1, 2)), key_of(label), key_of(seg(1, 3))]
    freed = sum(before[k] for k in expected)
    summary = f"would remove {len(expected)} object{'' if len(expected) == 1 else 's'}, "
    assert summary in proc.stdout and f"({freed} bytes)" in proc.stdout
    code, doc = run_json(setup, "expire", "--keep", "2", "--dry-run")
    assert code == 0 and doc["dry_run"] and set(doc["objects"]) == expected and doc["bytes_freed"] == freed
    assert doc["expired_backups"] == ["20260101T000000Z"] and doc["first_wal_kept"] == seg(1, 4)
    assert listing(setup) == before

    proc = ok(setup.wk("expire", "--keep", "2"))
    assert set(removal_keys(proc.stdout, "removed")) == expected
    after = listing(setup)
    assert set(before) - set(after) == expected  # what README says goes, gone
    assert after == {k: v for k, v in before.items() if k not in expected}  # and nothing else touched
    assert new_point in after

    ok(setup.wk("verify", "--deep"))
    doc = status_json(setup)
    assert [b["id"] for b in doc["backups"]] == ["20260102T000000Z", "20260103T000000Z"]
    assert doc["restore_points"] == 1 and doc["oldest_recovery_point"]["backup"] == "20260102T000000Z"
    tl = only_timeline(doc)
    assert (tl["first"], tl["last"], tl["segments"], tl["gaps"]) == (seg(1, 4), seg(1, 7), 4, [])
    # Idempotent, and the newest backup and the WAL after it never go (keep-days window of an hour).
    code, doc = run_json(setup, "expire", "--keep", "2")
    assert code == 0 and doc["objects"] == []
    code, doc = run_json(setup, "expire", "--keep-days", "0.04")
    assert code == 0 and doc["kept_backups"] == ["20260103T000000Z"]
    assert doc["first_wal_kept"] == seg(1, 6)
    left = listing(setup)
    assert {k for k in left if k.startswith("wal/")} == {key_of(seg(1, s)) for s in (6, 7)}
    assert not any(k.startswith("restore-points/") for k in left)  # the point at segment 5 was before 6
    assert setup.wk("expire", "--keep", "0").returncode == 3  # a rule that drops everything is refused
    assert listing(setup) == left

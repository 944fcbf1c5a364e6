"""Operating the archive: verify, expire, status, check, the Prometheus textfile.

Synthetic segments with real page headers go through the installed CLI (as PostgreSQL would push
them); backups are published through the real catalog (walkeeper.repo.catalog) with chosen WAL
positions and times, so retention can be tested precisely and quickly. tests/postgres/test_operate_pg.py
does the same against a real server with real base backups.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

import pytest

from tests.conftest import Setup
from tests.contract.test_wal_contract import SYSID, push, stored
from tests.helpers.pgharness import give_to_pg
from tests.helpers.walfactory import MiB, make_segment

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def push_segments(setup: Setup, timeline: int, segnos: range | list[int], **kw: object) -> None:
    for segno in segnos:
        name, data = make_segment(timeline, segno, sysid=SYSID, **kw)  # type: ignore[arg-type]
        proc = push(setup, name, data)
        assert proc.returncode == 0, proc.stderr


def push_history(setup: Setup, timeline: int, text: str) -> None:
    proc = push(setup, f"{timeline:08X}.history", text.encode())
    assert proc.returncode == 0, proc.stderr


def lsn(segno: int) -> str:
    return f"0/{segno * MiB:X}"


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")


def add_backup(setup: Setup, backup_id: str, timeline: int, start: int, stop: int, *, ended: float,
               data: bytes = b"base tar bytes") -> None:
    """Publish a backup through the real catalog: one data object, then its metadata (last)."""
    from walkeeper.codec import encode_bytes
    from walkeeper.core.config import load_config
    from walkeeper.repo.catalog import BackupMeta, BackupObject, Catalog
    from walkeeper.repo.layout import backup_key
    from walkeeper.repo.repository import open_repository

    repo = open_repository(load_config(str(setup.config), env={}))
    key = backup_key(backup_id, "base.tar")
    blob, sha = encode_bytes(repo.codec, key, data)
    repo.storage.put(key, blob)
    start_wal = f"{timeline:08X}{0:08X}{start:08X}"
    stop_wal = f"{timeline:08X}{0:08X}{stop:08X}"
    Catalog(repo).save_backup(BackupMeta(
        id=backup_id, label=f"test {backup_id}", start_lsn=lsn(start), stop_lsn=f"0/{stop * MiB + 0x100:X}",
        start_wal=start_wal, stop_wal=stop_wal, timeline=timeline, stop_timeline=timeline,
        start_time=iso(ended - 60), stop_time=iso(ended), pg_version=150000, system_identifier=str(SYSID),
        wal_segment_size=MiB, wal_mode="archive", plain_size=len(data), stored_size=len(blob),
        objects=[BackupObject(key, "base.tar", None, None, len(data), len(blob), sha)]))
    give_to_pg(setup.repo)


def wal_names(setup: Setup) -> set[str]:
    return {p.name for p in (setup.repo / "wal").rglob("*") if p.is_file()}


def all_keys(setup: Setup) -> set[str]:
    return {str(p.relative_to(setup.repo)) for p in setup.repo.rglob("*") if p.is_file()}


def seg(tli: int, segno: int) -> str:
    return f"{tli:08X}{0:08X}{segno:08X}"


def verify_json(setup: Setup, *args: str) -> tuple[int, dict]:
    proc = setup.wk("verify", "--json", *args)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


# -- verify -------------------------------------------------------------------------------------------

def test_verify_whole_archive_then_gap_made_by_deleting(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 8))
    code, doc = verify_json(setup, "--deep")
    assert code == 0 and doc["ok"] and doc["problems"] == [], doc
    assert doc["objects_read"] == 7
    stored(setup, seg(1, 3)).unlink()
    stored(setup, seg(1, 4)).unlink()
    code, doc = verify_json(setup)
    assert code == 5 and not doc["ok"]
    [gap] = doc["problems"]
    assert gap["kind"] == "gap" and gap["timeline"] == 1
    assert gap["details"]["first_missing"] == seg(1, 3) and gap["details"]["last_missing"] == seg(1, 4)
    assert gap["details"]["broken_from_lsn"] == "0/300000" and gap["details"]["broken_to_lsn"] == "0/500000"
    assert gap["details"]["last_good_segment"] == seg(1, 2)
    assert "take a new base backup" in gap["action"]
    text = setup.wk("verify")
    assert text.returncode == 5
    assert f"{seg(1, 3)} .. {seg(1, 4)}" in text.stdout and "what to do" in text.stdout
    assert "verify: FAILED" in text.stdout


def test_verify_gap_reports_backups_it_breaks(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 10))
    add_backup(setup, "20260101T000000Z", 1, 2, 3, ended=time.time() - 7200)
    add_backup(setup, "20260102T000000Z", 1, 7, 7, ended=time.time() - 3600)
    stored(setup, seg(1, 5)).unlink()
    code, doc = verify_json(setup)
    assert code == 5
    [gap] = [p for p in doc["problems"] if p["kind"] == "gap"]
    assert gap["details"]["backups_affected"] == ["20260101T000000Z"]
    assert gap["details"]["backups_after_gap"] == ["20260102T000000Z"]
    # A segment inside a backup's own start..stop range makes the backup unusable.
    stored(setup, seg(1, 7)).unlink()
    code, doc = verify_json(setup)
    [bad] = [p for p in doc["problems"] if p["kind"] == "backup-wal-incomplete"]
    assert bad["details"]["backup"] == "20260102T000000Z" and bad["objects"] == [seg(1, 7)]
    # WAL before the oldest backup is not needed: deleting it is not a gap.
    for segno in (5, 7):
        push_segments(setup, 1, [segno])
    stored(setup, seg(1, 1)).unlink()
    code, doc = verify_json(setup)
    assert code == 0, doc


def test_verify_deep_catches_a_corrupted_object(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 5))
    push_history(setup, 2, f"1\t{lsn(4)}\tno recovery target specified\n")
    path = stored(setup, seg(1, 2))
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    code, _doc = verify_json(setup)
    assert code == 0  # the listing alone cannot see it
    code, doc = verify_json(setup, "--deep")
    assert code == 5
    [bad] = doc["problems"]
    assert bad["kind"] == "corrupt" and bad["objects"] == [f"wal/00000001/{seg(1, 2)}"]
    assert "failed authentication" in bad["message"]
    assert doc["objects_read"] == 5


def test_verify_deep_catches_a_swapped_object_and_bad_history(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 5))
    push_history(setup, 2, f"1\t{lsn(3)}\tx\n")
    stored(setup, seg(1, 3)).write_bytes(stored(setup, seg(1, 4)).read_bytes())
    code, doc = verify_json(setup, "--deep")
    assert code == 5
    [bad] = doc["problems"]
    assert bad["objects"] == [f"wal/00000001/{seg(1, 3)}"] and "swapped" in bad["message"]


def test_verify_follows_timeline_history(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 6))  # the old primary archived 1..5
    push_history(setup, 2, f"1\t{lsn(4)}\tno recovery target specified\n")  # promoted inside segment 4
    push_segments(setup, 2, range(4, 8))
    code, doc = verify_json(setup)
    assert code == 0, doc
    tl2 = next(t for t in doc["timelines"] if t["timeline"] == 2)
    assert tl2["parents"] == [1] and tl2["known"]
    # Segment 3 of timeline 1 is needed by recovery along timeline 2 too.
    stored(setup, seg(1, 3)).unlink()
    code, doc = verify_json(setup)
    [gap] = doc["problems"]
    assert gap["timeline"] == 1 and gap["details"]["timelines_affected"] == [1, 2]
    push_segments(setup, 1, [3])
    # Timeline 2's own first segment (copied from the parent at the switch) missing is a gap on 2.
    stored(setup, seg(2, 4)).unlink()
    code, doc = verify_json(setup)
    [gap] = doc["problems"]
    assert gap["timeline"] == 2 and gap["details"]["first_missing"] == seg(2, 4)
    push_segments(setup, 2, [4])
    # Segments of a timeline nobody announced.
    push_segments(setup, 3, [8, 9])
    code, doc = verify_json(setup)
    assert code == 5
    [unknown] = doc["problems"]
    assert unknown["kind"] == "unknown-timeline" and unknown["timeline"] == 3
    assert "00000003.history" in unknown["action"]


# -- expire -------------------------------------------------------------------------------------------

def dry_run_keys(stdout: str) -> list[str]:
    return [line.split()[2] for line in stdout.splitlines() if line.startswith("would remove ")
            and line.split()[2].count("/")]


def test_expire_keep_dry_run_lists_exactly_what_goes(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 12))
    now = time.time()
    add_backup(setup, "20260101T000000Z", 1, 2, 3, ended=now - 3 * 86400)
    add_backup(setup, "20260102T000000Z", 1, 5, 6, ended=now - 2 * 86400)
    add_backup(setup, "20260103T000000Z", 1, 8, 9, ended=now - 86400)
    before = all_keys(setup)
    proc = setup.wk("expire", "--keep", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    planned = dry_run_keys(proc.stdout)
    assert all_keys(setup) == before  # a dry run removes nothing
    assert planned[0] == "backups/20260101T000000Z/backup.json"  # metadata first
    expected = {"backups/20260101T000000Z/backup.json", "backups/20260101T000000Z/base.tar",
                *(f"wal/00000001/{seg(1, s)}" for s in range(1, 5))}
    assert set(planned) == expected
    freed = sum((setup.repo / k).stat().st_size for k in planned)
    assert f"({freed} bytes)" in proc.stdout
    proc = setup.wk("expire", "--keep", "2")
    assert proc.returncode == 0, proc.stderr
    assert before - all_keys(setup) == expected
    assert setup.wk("verify").returncode == 0
    listed = json.loads(setup.wk("status", "--json", "--no-cluster").stdout)
    assert [b["id"] for b in listed["backups"]] == ["20260102T000000Z", "20260103T000000Z"]
    # Idempotent: nothing more to do.
    proc = setup.wk("expire", "--keep", "2", "--dry-run")
    assert dry_run_keys(proc.stdout) == []


def test_expire_across_a_timeline_switch_keeps_needed_history(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 6))
    name, data = make_segment(1, 6, sysid=SYSID)
    assert push(setup, name + ".partial", data[: MiB // 2]).returncode == 0
    push_history(setup, 2, f"1\t{lsn(6)}\tno recovery target specified\n")
    push_segments(setup, 2, range(6, 12))
    push_history(setup, 3, f"1\t{lsn(6)}\tx\n2\t{lsn(11)}\ty\n")  # promoted again inside segment 11
    push_segments(setup, 3, [11])
    now = time.time()
    add_backup(setup, "20260101T000000Z", 1, 2, 2, ended=now - 86400)
    add_backup(setup, "20260102T000000Z", 2, 8, 8, ended=now - 3600)
    proc = setup.wk("expire", "--keep", "1")
    assert proc.returncode == 0, proc.stderr
    left = wal_names(setup)
    assert not any(n.startswith("00000001") and not n.endswith("history") for n in left), left
    assert seg(1, 6) + ".partial" not in left
    assert {"00000002.history", "00000003.history"} <= left  # timeline 2's WAL needs its history
    assert {seg(2, s) for s in range(8, 12)} <= left and seg(2, 7) not in left and seg(3, 11) in left
    code, doc = verify_json(setup, "--deep")
    assert code == 0, doc
    # Recovery from the kept backup can still fetch the history and every segment.
    from tests.contract.test_wal_contract import fetch
    for name in ["00000002.history", seg(2, 8)]:
        proc, _dest = fetch(setup, name)
        assert proc.returncode == 0, proc.stderr


def test_expire_history_of_an_abandoned_timeline_goes(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 9))
    push_history(setup, 2, f"1\t{lsn(4)}\tabandoned\n")  # a promotion whose timeline went nowhere
    push_segments(setup, 2, [4])
    push_history(setup, 3, f"1\t{lsn(5)}\treal\n")
    push_segments(setup, 3, range(5, 9))
    now = time.time()
    add_backup(setup, "20260101T000000Z", 1, 1, 1, ended=now - 7200)
    add_backup(setup, "20260102T000000Z", 3, 6, 6, ended=now - 60)
    assert setup.wk("expire", "--keep", "1").returncode == 0
    left = wal_names(setup)
    assert "00000002.history" not in left and "00000003.history" in left
    assert setup.wk("verify").returncode == 0


def test_expire_never_removes_the_only_backup_or_newer_wal(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 6))
    proc = setup.wk("expire", "--keep-days", "1")
    assert proc.returncode == 0 and "nothing expires" in proc.stdout
    assert len(wal_names(setup)) == 5
    add_backup(setup, "20250101T000000Z", 1, 3, 3, ended=time.time() - 400 * 86400)
    push_segments(setup, 1, range(6, 8))
    proc = setup.wk("expire", "--keep-days", "1")
    assert proc.returncode == 0, proc.stderr
    assert "20250101T000000Z" in json.loads(setup.wk("status", "--json", "--no-cluster").stdout)["backups"][0]["id"]
    assert wal_names(setup) == {seg(1, s) for s in range(3, 8)}
    assert setup.wk("expire", "--keep", "0").returncode == 3  # a rule that would drop everything is refused
    assert setup.wk("expire").returncode == 3  # no rule at all


def test_expire_keep_days_window_and_config(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 12))
    now = time.time()
    add_backup(setup, "20260101T000000Z", 1, 1, 1, ended=now - 10 * 86400)
    add_backup(setup, "20260105T000000Z", 1, 4, 4, ended=now - 6 * 86400)
    add_backup(setup, "20260108T000000Z", 1, 7, 7, ended=now - 3 * 86400)
    add_backup(setup, "20260110T000000Z", 1, 10, 10, ended=now - 3600)
    setup.write_config(setup.config.read_text() + "[retention]\nkeep_days = 5\n")
    proc = setup.wk("expire", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    # The backup that ended 6 days ago is the base for the window's first moment: it stays.
    assert doc["kept_backups"] == ["20260105T000000Z", "20260108T000000Z", "20260110T000000Z"]
    assert doc["expired_backups"] == ["20260101T000000Z"] and doc["first_wal_kept"] == seg(1, 4)
    # Both rules: a backup kept by either stays.
    proc = setup.wk("expire", "--keep", "3", "--keep-days", "1", "--json", "--dry-run")
    assert json.loads(proc.stdout)["expired_backups"] == []
    proc = setup.wk("expire", "--keep", "1", "--keep-days", "2", "--json")  # base of the window: 3 days old
    assert json.loads(proc.stdout)["expired_backups"] == ["20260105T000000Z"]


def test_expire_interrupted_backup_is_never_listed(setup: Setup) -> None:
    """An expire stopped after a backup's metadata went leaves data that is not listed, and finishes later."""
    push_segments(setup, 1, range(1, 6))
    now = time.time()
    add_backup(setup, "20260101T000000Z", 1, 1, 1, ended=now - 7200)
    add_backup(setup, "20260102T000000Z", 1, 4, 4, ended=now - 60)
    (setup.repo / "backups/20260101T000000Z/backup.json").unlink()  # what the first delete does
    old = now - 2 * 3600
    os.utime(setup.repo / "backups/20260101T000000Z/base.tar", (old, old))
    doc = json.loads(setup.wk("status", "--json", "--no-cluster").stdout)
    assert [b["id"] for b in doc["backups"]] == ["20260102T000000Z"]
    assert doc["incomplete_backups"] == ["20260101T000000Z"]
    proc = setup.wk("expire", "--keep", "1")
    assert proc.returncode == 0, proc.stderr
    assert not (setup.repo / "backups/20260101T000000Z").exists() or \
        not any((setup.repo / "backups/20260101T000000Z").iterdir())
    assert wal_names(setup) == {seg(1, s) for s in range(4, 6)}


# -- status, check, prometheus -------------------------------------------------------------------------

def age_everything(setup: Setup, seconds: float) -> None:
    then = time.time() - seconds
    for path in setup.repo.rglob("*"):
        os.utime(path, (then, then))


def check(setup: Setup, *args: str) -> tuple[int, str]:
    proc = setup.wk("check", *args)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    return proc.returncode, lines[0]


def test_check_thresholds_on_both_sides(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 4))
    add_backup(setup, "20260101T000000Z", 1, 1, 1, ended=time.time() - 5 * 3600)
    code, line = check(setup, "--max-wal-age", "1h", "--max-backup-age", "1d")
    assert code == 0 and line.startswith("WALKEEPER OK - "), line
    assert "| wal_age=" in line and ";;3600" in line
    age_everything(setup, 2 * 3600)  # the newest WAL arrived two hours ago
    code, line = check(setup, "--max-wal-age", "1h", "--max-backup-age", "1d")
    assert code == 2 and line.startswith("WALKEEPER CRITICAL - last WAL archived 2.0h ago"), line
    code, line = check(setup, "--max-wal-age", "3h", "--max-backup-age", "1d")
    assert code == 0, line
    code, line = check(setup, "--warn-wal-age", "90m", "--max-wal-age", "3h")
    assert code == 1 and line.startswith("WALKEEPER WARNING"), line
    code, line = check(setup, "--max-wal-age", "3h", "--max-backup-age", "4h")
    assert code == 2 and "last backup 5.0h ago" in line, line
    code, line = check(setup, "--max-wal-age", "3h", "--max-backup-age", "6h")
    assert code == 0, line
    stored(setup, seg(1, 2)).unlink()
    code, line = check(setup, "--max-wal-age", "3h")
    assert code == 1 and "gap" in line, line


def test_check_unknown_and_no_backup(setup: Setup) -> None:
    code, line = check(setup, "--max-wal-age", "1h")
    assert code == 3 and line.startswith("WALKEEPER UNKNOWN - cannot read the repository"), line
    push_segments(setup, 1, [1])
    code, line = check(setup, "--max-wal-age", "1h", "--max-backup-age", "1d")
    assert code == 2 and "no backup at all" in line, line
    code, line = check(setup, "--max-wal-age", "soon")
    assert code == 3 and "not a duration" in line, line


def test_prometheus_textfile_parses(setup: Setup) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    push_segments(setup, 1, range(1, 4))
    add_backup(setup, "20260101T000000Z", 1, 1, 1, ended=time.time() - 3600)
    target = setup.work / "textfile" / "walkeeper.prom"
    target.parent.mkdir()
    give_to_pg(target.parent)
    code, _line = check(setup, "--max-wal-age", "1h", "--prometheus", str(target))
    assert code == 0
    assert [p.name for p in target.parent.iterdir()] == ["walkeeper.prom"]  # no temp file left behind
    families = {f.name: f for f in text_string_to_metric_families(target.read_text())}
    value = {name: fam.samples[0].value for name, fam in families.items() if fam.samples}
    assert value["walkeeper_up"] == 1 and value["walkeeper_check_status"] == 0
    assert value["walkeeper_backups"] == 1
    assert 3500 < value["walkeeper_last_backup_age_seconds"] < 3700
    assert 0 <= value["walkeeper_last_archived_age_seconds"] < 120
    total = sum(p.stat().st_size for p in setup.repo.rglob("*") if p.is_file())
    assert value["walkeeper_repository_bytes"] == total
    assert families["walkeeper_wal_segments"].samples[0].labels == {"repo": str(setup.repo), "timeline": "1"}
    assert families["walkeeper_failures"].type == "counter"
    # A failure counted by [notify] shows up; an unreadable repository still writes the file.
    state = setup.work / "state.json"
    setup.write_config(setup.config.read_text() + f'[notify]\non_failure = "true"\nstate_file = "{state}"\n')
    assert push(setup, "000000010000000000000003.x", b"x").returncode != 0
    (setup.repo / "walkeeper.json").rename(setup.repo / "moved.json")
    code, _line = check(setup, "--max-wal-age", "1h", "--prometheus", str(target))
    assert code == 3
    families = {f.name: f for f in text_string_to_metric_families(target.read_text())}
    assert families["walkeeper_up"].samples[0].value == 0
    assert families["walkeeper_check_status"].samples[0].value == 3
    [sample] = [s for s in families["walkeeper_failures"].samples if s.name == "walkeeper_failures_total"]
    assert sample.labels["event"] == "wal-push" and sample.value == 1


def test_status_summary(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 6))
    add_backup(setup, "20260101T000000Z", 1, 2, 2, ended=time.time() - 3600)
    stored(setup, seg(1, 4)).unlink()
    proc = setup.wk("status", "--no-cluster")
    assert proc.returncode == 0, proc.stderr
    assert f"GAP: {seg(1, 4)} .. {seg(1, 4)} missing" in proc.stdout
    assert f"newest segment: {seg(1, 5)}" in proc.stdout
    doc = json.loads(setup.wk("status", "--json", "--no-cluster").stdout)
    assert doc["timelines"][0]["segments"] == 4 and doc["gaps"] == 1
    assert doc["oldest_recovery_point"]["backup"] == "20260101T000000Z"
    assert doc["system_identifier"] == str(SYSID)
    proc = setup.wk("status", "--json", env={"PGHOST": "/nonexistent", "PGCONNECT_TIMEOUT": "2"})
    assert proc.returncode == 0
    assert "error" in json.loads(proc.stdout)["cluster"]



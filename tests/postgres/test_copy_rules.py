"""`walkeeper copy`'s refusals and partial outcomes through the installed CLI, on synthetic archives.

Segments come from tests/helpers/walfactory.py (pushed with wal-push as PostgreSQL would), backups are
published through the real catalog (tests/postgres/test_operate_backends.py's helpers): what the plan
needs to see, without a cluster's start-up cost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import Setup
from tests.helpers.pgharness import give_to_pg
from tests.postgres.test_operate_backends import add_backup, delete_object, key_of, push_segments, seg


def two_repositories(setup: Setup) -> Path:
    """main = the setup's repository (what wal-push fills); copy = a second local one, same key."""
    config = setup.work / "copy.toml"
    config.write_text(
        f'[encryption]\nkey_file = "{setup.key_file}"\n'
        f'[[repository]]\nname = "main"\nrepo = "{setup.repo}"\n'
        f'[[repository]]\nname = "copy"\nrepo = "{setup.work / "copy"}"\n')
    give_to_pg(config)
    return config


def copy(setup: Setup, config: Path, *args: str):  # type: ignore[no-untyped-def]
    return setup.wk("--config", str(config), "copy", "--from", "main", "--to", "copy", *args, config=False)


def test_backup_whose_wal_the_source_lacks_is_left_out_and_named(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 7))
    now = time.time()
    add_backup(setup, "20260101T000000Z", 2, 3, ended=now - 600)
    add_backup(setup, "20260102T000000Z", 5, 6, ended=now - 60)
    delete_object(setup, key_of(seg(1, 6)))  # the newer backup cannot be recovered from the source either
    config = two_repositories(setup)
    proc = copy(setup, config, "--json")
    assert proc.returncode == 15, proc.stderr
    report = json.loads(proc.stdout)
    assert report["backups_listed"] == ["20260101T000000Z"]
    assert report["unusable"][0]["backup"] == "20260102T000000Z" and seg(1, 6) in report["unusable"][0]["reason"]
    assert proc.stderr.count("\n") == 1 and "20260102T000000Z was not copied" in proc.stderr
    assert (setup.work / "copy" / key_of(seg(1, 5))).exists()  # the rest of the WAL was copied
    assert not (setup.work / "copy" / "backups" / "20260102T000000Z" / "backup.json").exists()


def test_since_copies_that_backup_on_and_its_wal(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 7))
    now = time.time()
    add_backup(setup, "20260101T000000Z", 2, 3, ended=now - 600)
    add_backup(setup, "20260102T000000Z", 5, 6, ended=now - 60)
    config = two_repositories(setup)
    report = json.loads(copy(setup, config, "--since", "20260102T000000Z", "--json").stdout)
    assert report["backups_listed"] == ["20260102T000000Z"]
    stored = {p.name for p in (setup.work / "copy" / "wal" / "00000001").iterdir()}
    assert stored == {seg(1, 5), seg(1, 6)}
    proc = copy(setup, config, "--since", "20261231T000000Z")
    assert proc.returncode == 15 and "no backup 20261231T000000Z in repository main" in proc.stderr


def test_another_clusters_repository_is_refused(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 3))
    config = two_repositories(setup)
    other = setup.work / "copy"
    other.mkdir()
    (other / "walkeeper.json").write_text(json.dumps({"format": 1, "system_identifier": "42",
                                                      "wal_segment_size": 1048576, "created": ""}))
    give_to_pg(other)
    proc = copy(setup, config)
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr.count("\n") == 1 and "database system 42" in proc.stderr
    assert sorted(p.name for p in other.iterdir()) == ["walkeeper.json"]


def test_verify_and_expire_act_on_each_repository_with_its_own_retention(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 8))
    now = time.time()
    for n, (start, stop) in enumerate([(2, 2), (4, 4), (6, 6)]):
        add_backup(setup, f"2026010{n + 1}T000000Z", start, stop, ended=now - 600 + n)
    config = two_repositories(setup)
    config.write_text(config.read_text() + "[repository.retention]\nkeep = 1\n")  # the copy keeps less
    assert copy(setup, config).returncode == 0
    text = setup.wk("--config", str(config), "verify", config=False)
    assert text.returncode == 0 and "repository main:" in text.stdout and "repository copy:" in text.stdout
    doc = json.loads(setup.wk("--config", str(config), "verify", "--json", config=False).stdout)
    assert set(doc["repositories"]) == {"main", "copy"} and doc["ok"] is True
    one = json.loads(setup.wk("--config", str(config), "--repo", "copy", "verify", "--json", config=False).stdout)
    assert "repositories" not in one and one["repository"].endswith("/copy")  # one repository: its own shape
    plans = json.loads(setup.wk("--config", str(config), "expire", "--dry-run", "--json", config=False,
                                env={"WALKEEPER_RETENTION_KEEP": "2"}).stdout)["repositories"]
    assert plans["main"]["expired_backups"] == ["20260101T000000Z"]  # keep = 2 from the environment
    assert plans["copy"]["expired_backups"] == ["20260101T000000Z"]  # the environment wins over its keep = 1 too
    plans = json.loads(setup.wk("--config", str(config), "expire", "--dry-run", "--json", config=False).stdout)
    assert "error" in plans["repositories"]["main"] and "retention" in plans["repositories"]["main"]["error"]
    assert plans["repositories"]["copy"]["expired_backups"] == ["20260101T000000Z", "20260102T000000Z"]


def test_copy_lag_in_check_status_and_the_textfile(setup: Setup) -> None:
    import os

    push_segments(setup, 1, range(1, 4))
    config = two_repositories(setup)
    assert copy(setup, config).returncode == 0
    ok = setup.wk("--config", str(config), "check", "--max-copy-lag", "30m", config=False)
    assert ok.returncode == 0 and "copy holds what main holds" in ok.stdout, ok.stdout
    push_segments(setup, 1, range(4, 6))  # main only: the copy falls behind
    an_hour_ago = time.time() - 3600
    for segno in (4, 5):
        os.utime(setup.repo / key_of(seg(1, segno)), (an_hour_ago, an_hour_ago))
    prom = setup.work / "walkeeper.prom"
    late = setup.wk("--config", str(config), "check", "--max-copy-lag", "30m", "--prometheus", prom, config=False)
    assert late.returncode == 2, late.stdout
    assert late.stdout.startswith("WALKEEPER CRITICAL - copy behind main for 1.0h (critical above 30.0m; oldest "
                                  f"not copied: WAL {seg(1, 4)})"), late.stdout
    assert 'walkeeper_copy_lag_seconds{from="main",to="copy"} 36' in prom.read_text()
    types = [line for line in prom.read_text().splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), "each metric described once"
    assert 'walkeeper_wal_segments{repo="' in prom.read_text() and 'repository="copy",timeline="1"} 3' in \
        prom.read_text()
    status = json.loads(setup.wk("--config", str(config), "status", "--no-cluster", "--json", config=False).stdout)
    (lag,) = status["copy_lag"]
    assert (lag["from"], lag["to"], lag["wal_behind"]) == ("main", "copy", 2) and lag["seconds"] > 3500
    text = setup.wk("--config", str(config), "status", "--no-cluster", config=False).stdout
    assert "copy lag: copy is 1.0h behind main" in text
    assert copy(setup, config).returncode == 0
    caught_up = setup.wk("--config", str(config), "check", "--max-copy-lag", "30m", config=False)
    assert caught_up.returncode == 0, caught_up.stdout


def test_incremental_chain_parent_first_and_its_fields_carried(setup: Setup) -> None:
    """A child backup (type/parent, as incremental backups record them) is listed after its parent, --since
    the child brings the parent, and fields this walkeeper may not know travel unchanged."""
    from walkeeper.codec import decode_bytes, encode_bytes
    from walkeeper.core.config import load_config
    from walkeeper.repo.layout import backup_key
    from walkeeper.repo.repository import open_repository

    push_segments(setup, 1, range(1, 7))
    now = time.time()
    full, child = "20260101T000000Z", "20260102T000000Z"
    add_backup(setup, full, 2, 3, ended=now - 600)
    add_backup(setup, child, 5, 6, ended=now - 60)
    repo = open_repository(load_config(str(setup.config), env={}))
    key = backup_key(child, "backup.json")
    _h, data = decode_bytes(repo.keyring, repo.storage.get(key), expected_name=key)
    doc = {**json.loads(data), "type": "incremental", "parent": full, "chain_note": "from a newer walkeeper"}
    repo.storage.put(key, encode_bytes(repo.codec, key, json.dumps(doc).encode())[0], overwrite=True)
    give_to_pg(setup.repo)
    config = two_repositories(setup)
    proc = setup.wk("--config", str(config), "-v", "copy", "--from", "main", "--to", "copy", "--backups", "--since",
                    child, "--json", config=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backups_listed"] == [full, child]
    listed = [line for line in proc.stderr.splitlines() if "listed backup" in line]
    assert [full in listed[0], child in listed[1]] == [True, True]
    copied = open_repository(load_config(str(config), env={}).for_repository("copy"))
    _h, data = decode_bytes(copied.keyring, copied.storage.get(key), expected_name=key)
    got = json.loads(data)
    assert (got["type"], got["parent"], got["chain_note"]) == ("incremental", full, "from a newer walkeeper")


def test_history_partial_and_backup_label_files_travel_with_the_wal(setup: Setup) -> None:
    from tests.contract.test_wal_contract import SYSID, push
    from tests.helpers.walfactory import make_segment

    push_segments(setup, 1, range(1, 4))
    name, data = make_segment(1, 3, sysid=SYSID)
    extra = {f"{name}.partial": data, "00000002.history": b"1\t0/400000\tno recovery target specified\n",
             f"{seg(1, 2)}.00000028.backup": b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"}
    for file_name, content in extra.items():
        proc = push(setup, file_name, content)
        assert proc.returncode == 0, proc.stderr
    push_segments(setup, 2, [4])
    config = two_repositories(setup)
    report = json.loads(copy(setup, config, "--wal", "--json").stdout)
    stored = {p.relative_to(setup.work / "copy").as_posix() for p in (setup.work / "copy" / "wal").rglob("*")
              if p.is_file()}
    assert {key_of(n) for n in extra} <= stored and key_of(seg(2, 4)) in stored
    assert report["copied"] == 4 + 3 and report["skipped"] == 0
    verify = setup.wk("--config", str(config), "--repo", "copy", "verify", "--deep", config=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_copy_that_cannot_be_read_is_a_warning_also_with_the_textfile(setup: Setup) -> None:
    """The copy lag cannot be measured while a repository is down: check still judges the others (WARNING,
    not UNKNOWN) and still writes their samples (README "Several repositories", S3 down)."""
    push_segments(setup, 1, range(1, 3))
    config = two_repositories(setup)
    assert copy(setup, config).returncode == 0
    (setup.work / "copy" / "walkeeper.json").write_text("not json")
    prom = setup.work / "walkeeper.prom"
    for extra in ((), ("--max-copy-lag", "30m")):
        down = setup.wk("--config", str(config), "check", "--prometheus", prom, *extra, config=False)
        assert down.returncode == 1 and down.stdout.startswith("WALKEEPER WARNING - copy: "), down.stdout
        assert 'walkeeper_up{repo=""} 0' not in prom.read_text()
        assert 'repository="main",timeline="1"} 2' in prom.read_text(), prom.read_text()

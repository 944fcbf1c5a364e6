"""`walkeeper copy` between repositories, with a real PostgreSQL 15 archiving into the first one.

Two pairs: local -> S3 (moto) with another key and compression level (every object re-encoded) and
local -> ssh with the same key (stored bytes copied as they are, still decoded on the way). Each story
kills the copy twice with SIGKILL (in the middle of a backup's data object, then between its data and
its listing), resumes it, reruns it (all skipped), meets a different object at the destination
(refused, nothing overwritten), then deletes the first repository and recovers to a point in time from
the copy alone, comparing the table contents with what they were at the target.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Setup, make_key
from tests.helpers.pgharness import PG_BIN, WALKEEPER_BIN, Cluster, as_pg, give_to_pg, run_pg, running_as_root
from tests.postgres.test_pitr import STATE_SQL, archive_everything, conn, ok, pgbench, server_time, start_primary

pytestmark = pytest.mark.postgres


def copy_config(setup: Setup, pair: str, request: pytest.FixtureRequest) -> Path:
    """main: the local repository PostgreSQL archives into; offsite: S3 (other key) or ssh (same key)."""
    if pair == "s3":
        server = request.getfixturevalue("s3_server")
        url, table = server.url(), server.config_toml().replace("[s3]", "[repository.s3]")
        key = make_key(setup.work / "offsite.key")
        extra = '[repository.compression]\nmethod = "zstd"\nlevel = 9\n'
    else:
        server = request.getfixturevalue("ssh_server")
        url, table = server.url(), server.config_toml().replace("[ssh]", "[repository.ssh]")
        key, extra = setup.key_file, ""
    path = setup.work / "copy.toml"
    path.write_text(
        '[compression]\nmethod = "zstd"\nlevel = 3\n[encryption]\nmethod = "aes-256-gcm"\n\n'
        f'[[repository]]\nname = "main"\nrepo = "{setup.repo}"\n'
        f'[repository.encryption]\nkey_file = "{setup.key_file}"\n\n'
        f'[[repository]]\nname = "offsite"\nrepo = "{url}"\n[repository.encryption]\nkey_file = "{key}"\n'
        f"{extra}{table}")
    give_to_pg(path)
    return path


def wk(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}
    return subprocess.run(as_pg([str(WALKEEPER_BIN), "--config", str(config), *args]), capture_output=True,
                          text=True, env=env, timeout=300)


def copy_killed_at(config: Path, marker: str) -> list[str]:
    """Run a copy and SIGKILL walkeeper (not its runuser parent) as soon as it logs ``marker``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}
    proc = subprocess.Popen(as_pg([str(WALKEEPER_BIN), "--config", str(config), "-vv", "copy", "--from", "main",
                                   "--to", "offsite"]), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=env)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line.rstrip())
        if marker in line:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")  # under runuser: walkeeper itself
            pids = children.read_text().split() if running_as_root() else []
            for pid in pids or [str(proc.pid)]:
                os.kill(int(pid), signal.SIGKILL)
            break
    proc.wait(60)
    assert any(marker in line for line in seen), "\n".join(seen)
    return seen


def offsite_keys(config: Path) -> set[str]:
    from walkeeper.core.config import load_config
    from walkeeper.repo.repository import open_repository

    repo = open_repository(load_config(str(config), env={}).for_repository("offsite"))
    try:
        return {info.key for info in repo.storage.list("")}
    finally:
        repo.storage.close()


def replace_offsite_object(config: Path, key: str, content: bytes | None = None) -> tuple[bytes, bytes]:
    """Put ``content`` (default: another valid object of that name) at ``key`` in offsite: (before, after)."""
    from walkeeper.codec import encode_bytes
    from walkeeper.core.config import load_config
    from walkeeper.repo.repository import open_repository

    repo = open_repository(load_config(str(config), env={}).for_repository("offsite"))
    try:
        before = repo.storage.get(key)
        if content is None:
            content, _sha = encode_bytes(repo.codec, key.rsplit("/", 1)[1], os.urandom(64))
        repo.storage.put(key, content, overwrite=True)
        return before, content
    finally:
        repo.storage.close()


@pytest.mark.parametrize("pair", ["s3", "ssh"])
def test_copy_killed_resumed_idempotent_refusing_then_pitr_from_the_copy(
        setup: Setup, pair: str, request: pytest.FixtureRequest) -> None:
    config = copy_config(setup, pair, request)
    primary = start_primary(setup)
    try:
        run_pg([PG_BIN / "pgbench", "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        primary.psql("create table notes(id serial primary key, note text)")
        archive_everything(primary)
        backup = json.loads(ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--json")).stdout)
        pgbench(primary, 200)
        ok(setup.wk("restore-point", "before-the-target", *conn(primary)))
        dump = json.loads(ok(setup.wk("dump", *conn(primary), "-d", "postgres", "-t", "notes", "--json")).stdout)
        primary.psql("insert into notes(note) values ('at the target')")
        expected = primary.psql(STATE_SQL)
        target = server_time(primary)
        pgbench(primary, 100)
        primary.psql("insert into notes(note) values ('after the target')")
        archive_everything(primary)
    finally:
        primary.stop()
    base = f"backups/{backup['id']}/base.tar"
    listed = f"backups/{backup['id']}/backup.json"

    # 0. a dry run says what it would copy and writes nothing
    dry = json.loads(ok(wk(config, "copy", "--from", "main", "--to", "offsite", "--dry-run", "--json")).stdout)
    assert dry["to_copy"] > 3 and dry["copied"] == 0 and dry["backups_listed"] == [backup["id"]]
    assert offsite_keys(config) == set()

    # 1. killed in the middle of the backup's data object: nothing of it visible, nothing listed
    copy_killed_at(config, f"copying {base}")
    keys = offsite_keys(config)
    assert base not in keys and listed not in keys
    # 2. killed after the data object, while copying the WAL the backup needs: still not listed
    copy_killed_at(config, "copying wal/")
    keys = offsite_keys(config)
    assert base in keys and listed not in keys
    assert json.loads(ok(wk(config, "--repo", "offsite", "backups", "--json")).stdout)["backups"] == []

    # 3. resumed: the data object is checked, not copied again; the backup listed last
    report = json.loads(ok(wk(config, "copy", "--from", "main", "--to", "offsite", "--json")).stdout)
    assert report["backups_listed"] == [backup["id"]] and report["skipped"] >= 1 and report["copied"] >= 3
    assert report["reencoded"] == (report["copied"] if pair == "s3" else 0)
    offsite_backups = json.loads(ok(wk(config, "--repo", "offsite", "backups", "--json")).stdout)["backups"]
    assert [b["id"] for b in offsite_backups] == [backup["id"]]
    assert [o["sha256"] for o in offsite_backups[0]["objects"]] == [o["sha256"] for o in backup["objects"]]
    assert [d["id"] for d in json.loads(ok(wk(config, "--repo", "offsite", "dumps", "--json")).stdout)["dumps"]] \
        == [dump["id"]] and report["dumps_listed"] == [dump["id"]]
    points = json.loads(ok(wk(config, "--repo", "offsite", "restore-points", "--json")).stdout)
    assert [p["name"] for p in points] == ["before-the-target"]
    verify = ok(wk(config, "--repo", "offsite", "verify", "--deep"))
    assert "the archive is whole" in verify.stdout

    # 4. rerun: everything already there and identical
    again = json.loads(ok(wk(config, "copy", "--from", "main", "--to", "offsite", "--json")).stdout)
    assert again["copied"] == 0 and again["backups_present"] == [backup["id"]] and again["skipped"] > 0
    assert again["dumps_present"] == [dump["id"]]

    # 5. a different object at the destination: refused with one line, nothing overwritten
    wal = sorted(k for k in offsite_keys(config) if k.startswith("wal/") and len(k.rsplit("/", 1)[1]) == 24)[-1]
    original, planted = replace_offsite_object(config, wal)
    refused = wk(config, "copy", "--from", "main", "--to", "offsite")
    assert refused.returncode == 6, (refused.stdout, refused.stderr)
    assert refused.stderr.count("\n") == 1 and "different content" in refused.stderr and wal in refused.stderr
    assert replace_offsite_object(config, wal, original)[0] == planted  # untouched by the copy

    # 6. the first repository gone (and gone from the configuration: wal-fetch would otherwise stop at
    # the missing repository rather than take "not found" from it): recover from the copy alone
    shutil.rmtree(setup.repo)
    text = config.read_text()
    alone = setup.work / "offsite.toml"
    alone.write_text(text[:text.index("[[repository]]")] + text[text.index('[[repository]]\nname = "offsite"'):])
    give_to_pg(alone)
    cluster = Cluster(setup.work / "recovered")
    ok(wk(alone, "pitr", "--pgdata", str(cluster.datadir), "--target-time", target, "--target-action", "promote"))
    cluster.configure({**cluster.base_settings(), "archive_mode": "off"})
    try:
        cluster.start()
        cluster.wait_recovery_done()
        assert cluster.psql(STATE_SQL) == expected
    finally:
        cluster.stop()


@pytest.mark.parametrize("same_key", [True, False])
def test_copy_memory_is_bounded(setup: Setup, same_key: bool) -> None:
    """A backup object several times the RSS limit streams through, copied as stored or re-encoded."""
    import sys
    from datetime import UTC, datetime

    from walkeeper.codec import Encoder
    from walkeeper.core.config import load_config
    from walkeeper.repo.catalog import BackupMeta, BackupObject, Catalog
    from walkeeper.repo.layout import backup_key
    from walkeeper.repo.repository import open_repository

    limit_kb, size = 100 * 1024, 300 * 2**20
    key = make_key(setup.work / "other.key") if not same_key else setup.key_file
    config = setup.work / "copy.toml"
    config.write_text(
        '[compression]\nmethod = "zstd"\nlevel = 1\n[encryption]\nmethod = "aes-256-gcm"\n'
        f'[[repository]]\nname = "main"\nrepo = "{setup.repo}"\n'
        f'[repository.encryption]\nkey_file = "{setup.key_file}"\n'
        f'[[repository]]\nname = "offsite"\nrepo = "{setup.work / "offsite"}"\n'
        f'[repository.encryption]\nkey_file = "{key}"\n')
    give_to_pg(config)
    repo = open_repository(load_config(str(config), env={}))
    repo.ensure_identity(7300000000000000001, 16 * 2**20, 150000)
    backup_id = "20260101T000000Z"
    obj = backup_key(backup_id, "base.tar")
    encoder = Encoder(repo.codec, obj, extra={"backup": backup_id})
    repo.storage.put(obj, encoder.encode_chunks(os.urandom(2**20) for _ in range(size // 2**20)))
    now = datetime.now(UTC).isoformat()
    Catalog(repo).save_backup(BackupMeta(
        id=backup_id, label="big", start_lsn="0/1000028", stop_lsn="0/1000100", start_wal="000000010000000000000001",
        stop_wal="000000010000000000000001", timeline=1, stop_timeline=1, start_time=now, stop_time=now,
        pg_version=150000, system_identifier="7300000000000000001", wal_segment_size=16 * 2**20, wal_mode="include",
        plain_size=size, stored_size=encoder.stored_size,
        objects=[BackupObject(obj, "base.tar", None, None, size, encoder.stored_size, encoder.sha256)]))
    give_to_pg(setup.repo)
    probe = ("import resource, subprocess, sys, time; t = time.time(); "
             "rc = subprocess.run(sys.argv[1:]).returncode; "
             "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.time() - t)")
    cmd = [sys.executable, "-c", probe, str(WALKEEPER_BIN), "--config", str(config), "copy", "--from", "main",
           "--to", "offsite", "--json"]
    proc = subprocess.run(as_pg(cmd), capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")})
    lines = proc.stdout.strip().splitlines()
    rc, peak_kb, seconds = lines[-1].split()
    assert rc == "0", proc.stderr
    report = json.loads("\n".join(lines[:-1]))
    print(f"copy of {size >> 20} MiB ({'as stored' if same_key else 're-encoded'}) in {float(seconds):.1f}s, "
          f"peak RSS {int(peak_kb) >> 10} MiB")
    assert report["backups_listed"] == [backup_id] and report["reencoded"] == (0 if same_key else 1)
    assert int(peak_kb) < limit_kb, f"peak RSS {peak_kb} kB"
    if same_key:  # copied as stored: the very same bytes
        assert (setup.work / "offsite" / obj).read_bytes() == (setup.repo / obj).read_bytes()


def test_incremental_chain_copied_killed_resumed_then_pitr_from_the_copy(setup: Setup) -> None:
    """PostgreSQL 18: a full backup and two incrementals copied parent first (killed inside the chain, then
    resumed), the first repository deleted, PITR between the incrementals from the copy (pg_combinebackup)."""
    from tests.helpers.pgharness import PG18_BIN
    from tests.postgres.test_incremental import backup as take
    from tests.postgres.test_incremental import start, work

    if PG18_BIN is None:
        pytest.skip("PostgreSQL 18 not installed (WALKEEPER_PG18_BIN)")
    setup.use_pg(PG18_BIN)
    primary = start(setup, PG18_BIN)
    try:
        run_pg([primary.bin("pgbench"), "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        primary.psql("create table notes(id serial primary key, note text)")
        archive_everything(primary)
        full = take(setup, primary)
        work(primary, 100, "after the full")
        inc1 = take(setup, primary, "--incremental")
        work(primary, 100, "between 1 and 2")
        expected, target = primary.psql(STATE_SQL), server_time(primary)
        work(primary, 50, "still between 1 and 2")
        inc2 = take(setup, primary, "--incremental")
        work(primary, 10, "the end")
        archive_everything(primary)
    finally:
        primary.stop()
    key = make_key(setup.work / "copy.key")
    config = setup.work / "copy.toml"
    shared = f'[backup]\npg_bin_dir = "{PG18_BIN}"\n'
    config.write_text(f'{shared}[[repository]]\nname = "main"\nrepo = "{setup.repo}"\n[repository.encryption]\n'
                      f'key_file = "{setup.key_file}"\n[[repository]]\nname = "offsite"\n'
                      f'repo = "{setup.work / "offsite"}"\n[repository.encryption]\nkey_file = "{key}"\n')
    give_to_pg(config)
    copy_killed_at(config, f"copying backups/{inc1['id']}/")
    assert not (setup.work / "offsite" / "backups" / inc1["id"] / "backup.json").exists()
    report = json.loads(ok(wk(config, "copy", "--from", "main", "--to", "offsite", "--json")).stdout)
    listed = [b for b in (full["id"], inc1["id"], inc2["id"]) if b not in report["backups_present"]]
    assert report["backups_listed"] == listed and inc1["id"] in listed and inc2["id"] in listed
    chain = json.loads(ok(wk(config, "--repo", "offsite", "backups", "--json")).stdout)["backups"]
    assert [(b["id"], b["type"], b["parent"]) for b in chain] == [
        (full["id"], "full", None), (inc1["id"], "incremental", full["id"]), (inc2["id"], "incremental", inc1["id"])]

    shutil.rmtree(setup.repo)
    text = config.read_text()
    alone = setup.work / "offsite.toml"
    alone.write_text(shared + text[text.index('[[repository]]\nname = "offsite"'):])
    give_to_pg(alone)
    cluster = Cluster(setup.work / "recovered", bin_dir=PG18_BIN)
    out = ok(wk(alone, "pitr", "--pgdata", str(cluster.datadir), "--target-time", target,
                "--target-action", "promote")).stdout
    assert inc1["id"] in out, out
    cluster.configure({**cluster.base_settings(), "archive_mode": "off"})
    try:
        cluster.start()
        cluster.wait_recovery_done()
        assert cluster.psql(STATE_SQL) == expected
    finally:
        cluster.stop()

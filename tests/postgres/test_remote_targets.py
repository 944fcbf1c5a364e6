"""What the conformance suite cannot say generically: clear errors per target, lazy boto3, and
PostgreSQL itself archiving to S3 and over ssh and recovering from there."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import PG_BIN, Cluster, free_port, run_pg, walkeeper_cmd
from tests.helpers.servers import S3Server, SshServer
from walkeeper.core.config import load_config
from walkeeper.core.errors import FATAL_BASE, NotFound, StorageError, TransientError
from walkeeper.storage import Storage, open_storage


def open_with(tmp_path: Path, url: str, tables: str) -> Storage:
    path = tmp_path / "walkeeper.toml"
    path.write_text(f'repo = "{url}"\n[retry]\nattempts = 2\nbase_delay = 0.1\n{tables}')
    config = load_config(str(path), env={})
    return open_storage(config.repo, config)


def test_ssh_unknown_host_key_is_a_clear_error(ssh_server: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    store = open_with(tmp_path, ssh_server.url(), ssh_server.config_toml(known_hosts_file=str(empty)))
    with pytest.raises(StorageError) as caught:
        store.get("walkeeper.json")
    assert not isinstance(caught.value, TransientError | NotFound)
    assert "host key of 127.0.0.1" in str(caught.value) and "ssh-keyscan" in str(caught.value)


def test_ssh_refused_key_is_a_clear_error(ssh_server: SshServer, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
    store = open_with(tmp_path, ssh_server.url(), ssh_server.config_toml(identity_file=str(other)))
    with pytest.raises(StorageError) as caught:
        store.put("k", b"x")
    assert not isinstance(caught.value, TransientError)
    assert "refused the login of postgres" in str(caught.value) and str(other) in str(caught.value)


def test_ssh_unreachable_host_names_host_and_port(ssh_server: SshServer, tmp_path: Path) -> None:
    store = open_with(tmp_path, ssh_server.url(port=free_port()), ssh_server.config_toml())
    with pytest.raises(TransientError, match=r"127\.0\.0\.1.*(port|sshd listens)"):
        store.stat("k")


def test_ssh_connection_is_shared_and_closed(ssh_server: SshServer, tmp_path: Path) -> None:
    store = open_with(tmp_path, ssh_server.url(), ssh_server.config_toml())
    inner = store.inner  # type: ignore[attr-defined]
    for n in range(5):
        store.put(f"k{n}", b"x")
    assert Path(inner._control_dir, "cm").is_socket()  # one master carried all five
    store.close()
    assert not Path(inner._control_dir).exists()


def test_s3_missing_bucket_is_an_error_not_not_found(s3_server: S3Server, tmp_path: Path) -> None:
    store = open_with(tmp_path, "s3://no-such-bucket-here/p", s3_server.config_toml())
    with pytest.raises(StorageError, match="bucket no-such-bucket-here does not exist") as caught:
        store.get("walkeeper.json")
    assert not isinstance(caught.value, NotFound)


def test_s3_multipart_completion_whose_answer_is_lost(s3_server: S3Server, tmp_path: Path) -> None:
    """moto completes the upload but the answer never arrives: the retry meets NoSuchUpload (or If-None-Match),
    and the put still succeeds because the stored object is exactly our parts; a different object does not."""
    import os

    url = s3_server.url()
    store = open_with(tmp_path, url, s3_server.config_toml())
    data = os.urandom(11 * 1024 * 1024 + 7)  # three parts of the 5 MiB test chunk
    # CompleteMultipartUpload is the POST of the key with ?uploadId= (parts are PUTs, the start is ?uploads).
    complete = f"POST /{url[len('s3://'):]}/backups/b1/base.tar?uploadId=".encode()
    s3_server.forwarder.lose_answer_once(complete)
    lost_before = s3_server.forwarder.lost
    store.put("backups/b1/base.tar", iter([data[i:i + 1_000_000] for i in range(0, len(data), 1_000_000)]),
              overwrite=False)
    assert s3_server.forwarder.lost == lost_before + 1, "the completion's answer was really lost"
    assert store.get("backups/b1/base.tar") == data
    # moto, like AWS, answers a repeated completion with success; MinIO and others say NoSuchUpload, and
    # then the object's multipart ETag decides. Check that arithmetic against the real server's ETag.
    import hashlib

    chunk = 5 * 1024 * 1024
    part_etags = {i + 1: f'"{hashlib.md5(data[o:o + chunk]).hexdigest()}"'
                  for i, o in enumerate(range(0, len(data), chunk))}
    inner = getattr(store, "inner", store)
    full = inner.prefix + "backups/b1/base.tar"
    assert inner._holds_exactly("backups/b1/base.tar", full, part_etags)
    assert not inner._holds_exactly("backups/b1/base.tar", full, {**part_etags, 2: part_etags[1]})

    # The same loss when another object already holds the key: refused, nothing overwritten.
    other = os.urandom(11 * 1024 * 1024)
    s3_server.forwarder.lose_answer_once(complete)
    with pytest.raises(StorageError):
        store.put("backups/b1/base.tar", iter([other[:6 * 1024 * 1024], other[6 * 1024 * 1024:]]),
                  overwrite=False)
    assert store.get("backups/b1/base.tar") == data


def test_boto3_is_imported_only_for_s3() -> None:
    code = ("import sys, tempfile; from walkeeper.commands import wal_fetch, wal_push; "
            "from walkeeper.repo import repository; from walkeeper.cli import main; "
            "from walkeeper.storage import open_storage; open_storage(tempfile.mkdtemp()).list(); "
            "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend_setup", ["s3", "ssh"], indirect=True)
def test_cli_unreachable_target_is_never_not_found(backend_setup: Setup) -> None:
    """wal-fetch with the target down: an exit above 125 (stop recovery), never 1 ("not in archive")."""
    setup = backend_setup
    closed = str(free_port())
    text = setup.config.read_text()
    text = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{closed}", text)
    text += "[retry]\nattempts = 2\nbase_delay = 0.1\n"
    setup.write_config(text)
    dest = setup.work / "RECOVERYXLOG"
    fetch = setup.wk("wal-fetch", "000000010000000000000001", dest, cwd=setup.work)
    assert fetch.returncode == FATAL_BASE + TransientError.code, fetch.stderr
    assert "127.0.0.1" in fetch.stderr
    assert not dest.exists()


@pytest.mark.postgres
@pytest.mark.parametrize("backend_setup", ["s3", "ssh"], indirect=True)
def test_postgres_archives_to_remote_target_and_recovers(backend_setup: Setup) -> None:
    setup = backend_setup
    primary = Cluster(setup.work / "primary").initdb()
    primary.configure({**primary.base_settings(), "archive_mode": "on", "wal_level": "replica",
                       "archive_command": f"{walkeeper_cmd(setup.config)} wal-push %p"})
    primary.start()
    try:
        run_pg([PG_BIN / "pgbench", "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        primary.wait_archived(primary.switch_wal())
        backup = setup.work / "backup"
        run_pg([PG_BIN / "pg_basebackup", "-D", backup, "-X", "none", "-c", "fast", *primary.conninfo()])
        primary.psql("create table remote_check as select g, md5(g::text) as note from generate_series(1, 3000) g")
        expected = primary.psql("select count(*), sum(hashtext(note)) from remote_check")
        last = primary.switch_wal()
        primary.wait_archived(last)
    finally:
        primary.stop()

    listing = json.loads(setup.wk("wal-list", "--json").stdout)
    assert listing["repository"].startswith(setup.backend)  # s3://... or ssh://...
    (tl1,) = listing["timelines"]
    assert last <= tl1["last"] and tl1["gaps"] == []

    shutil.rmtree(primary.datadir)
    restored = Cluster.from_backup(backup, setup.work / "restored", f"{walkeeper_cmd(setup.config)} wal-fetch %f %p")
    restored.start()
    try:
        restored.wait_recovery_done()
        assert restored.psql("select count(*), sum(hashtext(note)) from remote_check") == expected
        assert f'restored log file "{last}" from archive' in restored.log()
    finally:
        restored.stop()


@pytest.mark.parametrize("name", ["walkeeper-s3.toml", "walkeeper-minio.toml", "walkeeper-ssh.toml"])
def test_conf_examples_load_and_open(name: str) -> None:
    """The examples stay valid: every key known, every URL accepted by its backend (no network used)."""
    config = load_config(str(Path(__file__).parents[2] / "conf-examples" / name), env={})
    store = open_storage(config.repo, config)
    assert store.url.startswith(config.repo.split("://")[0])
    store.close()

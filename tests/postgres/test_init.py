"""walkeeper init: unit tables for its pure parts, then real clusters, moto S3 and a real sshd.

The stories: init as root for the postgres user creates everything owned by that user and records
the system identifier read from global/pg_control (a 1 MiB-segment cluster, so a default could not
pass); a second run changes nothing; another cluster is refused (exit 7); a standby set up right
after init, before the first push, runs (wal-fetch answers "not found") and then follows the
archive once the primary starts pushing.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import (
    PG_BIN,
    WALKEEPER_BIN,
    Cluster,
    pg_uid,
    pg_workdir,
    run_pg,
    running_as_root,
    walkeeper_cmd,
)
from walkeeper.core.config import Config, S3Config, load_config
from walkeeper.core.config_render import render_config
from walkeeper.postgres.cluster_identity import FLOAT_FORMAT, control_segment_size

# -- pure parts --------------------------------------------------------------------------------------------------

def _control(offset: int, blcksz: int = 8192, wal_blcksz: int = 8192, seg: int = 16 << 20) -> bytes:
    data = bytearray(8192)
    data[offset:offset + 8] = FLOAT_FORMAT
    struct.pack_into("<IIII", data, offset + 8, blcksz, 131072, wal_blcksz, seg)
    return bytes(data)


@pytest.mark.parametrize(("data", "expected"), [
    (_control(208), 16 << 20),  # PostgreSQL 12-16 layout
    (_control(216, seg=1 << 20), 1 << 20),  # a later layout: the marker moved, the order after it did not
    (_control(208, seg=1 << 30), 1 << 30),
    (_control(209), None),  # not 8-aligned: not the double
    (_control(208, seg=3 << 20), None),  # not a power of two
    (_control(208, seg=1 << 31), None),  # above PostgreSQL's 1 GiB limit
    (_control(208, blcksz=0), None),
    (bytes(8192), None),  # no marker at all
    (_control(208)[:220], None),  # cut off after the marker
])
def test_segment_size_from_pg_control(data: bytes, expected: int | None) -> None:
    assert control_segment_size(data) == expected


def test_config_skeleton_round_trips(tmp_path: Path) -> None:
    config = Config(repo='s3://bucket/a "quoted" prefix', s3=S3Config(endpoint_url="http://127.0.0.1:9000",
                                                                        addressing_style="path", read_timeout=12.5))
    config = config.__class__(**{**config.__dict__, "encryption": config.encryption.__class__(key_file="/k/key")})
    path = tmp_path / "walkeeper.toml"
    text = render_config(config)
    path.write_text(text)
    loaded = load_config(str(path), env={})
    assert loaded.repo == config.repo and loaded.encryption.key_file == "/k/key"
    assert loaded.s3 == config.s3 and loaded.compression == config.compression
    assert "[ssh]" not in text and "[compression]" not in text  # defaults are not repeated


# -- real clusters ---------------------------------------------------------------------------------------------

pg = pytest.mark.postgres


def wk(*args: str | os.PathLike[str], as_postgres: bool = False, env: dict[str, str] | None = None,
       cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    from tests.helpers.pgharness import as_pg

    cmd = [str(WALKEEPER_BIN), *map(str, args)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}
    full_env.update(env or {})
    return subprocess.run(as_pg(cmd) if as_postgres else cmd, capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=120)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def controldata(datadir: Path) -> dict[str, str]:
    out = run_pg([PG_BIN / "pg_controldata", datadir]).stdout.decode()
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def owned_by_postgres(*paths: Path) -> None:
    uid, _ = pg_uid()
    for path in paths:
        assert path.stat().st_uid == uid, f"{path} is owned by uid {path.stat().st_uid}"


@pg
def test_init_as_root_creates_everything_for_the_data_directory_owner() -> None:
    if not running_as_root():
        pytest.skip("creating files for another user needs root")
    work = pg_workdir()
    cluster = Cluster(work / "main").initdb("--wal-segsize=1")
    etc = Path(os.environ.get("WALKEEPER_TEST_TMP", "/tmp")) / f"wk-etc-{os.getpid()}-{time.time_ns()}"
    try:
        etc.mkdir(mode=0o755)  # root-owned, like /etc: the owner could not create files here itself
        repo, key, conf = etc / "srv" / "walkeeper" / "repo", etc / "walkeeper" / "key", etc / "walkeeper" / "wk.toml"
        args = ["--repo", repo, "init", "--pgdata", cluster.datadir, "--generate-key", key, "--write-config", conf]
        out = ok(wk(*args))  # as root, no --owner: the data directory's owner
        assert f"wrote a new key to {key}" in out and f"wrote configuration {conf}" in out
        assert f"created directory {repo}" in out and "initialised repository" in out
        control = controldata(cluster.datadir)
        meta = json.loads((repo / "walkeeper.json").read_text())
        assert meta["system_identifier"] == control["Database system identifier"]
        assert meta["wal_segment_size"] == int(control["Bytes per WAL segment"]) == 1 << 20
        assert meta["pg_version"] == 15 and meta["key_id"]
        owned_by_postgres(repo, repo.parent, repo.parent.parent, repo / "walkeeper.json", key, conf, key.parent)
        assert stat.S_IMODE(repo.stat().st_mode) == 0o700 and stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE((repo / "walkeeper.json").stat().st_mode) == 0o600
        assert etc.stat().st_uid == 0  # an existing parent is not given away
        written = load_config(str(conf), env={})
        assert written.repo == str(repo) and written.encryption.key_file == str(key)
        assert f"archive_command = '{WALKEEPER_BIN} --config {conf} wal-push %p'" in out

        # The owner can use what was made: wal-fetch on the empty repository is "not found".
        fetch = wk("--config", conf, "wal-fetch", "000000010000000000000001", work / "x", as_postgres=True)
        assert fetch.returncode == 1 and fetch.stderr == ""

        # Again: nothing changes, and it says so.
        before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (key, conf, repo / "walkeeper.json")}
        out = ok(wk(*args))
        assert "nothing changed" in out and "already initialised" in out and "exists: kept" in out
        assert before == {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before}

        # Another cluster, the same repository: refused, nothing written.
        other = Cluster(work / "other").initdb("--wal-segsize=1")
        one_line_error(wk("--config", conf, "init", "--pgdata", other.datadir), 7, "belongs to database system")
        proc = wk("--repo", repo, "init", "--pgdata", other.datadir, "--generate-key", etc / "k-other",
                  "--write-config", etc / "other.toml")
        one_line_error(proc, 7, "belongs to database system")
        # A new key for a repository written with another: refused before the key is made.
        proc = wk("--repo", repo, "init", "--pgdata", cluster.datadir, "--generate-key", etc / "k-new")
        one_line_error(proc, 15, "a new key could not read it")
        assert not {etc / "k-other", etc / "other.toml", etc / "k-new"} & set(etc.iterdir())
        assert before == {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before}
        # Not root: no files for someone else.
        proc = wk("--repo", work / "r2", "init", "--owner", "root", "--generate-key", work / "k2", as_postgres=True)
        one_line_error(proc, 15, "only root can create files for another user")
        assert not (work / "k2").exists() and not (work / "r2").exists()
        # As root, the owner must be known; --owner names it.
        one_line_error(wk("--repo", etc / "r3", "init", "--generate-key", etc / "k3"), 15, "--owner USER")
        assert not (etc / "r3").exists() and not (etc / "k3").exists()
        ok(wk("--repo", etc / "r3", "init", "--owner", "postgres", "--generate-key", etc / "k3"))
        owned_by_postgres(etc / "r3", etc / "r3" / "walkeeper.json", etc / "k3")
    finally:
        subprocess.run(["rm", "-rf", str(work), str(etc)], check=False)


@pg
def test_standby_set_up_before_the_first_push_follows_the_archive(setup: Setup) -> None:
    """init through a connection; a standby restores from the empty repository, then the primary archives."""
    primary = Cluster(setup.work / "primary").initdb()
    primary.configure({**primary.base_settings(), "wal_level": "replica", "archive_mode": "on",
                       "archive_command": ""})  # archiving off for now: .ready files wait
    primary.start()
    standby = Cluster(setup.work / "standby")
    try:
        out = ok(setup.wk("init", *primary.conninfo()))
        sysid = primary.psql("select system_identifier from pg_control_system()")
        assert f"database system {sysid} (the server, PostgreSQL 15, 16 MiB WAL segments)" in out
        assert "nothing to do" in ok(setup.wk("init", *primary.conninfo()))

        run_pg([PG_BIN / "pg_basebackup", *primary.conninfo(), "-D", standby.datadir, "-X", "stream", "-c", "fast"])
        # --pgdata and a connection together must name one cluster (a copy of it does).
        assert "nothing to do" in ok(setup.wk("init", "--pgdata", standby.datadir, *primary.conninfo()))
        other = Cluster(setup.work / "other").initdb()
        one_line_error(setup.wk("init", "--pgdata", other.datadir, *primary.conninfo()), 15, "not the same cluster")
        standby.configure({**standby.base_settings(), "archive_mode": "off", "hot_standby": "on",
                           "wal_retrieve_retry_interval": "100ms",
                           "restore_command": f"{walkeeper_cmd(setup.config)} wal-fetch %f %p"})
        run_pg(["touch", standby.datadir / "standby.signal"])
        standby.start()
        time.sleep(1.0)  # many probes of the empty archive, each answered "not found"
        assert standby.is_running() and standby.psql("select pg_is_in_recovery()") == "t"
        assert "FATAL" not in standby.log()

        primary.psql(f"alter system set archive_command = '{walkeeper_cmd(setup.config)} wal-push %p'")
        primary.psql("select pg_reload_conf()")
        primary.psql("create table after_init as select g from generate_series(1, 1000) g")
        primary.wait_archived(primary.switch_wal())
        deadline = time.time() + 60
        while time.time() < deadline:
            if standby.psql("select count(*) from after_init", check=False) == "1000":
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the standby did not replay the archive:\n{standby.log()[-3000:]}")
        meta = json.loads((setup.repo / "walkeeper.json").read_text())
        assert meta["system_identifier"] == sysid and meta["wal_segment_size"] == 16 << 20
    finally:
        standby.destroy()
        primary.destroy()


@pg
def test_init_on_s3_prefix(setup: Setup, s3_server) -> None:  # type: ignore[no-untyped-def]
    """S3 settings given by the environment are written into the configuration skeleton."""
    url = s3_server.url()
    env = {"WALKEEPER_S3_ENDPOINT_URL": s3_server.endpoint, "WALKEEPER_S3_REGION": "us-east-1",
           "WALKEEPER_S3_ADDRESSING_STYLE": "path"}
    conf, key = setup.work / "s3.toml", setup.work / "s3.key"
    out = ok(wk("--repo", url, "init", "--generate-key", key, "--write-config", conf, env=env, as_postgres=True))
    assert f"initialised repository {url}" in out and "the first wal-push records it" in out
    bucket, prefix = url[len("s3://"):].split("/", 1)
    meta = json.loads(s3_server.client().get_object(Bucket=bucket, Key=f"{prefix}/walkeeper.json")["Body"].read())
    assert meta["system_identifier"] is None and meta["key_id"]
    assert "nothing to do" in ok(wk("--config", conf, "init", as_postgres=True))  # no env: the file says it all
    fetch = wk("--config", conf, "wal-fetch", "000000010000000000000001", setup.work / "x", as_postgres=True)
    assert fetch.returncode == 1 and fetch.stderr == ""

    s3_server.client().put_object(Bucket=bucket, Key="not-walkeeper/data.csv", Body=b"1,2\n")
    proc = wk("--config", conf, "--repo", f"s3://{bucket}/not-walkeeper", "init", as_postgres=True)
    one_line_error(proc, 15, "holds no walkeeper.json")


@pg
def test_init_on_ssh_directory(setup: Setup, ssh_server) -> None:  # type: ignore[no-untyped-def]
    url = ssh_server.url()
    setup.repo_url, setup.extra_config = url, ssh_server.config_toml()
    setup.write_config()
    out = ok(setup.wk("init"))
    assert "initialised repository" in out
    remote = Path(url.split(f":{ssh_server.forwarder.port}", 1)[1])
    owned_by_postgres(remote, remote / "walkeeper.json")
    assert stat.S_IMODE(remote.stat().st_mode) == 0o700
    assert stat.S_IMODE((remote / "walkeeper.json").stat().st_mode) == 0o600
    assert "nothing to do" in ok(setup.wk("init"))
    fetch = setup.wk("wal-fetch", "00000002.history", setup.work / "x")
    assert fetch.returncode == 1 and fetch.stderr == ""
    # A repository that was never initialised stays an error: a typo must not look like an empty archive.
    proc = setup.wk("--repo", url + "-typo", "wal-fetch", "000000010000000000000001", setup.work / "x")
    assert proc.returncode == 209 and "no walkeeper repository" in proc.stderr


def test_first_push_completes_an_init_without_a_cluster(setup: Setup) -> None:
    """init records no cluster; the first segment then records system and size (1 MiB: not the default)."""
    from tests.contract.test_wal_contract import fetch, push
    from tests.helpers.walfactory import make_segment

    ok(setup.wk("init"))
    meta = json.loads((setup.repo / "walkeeper.json").read_text())
    assert meta["system_identifier"] is None and meta["wal_segment_size"] is None and meta["key_id"]
    proc, _ = fetch(setup, "000000010000000000000003")
    assert proc.returncode == 1 and proc.stderr == ""
    name, data = make_segment(1, 3, sysid=7300000000000000042)
    assert push(setup, name, data).returncode == 0
    meta = json.loads((setup.repo / "walkeeper.json").read_text())
    assert meta["system_identifier"] == "7300000000000000042" and meta["wal_segment_size"] == 1 << 20
    proc, dest = fetch(setup, name)
    assert proc.returncode == 0 and dest.read_bytes() == data
    other, other_data = make_segment(1, 4, sysid=7300000000000000043)
    proc = push(setup, other, other_data)
    assert proc.returncode == 7 and "belongs to system 7300000000000000042" in proc.stderr


def test_relative_paths_are_written_absolute(setup: Setup) -> None:
    """archive_command runs in the data directory: a relative repo or key in the skeleton would point elsewhere."""
    out = ok(wk("--repo", "rel/repo", "init", "--generate-key", "rel.key", "--write-config", "rel.toml",
                as_postgres=True, cwd=setup.work))
    written = load_config(str(setup.work / "rel.toml"), env={})
    assert written.repo == str(setup.work / "rel" / "repo")
    assert written.encryption.key_file == str(setup.work / "rel.key")
    assert f"--config {setup.work / 'rel.toml'} wal-push %p" in out
    proc = wk("--config", setup.work / "rel.toml", "wal-fetch", "000000010000000000000001", "x", as_postgres=True,
              cwd="/")
    assert proc.returncode == 1 and proc.stderr == ""

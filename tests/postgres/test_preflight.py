"""`walkeeper check --archive`: the preflight against a real server, and its pure parts as tables."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import give_to_pg, walkeeper_cmd
from tests.postgres.test_pitr import conn, start_primary
from walkeeper.commands.check import Archiver, archived, failure_reason, parse_archive_command, same_repository

WK = "/opt/venv/bin/walkeeper"


@pytest.mark.parametrize(("command", "kind", "config", "repo"), [
    ("", "empty", None, None),
    ("   ", "empty", None, None),
    (f"{WK} wal-push %p", "walkeeper", None, None),
    ("walkeeper wal-push %p", "walkeeper", None, None),
    (f"{WK} --config /etc/walkeeper/a.toml wal-push %p", "walkeeper", "/etc/walkeeper/a.toml", None),
    (f"{WK} --config=/etc/a.toml -v wal-push %p", "walkeeper", "/etc/a.toml", None),
    (f"{WK} --repo s3://b/p wal-push %p", "walkeeper", None, "s3://b/p"),
    (f"WALKEEPER_CONFIG=/etc/b.toml {WK} wal-push %p", "walkeeper", "/etc/b.toml", None),
    (f"env WALKEEPER_REPO=/srv/r {WK} wal-push %p", "walkeeper", None, "/srv/r"),
    ("/usr/bin/python3 -m walkeeper --config '/etc/c d.toml' wal-push %p", "walkeeper", "/etc/c d.toml", None),
    (f"{WK} wal-push %f", "walkeeper-other", None, None),
    (f"{WK} wal-fetch %f %p", "walkeeper-other", None, None),
    ("cp %p /mnt/archive/%f", "other", None, None),
    ("pgbackrest --stanza=main archive-push %p", "other", None, None),
    ("test ! -f /a/%f && cp %p /a/%f", "other", None, None),
    ("walkeeper 'wal-push %p", "other", None, None),  # unbalanced quote: not something to read
])
def test_parse_archive_command(command: str, kind: str, config: str | None, repo: str | None) -> None:
    parsed = parse_archive_command(command)
    assert (parsed.kind, parsed.config_path, parsed.repo) == (kind, config, repo)


@pytest.mark.parametrize(("a", "b", "same"), [
    ("/srv/repo", "file:///srv/repo", True),
    ("/srv/repo/", "/srv/repo", True),
    ("/srv/repo/../repo", "/srv/repo", True),
    ("/srv/repo", "/srv/other", False),
    ("s3://bucket/prefix/", "s3://bucket/prefix", True),
    ("s3://bucket/prefix", "s3://bucket/other", False),
    ("ssh://u@h:22/srv/r", "ssh://u@h:22/srv/r", True),
])
def test_same_repository(a: str, b: str, same: bool) -> None:
    assert same_repository(a, b) is same


def archiver(last: str | None = None, failed: str | None = None, failures: int = 0) -> Archiver:
    return Archiver(5, last, 1000.0 if last else None, failures, failed, 2000.0 if failed else None, 2001.0)


@pytest.mark.parametrize(("last", "segment", "done"), [
    (None, "000000010000000000000005", False),
    ("000000010000000000000004", "000000010000000000000005", False),
    ("000000010000000000000005", "000000010000000000000005", True),
    ("000000010000000000000006", "000000010000000000000005", True),
    ("00000002.history", "000000010000000000000005", False),
    ("000000010000000000000005.partial", "000000010000000000000005", True),
])
def test_archived(last: str | None, segment: str, done: bool) -> None:
    assert archived(archiver(last), segment) is done


@pytest.mark.parametrize(("own", "says"), [
    ({"failures": 3, "last_failure": 2000.5, "last_error": "cannot store X: Permission denied"},
     "; walkeeper wal-push said: cannot store X: Permission denied"),
    ({"failures": 3, "last_failure": 10.0, "last_error": "an old failure"}, "; walkeeper recorded no failure here"),
    (None, "; walkeeper recorded no failure here since the check began"),
])
def test_failure_reason(own: dict | None, says: str) -> None:
    text = failure_reason(archiver(failed="000000010000000000000007", failures=3), own, since=1999.0)
    assert text.startswith("archive_command failed for 000000010000000000000007 (last at "
                           "1970-01-01T00:33:20.000000+00:00, 3 failures since the statistics were reset)")
    assert says in text and "an old failure" not in text


def check(setup: Setup, primary_conn: list[str], *extra: str) -> tuple[int, str]:
    proc = setup.wk("check", "--archive", *primary_conn, *extra, timeout=120)
    assert proc.stderr == "", proc.stderr
    assert len(proc.stdout.splitlines()) == 1 or "--json" in extra, proc.stdout
    return proc.returncode, proc.stdout


@pytest.mark.postgres
def test_check_archive_on_a_real_server(setup: Setup) -> None:
    state = setup.work / "notify-state.json"
    setup.write_config(setup.config.read_text() + f'[notify]\nstate_file = "{state}"\n')
    primary = start_primary(setup)
    try:
        c = conn(primary)
        # Archiving through walkeeper into this repository: OK, with the time it took.
        code, line = check(setup, c)
        assert code == 0, line
        match = re.match(r"WALKEEPER OK - ([0-9A-F]{24}) archived and read back from file://\S+ in ([0-9.]+)s", line)
        assert match, line
        assert float(match.group(2)) < 30
        assert (setup.repo / "wal" / match.group(1)[:8] / match.group(1)).exists()
        code, out = check(setup, c, "--json")
        doc = json.loads(out)
        assert code == 0 and doc["status"] == "OK" and doc["seconds"] > 0 and doc["segment"] > match.group(1)
        assert doc["archiver"]["last_archived_time"].endswith("+00:00")

        # archive_command points at another repository (through another config file): CRITICAL, names both.
        other = setup.work / "other.toml"
        other.write_text(setup.config.read_text().replace(str(setup.repo), str(setup.work / "elsewhere")))
        give_to_pg(other)
        primary.psql(f"alter system set archive_command = '{walkeeper_cmd(other)} wal-push %p'")
        primary.psql("select pg_reload_conf()")
        time.sleep(0.3)
        code, line = check(setup, c)
        assert code == 2, line
        assert line.startswith("WALKEEPER CRITICAL - archive_command stores into ")
        assert str(setup.work / "elsewhere") in line and f"this check reads {setup.repo}" in line

        # Another program altogether.
        primary.psql("alter system set archive_command = '/bin/true'")
        primary.psql("select pg_reload_conf()")
        time.sleep(0.3)
        code, line = check(setup, c)
        assert code == 2 and "archive_command runs another program (/bin/true)" in line, line

        # Archiving fails (the repository's WAL directory is not writable): CRITICAL, naming the
        # segment PostgreSQL could not archive and walkeeper's own reason.
        primary.psql("alter system reset archive_command")
        primary.psql("select pg_reload_conf()")
        time.sleep(0.3)
        wal_dir = next((setup.repo / "wal").iterdir())
        wal_dir.chmod(0o500)
        try:
            began = time.time()
            code, line = check(setup, c, "--timeout", "40")
            assert code == 2, line
            failed = primary.psql("select last_failed_wal from pg_stat_archiver")
            assert f"archive_command failed for {failed} (last at " in line, line
            assert "walkeeper wal-push said: " in line and "ermission denied" in line, line
            assert time.time() - began < 30  # three failed attempts decide, not the timeout
        finally:
            wal_dir.chmod(0o700)

        # archive_mode off: CRITICAL before anything is switched.
        primary.stop()
        primary.configure({"archive_mode": "off"})
        primary.start()
        code, line = check(setup, c)
        assert code == 2 and line.startswith("WALKEEPER CRITICAL - archive_mode is off"), line
    finally:
        primary.destroy()


@pytest.mark.postgres
def test_check_archive_unreachable_server_is_unknown(setup: Setup, tmp_path: Path) -> None:
    code, line = check(setup, ["-h", "/nonexistent-socket-dir", "-p", "5"])
    assert code == 3 and line.startswith("WALKEEPER UNKNOWN - psql failed: "), line


@pytest.mark.postgres
def test_status_and_check_with_connection_flags(setup: Setup) -> None:
    """status/check take -h/-p/-U/-d like backup; the server's side shows even without a readable repository."""
    primary = start_primary(setup)
    try:
        c = conn(primary)
        primary.wait_archived(primary.switch_wal())
        proc = setup.wk("status", *c)
        assert proc.returncode == 0 and "  server: current WAL " in proc.stdout, proc.stdout + proc.stderr
        doc = json.loads(setup.wk("status", "--json", *c).stdout)
        assert doc["cluster"]["archived_count"] >= 1

        # The repository cannot be read: the server's view is still printed, then the one error line.
        env = {"WALKEEPER_REPO": str(setup.work / "missing-repo")}
        proc = setup.wk("status", *c, env=env)
        assert proc.returncode == 9, proc.stderr
        assert "cannot be read (no walkeeper repository at" in proc.stdout and "  server: current WAL" in proc.stdout
        assert proc.stderr.startswith("walkeeper status: error: no walkeeper repository") and \
            len(proc.stderr.splitlines()) == 1, proc.stderr
        doc = json.loads(setup.wk("status", "--json", *c, env=env).stdout)
        assert "error" in doc and doc["cluster"]["last_archived_time"].endswith("+00:00")

        line = setup.wk("check", "--cluster", *c).stdout
        assert line.startswith("WALKEEPER OK - ") and "archive lag 0 segments" in line, line
    finally:
        primary.destroy()
    # psql cannot connect: one line, said once.
    proc = setup.wk("check", "--cluster", "-h", str(setup.work / "no-socket"), "-p", "5")
    assert proc.returncode == 1 and len(proc.stdout.splitlines()) == 1, proc.stdout
    assert proc.stdout.count("cannot read the server's archiver status") == 1, proc.stdout
    assert "psql failed: connection to server on socket" in proc.stdout and "psql: error" not in proc.stdout


@pytest.mark.parametrize("extra", [["--cluster"], ["--max-wal-age", "1h"], ["--prometheus", "/tmp/x.prom"]])
def test_check_archive_alone(setup: Setup, extra: list[str]) -> None:
    proc = setup.wk("check", "--archive", *extra)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stdout.startswith("WALKEEPER UNKNOWN - bad command line: --archive runs the preflight alone")

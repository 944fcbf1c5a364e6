"""`walkeeper check --archive`: the preflight against a real server (pure parts: unit/test_check_decisions.py)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import give_to_pg, walkeeper_cmd
from tests.postgres.test_pitr import conn, start_primary


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

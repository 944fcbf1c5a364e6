"""Wording shared by every command, as tables: plurals, time targets, one-line tool errors, --json times."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from walkeeper.cli.context import CommandFormatter
from walkeeper.core.errors import ConfigError
from walkeeper.core.units import iso_utc, plural
from walkeeper.postgres.client import one_line
from walkeeper.repo.pitr_target import parse_target_time


@pytest.mark.parametrize(("n", "word", "many", "text"), [
    (0, "segment", None, "0 segments"),
    (1, "segment", None, "1 segment"),
    (2, "segment", None, "2 segments"),
    (1, "backup", None, "1 backup"),
    (7, "backup", None, "7 backups"),
    (1, "recovery_target* line", None, "1 recovery_target* line"),
    (3, "entry", "entries", "3 entries"),
    (1, "entry", "entries", "1 entry"),
])
def test_plural(n: int, word: str, many: str | None, text: str) -> None:
    assert plural(n, word, many) == text


@pytest.mark.parametrize("zone", ["CET", "EST", "MET", "CEST", "PST", "EST5EDT", "WET", "HST"])
def test_abbreviations_are_refused_as_ambiguous(zone: str) -> None:
    """CET, EST, MET are also zoneinfo keys: whoever writes them means the abbreviation, so refuse."""
    with pytest.raises(ConfigError, match=f"{zone} is an ambiguous abbreviation"):
        parse_target_time(f"2026-01-31 14:05:00 {zone}")


@pytest.mark.parametrize(("text", "utc"), [
    ("2026-01-31 14:05:00 Europe/Berlin", datetime(2026, 1, 31, 13, 5, tzinfo=UTC)),
    ("2026-07-31 14:05:00 Europe/Berlin", datetime(2026, 7, 31, 12, 5, tzinfo=UTC)),
    ("2026-01-31 14:05:00 America/Argentina/Buenos_Aires", datetime(2026, 1, 31, 17, 5, tzinfo=UTC)),
    ("2026-01-31 14:05:00 UTC", datetime(2026, 1, 31, 14, 5, tzinfo=UTC)),
    ("2026-01-31 14:05:00Z", datetime(2026, 1, 31, 14, 5, tzinfo=UTC)),
    ("2026-01-31 14:05:00+01", datetime(2026, 1, 31, 13, 5, tzinfo=UTC)),
    ("2026-01-31T14:05:00.5-05:30", datetime(2026, 1, 31, 19, 35, 0, 500000, tzinfo=UTC)),
    ("2026-01-31 14:05:00 Japan", datetime(2026, 1, 31, 5, 5, tzinfo=UTC)),  # a zone key, not an abbreviation
])
def test_time_targets_accepted(text: str, utc: datetime) -> None:
    assert parse_target_time(text).astimezone(UTC) == utc


def test_time_target_without_zone_uses_the_local_zone() -> None:
    local = timezone(timedelta(hours=2))
    assert parse_target_time("2026-01-31 14:05", local_zone=local) == datetime(2026, 1, 31, 12, 5, tzinfo=UTC)


@pytest.mark.parametrize(("text", "message"), [
    ("yesterday", "not a timestamp walkeeper can check"),
    ("2026-01-31 14:05:00 Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ("2026-01-31 14:05:00 Atlantis", "unknown time zone 'Atlantis'"),
    ("2026-01-31 14:05:00+16", "out of range"),
    ("2026-02-30 14:05:00", "day is out of range"),
])
def test_time_targets_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_target_time(text)


@pytest.mark.parametrize(("stderr", "line"), [
    ('psql: error: connection to server on socket "/x/.s.PGSQL.5" failed: No such file or directory\n'
     '\tIs the server running locally and accepting connections on that socket?\n',
     'connection to server on socket "/x/.s.PGSQL.5" failed: No such file or directory; '
     'Is the server running locally and accepting connections on that socket?'),
    ("ERROR:  permission denied for function pg_switch_wal\n", "ERROR:  permission denied for function pg_switch_wal"),
    ("", ""),
])
def test_tool_errors_become_one_line(stderr: str, line: str) -> None:
    assert one_line(stderr) == line


@pytest.mark.parametrize(("epoch", "text"), [
    (0.0, "1970-01-01T00:00:00.000000+00:00"),
    (1790000000.25, "2026-09-21T14:13:20.250000+00:00"),
    (None, None),
])
def test_json_times_are_iso_utc(epoch: float | None, text: str | None) -> None:
    assert iso_utc(epoch) == text


@pytest.mark.parametrize(("args", "prefix"), [
    (["backups", "show", "latest"], "walkeeper backups show: error: "),
    (["backups"], "walkeeper backups: error: "),
    (["wal-list"], "walkeeper wal-list: error: "),
    (["restore-points", "--json"], "walkeeper restore-points: error: "),
    (["pitr", "--pgdata", "/nonexistent/x", "--target-time", "2026-01-01 10:00 CET"], "walkeeper pitr: error: "),
    (["status", "--no-cluster"], "walkeeper status: error: "),
])
def test_error_lines_name_the_whole_command(tmp_path: Path, args: list[str], prefix: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WALKEEPER_", "PG"))}
    proc = subprocess.run([sys.executable, "-m", "walkeeper", "--repo", str(tmp_path / "none"), *args],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr


@pytest.mark.parametrize(("level", "text"), [
    (logging.WARNING, "walkeeper pitr: warning: careful"),
    (logging.ERROR, "walkeeper pitr: error: careful"),
    (logging.INFO, "walkeeper pitr: careful"),
])
def test_log_lines_name_the_whole_command(level: int, text: str) -> None:
    formatter = CommandFormatter("%(message)s")
    old = CommandFormatter.command
    CommandFormatter.command = "walkeeper pitr"
    try:
        record = logging.LogRecord("walkeeper", level, __file__, 1, "careful", None, None)
        assert formatter.format(record) == text
    finally:
        CommandFormatter.command = old

"""The `check` command's decisions as tables: the plugin verdict over what was read (repo/health.py judge:
thresholds, gaps, the server's archiver, clocks) and the pure parts of ``check --archive`` (commands/check.py).
No root, no PostgreSQL, no repository.
"""

from __future__ import annotations

from typing import Any

import pytest

from walkeeper.commands.check import Archiver, archived, failure_reason, parse_archive_command, same_repository
from walkeeper.core.errors import ConfigError
from walkeeper.repo.health import CRITICAL, OK, UNKNOWN, WARNING, CheckResult, Thresholds, judge, parse_duration

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




# -- the plugin verdict (repo/health.py judge) ---------------------------------------------------

H = 3600.0


def doc(*, wal_age: float | None = 60.0, backup_age: float | None = H, gaps: int = 0,
        dumps: list[dict[str, Any]] | None = None, tests: dict[str, Any] | None = None) -> dict[str, Any]:
    """The repository_status fields judge reads."""
    return {
        "last_wal_age_seconds": wal_age, "gaps": gaps, "system_identifier": "7000",
        "newest_segment": {"name": "000000010000000000000009"} if wal_age is not None else None,
        "backups": [] if backup_age is None else [{"id": "20260301T120000Z", "age_seconds": backup_age,
                                                   "clock_skew": None}],
        "dumps": dumps or [], "dump_count": len(dumps or []), "total_bytes": 1024,
        "restore_tests": tests or {},
    }


def cluster(*, failing: bool = False, system: str = "7000") -> dict[str, Any]:
    return {"failing": failing, "failed_count": 3 if failing else 0, "last_failed_wal": "000000010000000000000009",
            "system_identifier": system, "archive_lag_segments": None}


def verdict(repo: dict[str, Any], thresholds: Thresholds, server: dict[str, Any] | None = None,
            cluster_error: str | None = None) -> tuple[int, list[str]]:
    result = judge(CheckResult(OK, repo=repo, cluster=server), thresholds, cluster_error)
    return result.status, result.messages


WAL_1H = Thresholds(max_wal_age=H)
WAL_WARN_1H_CRIT_3H = Thresholds(warn_wal_age=H, max_wal_age=3 * H)
BACKUP_1D = Thresholds(max_backup_age=24 * H)
FAILED_TEST = {"last": {"id": "t1", "ok": False, "reason": "recovery stopped"}, "last_success": None}


@pytest.mark.parametrize(("case", "repo", "thresholds", "server", "error", "status", "messages"), [
    ("fresh, no thresholds", doc(), Thresholds(), None, None, OK, []),
    ("WAL fresh under the critical age", doc(wal_age=60), WAL_1H, None, None, OK, []),
    ("WAL exactly at the age: not above", doc(wal_age=H), WAL_1H, None, None, OK, []),
    ("WAL above the critical age", doc(wal_age=2 * H), WAL_1H, None, None, CRITICAL,
     ["last WAL archived 2.0h ago (critical above 1.0h)"]),
    ("WAL between warning and critical", doc(wal_age=2 * H), WAL_WARN_1H_CRIT_3H, None, None, WARNING,
     ["last WAL archived 2.0h ago (warning above 1.0h)"]),
    ("no WAL at all with a threshold", doc(wal_age=None), WAL_1H, None, None, CRITICAL,
     ["no WAL archived at all"]),
    ("no WAL at all, warning only", doc(wal_age=None), Thresholds(warn_wal_age=H), None, None, WARNING,
     ["no WAL archived at all"]),
    ("no backup, no threshold", doc(backup_age=None), Thresholds(), None, None, OK, []),
    ("no backup with a threshold", doc(backup_age=None), BACKUP_1D, None, None, CRITICAL, ["no backup at all"]),
    ("backup too old", doc(backup_age=36 * H), BACKUP_1D, None, None, CRITICAL,
     ["last backup 1.5d ago (critical above 1.0d)"]),
    ("a warning, then a critical: the worst wins, both said", doc(wal_age=2 * H, backup_age=36 * H),
     Thresholds(warn_wal_age=H, max_backup_age=24 * H), None, None, CRITICAL,
     ["last WAL archived 2.0h ago (warning above 1.0h)", "last backup 1.5d ago (critical above 1.0d)"]),
    ("dump threshold without dumps", doc(), Thresholds(max_dump_age=24 * H), None, None, CRITICAL,
     ["no dump at all"]),
    ("one database's dump too old", doc(dumps=[{"database": "app", "age_seconds": 2 * H},
                                               {"database": "crm", "age_seconds": 30 * H}]),
     Thresholds(warn_dump_age=24 * H), None, None, WARNING, ["last dump of crm 1.2d ago (warning above 1.0d)"]),
    ("the last restore test failed", doc(tests=FAILED_TEST), Thresholds(warn_restore_test_age=48 * H), None, None,
     WARNING, ["no successful restore test at all", "the last restore test t1 failed: recovery stopped"]),
    ("a failed restore test without a threshold is not judged", doc(tests=FAILED_TEST), Thresholds(), None, None,
     OK, []),
    ("gaps", doc(gaps=2), Thresholds(), None, None, WARNING, ["2 gaps in the WAL archive (run walkeeper verify)"]),
    ("the server's archiver is failing", doc(), Thresholds(), cluster(failing=True), None, WARNING,
     ["archive_command is failing on the server (3 failures, last 000000010000000000000009)"]),
    ("the server is another system", doc(), Thresholds(), cluster(system="8000"), None, CRITICAL,
     ["the server is system 8000, the repository belongs to 7000"]),
    ("the server cannot be read", doc(), Thresholds(), None, "cannot connect to the server", WARNING,
     ["cannot connect to the server"]),
    ("a healthy server", doc(), Thresholds(), cluster(), None, OK, []),
])
def test_judge(case: str, repo: dict[str, Any], thresholds: Thresholds, server: dict[str, Any] | None,
               error: str | None, status: int, messages: list[str]) -> None:
    assert verdict(repo, thresholds, server, error) == (status, messages)


def test_judge_line_and_perfdata() -> None:
    result = judge(CheckResult(OK, repo=doc(wal_age=2 * H, backup_age=H)), WAL_WARN_1H_CRIT_3H)
    assert result.line() == ("WALKEEPER WARNING - last WAL archived 2.0h ago (warning above 1.0h); "
                             "last WAL 2.0h ago (000000010000000000000009); last backup 20260301T120000Z 1.0h ago; "
                             "1 backup, 1.0 KiB | wal_age=7200s;3600;10800 backup_age=3600s;; "
                             "repository_bytes=1024B;; backups=1")


def test_unknown_is_never_raised_to_another_state() -> None:
    result = CheckResult(UNKNOWN)
    result.raise_to(CRITICAL, "also this")
    assert (result.status, result.messages) == (UNKNOWN, ["also this"])


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("15 min", 900.0), ("6h", 21600.0), ("2d", 172800.0),
    ("1w", 604800.0), ("1.5h", 5400.0), ("3 weeks", 1814400.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "5y", "1h30m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration(text)

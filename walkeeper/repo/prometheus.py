"""The node-exporter textfile of a check result (exposition format 0.0.4), which the CLI writes durably."""

from __future__ import annotations

import time
from collections.abc import Callable

from walkeeper.repo.copylisting import LagFigure
from walkeeper.repo.health import CheckResult
from walkeeper.repo.lag import lag_metric


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(result: CheckResult, repo_url: str, *, now: float | None = None,
                    several: list[tuple[str, str, CheckResult]] | None = None,
                    copy_lags: list[LagFigure] | None = None) -> str:
    """The node-exporter textfile (exposition format 0.0.4).

    With several repositories (``several``: (name, URL, its own result)) every per-repository sample also
    carries ``repository="NAME"`` and each metric is described once; ``walkeeper_check_status`` without a
    repository label is the overall verdict (``result``). ``copy_lags``: walkeeper_copy_lag_seconds{from,to}.
    """
    now = time.time() if now is None else now
    families: dict[str, tuple[str, str, list[str]]] = {}
    base = ""

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines = families.setdefault(name, (kind, help_text, []))[2]
        for labels, value in samples:
            lines.append(f"{name}{{{base}{labels}}} {value:.17g}" if isinstance(value, float)
                         else f"{name}{{{base}{labels}}} {value}")

    for name, url, each in several or [("", repo_url, result)]:
        base = f'repo="{_label(url)}"' + (f',repository="{_label(name)}"' if name else "")
        _samples(metric, each, now)
    if several:
        base = f'repo="{_label(repo_url)}"'
        metric("walkeeper_check_overall_status", "gauge", "walkeeper check over every repository: 0 OK, "
               "1 WARNING, 2 CRITICAL, 3 UNKNOWN.", [("", result.status)])
    for figure in copy_lags or []:
        base = f'from="{_label(figure.source)}",to="{_label(figure.destination)}"'
        metric("walkeeper_copy_lag_seconds", "gauge", "Seconds the destination has been behind the source "
               "(the age of the oldest WAL segment or backup it lacks; 0 when it holds the newest of both).",
               [("", float(figure.lag.seconds))])
        metric("walkeeper_copy_wal_behind_segments", "gauge", "Source WAL segments newer than the destination's "
               "newest.", [("", figure.lag.wal_behind)])
        metric("walkeeper_copy_backups_behind", "gauge", "Source backups newer than the destination's newest "
               "that it lacks.", [("", len(figure.lag.backups_behind))])
    out: list[str] = []
    for name, (kind, help_text, lines) in families.items():
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines]
    if result.lags:  # wal-push's backlog per repository, this host's (repo/lag.py)
        out += lag_metric(result.lags)
    return "\n".join(out) + "\n"


def _samples(metric: Callable[[str, str, str, list[tuple[str, float]]], None], result: CheckResult,
             now: float) -> None:
    """One repository's metrics (and the server's and this host's, where ``result`` read them)."""
    doc = result.repo
    metric("walkeeper_up", "gauge", "1 if the repository could be read.", [("", 1 if doc else 0)])
    metric("walkeeper_check_status", "gauge", "walkeeper check result: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
           [("", result.status)])
    metric("walkeeper_check_timestamp_seconds", "gauge", "When this file was written.", [("", float(now))])
    if doc:
        if doc["last_wal_arrival"] is not None:
            metric("walkeeper_last_archived_timestamp_seconds", "gauge",
                   "When the newest WAL file reached the repository.", [("", float(doc["last_wal_arrival"]))])
            metric("walkeeper_last_archived_age_seconds", "gauge", "Seconds since the newest WAL file arrived.",
                   [("", float(doc["last_wal_age_seconds"]))])
        if doc["backups"]:
            last = doc["backups"][-1]
            metric("walkeeper_last_backup_timestamp_seconds", "gauge", "When the newest complete backup ended.",
                   [("", float(last["stop_time"]))])
            metric("walkeeper_last_backup_age_seconds", "gauge", "Seconds since the newest backup ended.",
                   [("", float(last["age_seconds"]))])
        metric("walkeeper_backups", "gauge", "Complete backups in the repository.", [("", len(doc["backups"]))])
        metric("walkeeper_repository_bytes", "gauge", "Bytes stored in the repository.", [("", doc["total_bytes"])])
        metric("walkeeper_wal_segments", "gauge", "Archived WAL segments per timeline.",
               [(f',timeline="{t["timeline"]}"', t["segments"]) for t in doc["timelines"]])
        if doc["dumps"]:
            metric("walkeeper_last_dump_timestamp_seconds", "gauge",
                   "When the newest complete dump of each database ended.",
                   [(f',database="{_label(d["database"])}"', float(d["stop_time"])) for d in doc["dumps"]])
            metric("walkeeper_last_dump_age_seconds", "gauge", "Seconds since the newest dump of each database ended.",
                   [(f',database="{_label(d["database"])}"', float(d["age_seconds"])) for d in doc["dumps"]])
        metric("walkeeper_dumps", "gauge", "Complete logical dumps in the repository.", [("", doc["dump_count"])])
        tests = doc.get("restore_tests") or {}
        if tests.get("last_success"):
            metric("walkeeper_restore_test_last_success_timestamp_seconds", "gauge",
                   "When the last successful walkeeper restore-test finished.",
                   [("", float(tests["last_success"]["finished"]))])
        if tests.get("last"):
            metric("walkeeper_restore_test_duration_seconds", "gauge",
                   "Total seconds of the last restore test (restore + recovery: the measured recovery time).",
                   [("", float(tests["last"]["total_seconds"]))])
            metric("walkeeper_restore_test_ok", "gauge", "1 if the last restore test passed.",
                   [("", 1 if tests["last"]["ok"] else 0)])
        receive = doc.get("receive")
        if receive:
            metric("walkeeper_receive_last_timestamp_seconds", "gauge",
                   "When the repository last held everything wal-receive had received.",
                   [("", float(receive["updated"]))])
            metric("walkeeper_receive_lag_seconds", "gauge",
                   "Seconds since the repository last held everything wal-receive had received.",
                   [("", float(receive["lag_seconds"]))])
        metric("walkeeper_wal_gaps", "gauge", "Holes in the archived WAL sequences (walkeeper verify explains).",
               [("", doc["gaps"])])
    metric("walkeeper_failures_total", "counter",
           "Failed walkeeper commands seen by [notify] on this host, per event.",
           [(f',event="{_label(event)}"', count) for event, count in sorted(result.failures.items())])
    if result.cluster:
        c = result.cluster
        metric("walkeeper_archiver_failed_total", "counter", "pg_stat_archiver.failed_count of the server.",
               [("", c["failed_count"])])
        metric("walkeeper_archiver_failing", "gauge", "1 if the server's last archive attempt failed.",
               [("", 1 if c["failing"] else 0)])
        if c["archive_lag_segments"] is not None:
            metric("walkeeper_archive_lag_segments", "gauge", "Completed segments not yet archived.",
                   [("", c["archive_lag_segments"])])
        if c["archive_lag_seconds"] is not None:
            metric("walkeeper_archive_lag_seconds", "gauge", "Seconds since the last archived segment "
                   "while segments wait.", [("", float(c["archive_lag_seconds"]))])

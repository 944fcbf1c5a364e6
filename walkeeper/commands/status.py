"""`walkeeper status` and `walkeeper check`: what the repository holds, how fresh it is, and
(when a connection is possible through libpq's environment) what the server's archiver says.

``check`` speaks the monitoring-plugin protocol (Nagios, Icinga, Sensu...): exit 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN and one summary line with performance data. ``prometheus_text`` is the
node-exporter textfile, which the CLI writes durably (walkeeper.core.durable).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

from walkeeper.core.chronology import clock_off, describe_skew, human_span
from walkeeper.core.config import Config
from walkeeper.core.errors import ConfigError, PostgresError
from walkeeper.core.units import human_bytes, iso_utc, plural
from walkeeper.core.wal import parse_lsn, parse_wal_name, segment_of_lsn
from walkeeper.postgres.client import ConnOptions
from walkeeper.repo.inventory import Inventory, read_inventory
from walkeeper.repo.repository import Repository

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|m|min|mins|h|hr|hrs|d|day|days|w|weeks?)?\s*$", re.I)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90' or '90s', '15m', '6h', '2d', '1w' -> seconds."""
    match = _DURATION.match(text or "")
    if not match:
        raise ConfigError(f"not a duration: {text!r} (expected e.g. 90s, 15m, 6h, 2d)")
    unit = (match.group(2) or "s").lower()[0]
    return float(match.group(1)) * _UNITS[unit]


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return human_span(max(0.0, seconds))


def human_ago(seconds: float) -> str:
    """'2.0h ago', or '30.0d in the future' for a moment a wrong clock put ahead of this host's."""
    return f"{human_span(seconds)} in the future" if seconds < 0 else f"{human_span(seconds)} ago"


# -- repository ------------------------------------------------------------------------------------

def _listing_gaps(inv: Inventory, tli: int) -> list[tuple[str, str]]:
    segnos = sorted(inv.segments.get(tli, {}))
    gaps = []
    for prev, cur in itertools.pairwise(segnos):
        if cur > prev + 1:
            gaps.append((inv.name_of(tli, prev + 1), inv.name_of(tli, cur - 1)))
    return gaps


def _leftovers(inv: Inventory, now: float) -> dict[str, Any]:
    """Space held by temp objects and uploads of dead writers (expire removes them), and empty directories."""
    dead = inv.dead_leftovers(now)
    objects = [i for i in dead if i.kind != "dir"]
    return {"objects": len(objects), "bytes": sum(i.size for i in objects),
            "empty_directories": sum(i.kind == "dir" for i in dead),
            "items": [{"path": i.path, "kind": i.kind, "size": i.size, "mtime": i.mtime} for i in dead]}


def repository_status(repo: Repository, *, now: float | None = None) -> dict[str, Any]:
    """A summary of the repository: backups, WAL per timeline, size, freshness."""
    now = time.time() if now is None else now
    meta = repo.require_meta()
    inv = read_inventory(repo, histories=False, leftovers=True)
    timelines = []
    for tli in inv.timelines():
        segs = inv.segments.get(tli, {})
        stored = sum(o.size for o in inv.wal if o.name.timeline == tli)
        timelines.append({
            "timeline": tli, "segments": len(segs),
            "first": segs[min(segs)].name.name if segs else None,
            "last": segs[max(segs)].name.name if segs else None,
            "gaps": [{"from": a, "to": b} for a, b in _listing_gaps(inv, tli)],
            "partial": sorted(o.name.name for o in inv.partials.get(tli, [])),
            "history": tli in inv.history_files, "stored_bytes": stored,
        })
    newest = inv.newest_segment()
    last_arrival = inv.newest_wal_mtime()
    backups = [{"id": b.id, "timeline": b.timeline, "start_wal": b.start_wal, "stop_wal": b.stop_wal,
                "stop_time": b.stop_time, "age_seconds": now - b.stop_time, "stored_bytes": b.stored_size,
                "wal_mode": b.wal_mode, "clock_skew": b.clock_skew} for b in inv.backups]
    oldest = inv.backups[0] if inv.backups else None
    from datetime import datetime

    from walkeeper.repo.catalog import Catalog

    catalog = Catalog(repo)
    dumps = []
    for database, dump in sorted(catalog.newest_dumps().items()):
        stop = datetime.fromisoformat(dump.stop_time).timestamp()
        dumps.append({"database": database, "id": dump.id, "stop_time": stop, "age_seconds": now - stop,
                      "stored_bytes": dump.stored_size})
    return {
        "repository": repo.storage.url,
        "system_identifier": meta.system_identifier,
        "wal_segment_size": inv.segment_size,
        "total_bytes": inv.total_bytes,
        "wal_bytes": sum(o.size for o in inv.wal),
        "backups": backups,
        "incomplete_backups": inv.incomplete_backups,
        "running_backups": [{"id": w.backup_id, "writer": w.describe(),
                             "in_flight_bytes": sum(i.size for i in inv.leftovers
                                                    if i.directory == f"backups/{w.backup_id}")}
                            for w in inv.running_backups],
        "leftovers": _leftovers(inv, now),
        "timelines": timelines,
        "gaps": sum(len(t["gaps"]) for t in timelines),
        "oldest_recovery_point": None if oldest is None else {
            "backup": oldest.id, "lsn": f"{oldest.stop_lsn >> 32:X}/{oldest.stop_lsn & 0xFFFFFFFF:X}",
            "time": oldest.stop_time},
        "newest_segment": None if newest is None else {
            "name": newest.name.name, "archived": newest.mtime, "age_seconds": now - newest.mtime},
        "last_wal_arrival": last_arrival,
        "last_wal_age_seconds": None if last_arrival is None else now - last_arrival,
        "restore_points": len(inv.restore_points),
        "dumps": dumps,  # the newest complete dump of each database
        "dump_count": len(catalog.dump_ids()),
        "incomplete_dumps": catalog.incomplete_dump_ids(),
        "restore_tests": restore_test_status(repo, now),
    }


def restore_test_status(repo: Repository, now: float) -> dict[str, Any]:
    """The newest restore test and the newest successful one (walkeeper restore-test), with ages."""
    from datetime import datetime

    from walkeeper.repo.catalog import Catalog

    last, last_ok = Catalog(repo).last_restore_tests()

    def brief(record: Any) -> dict[str, Any] | None:
        if record is None:
            return None
        finished = datetime.fromisoformat(record.finished).timestamp()
        return {"id": record.id, "ok": record.ok, "outcome": record.outcome, "reason": record.reason,
                "backup": record.backup, "dump": record.dump, "finished": finished, "age_seconds": now - finished,
                "total_seconds": record.total_seconds}

    return {"last": brief(last), "last_success": brief(last_ok)}


def status_json(doc: dict[str, Any]) -> dict[str, Any]:
    """A status (or cluster) document with every moment as ISO 8601 UTC, as every --json prints times.

    The in-memory documents keep POSIX seconds for arithmetic (ages, the check, prometheus).
    """
    out = dict(doc)
    for key in ("last_wal_arrival", "last_archived_time", "last_failed_time"):
        if key in out:
            out[key] = iso_utc(out[key])
    for listing in ("backups", "dumps"):
        if out.get(listing):
            out[listing] = [{**b, "stop_time": iso_utc(b["stop_time"])} for b in out[listing]]
    if out.get("oldest_recovery_point"):
        out["oldest_recovery_point"] = {**out["oldest_recovery_point"],
                                        "time": iso_utc(out["oldest_recovery_point"]["time"])}
    if out.get("newest_segment"):
        out["newest_segment"] = {**out["newest_segment"], "archived": iso_utc(out["newest_segment"]["archived"])}
    if out.get("leftovers"):
        out["leftovers"] = {**out["leftovers"], "items": [{**i, "mtime": iso_utc(i["mtime"])}
                                                          for i in out["leftovers"]["items"]]}
    if isinstance(out.get("cluster"), dict):
        out["cluster"] = status_json(out["cluster"])
    if isinstance(out.get("restore_tests"), dict):
        out["restore_tests"] = {which: {**test, "finished": iso_utc(test["finished"])} if test else None
                                for which, test in out["restore_tests"].items()}
    if isinstance(out.get("walkeeper_failures"), dict):
        out["walkeeper_failures"] = {event: {**entry, "last_failure": iso_utc(entry.get("last_failure"))}
                                     for event, entry in out["walkeeper_failures"].items()}
    return out


def local_failures(config: Config) -> dict[str, dict[str, Any]]:
    """walkeeper's own failure record on this host (walkeeper.commands.notify's state file), per command."""
    from walkeeper.commands.notify import read_state, state_path

    try:
        state = read_state(state_path(config))
    except Exception:  # an unusable state file is no failure of status
        return {}
    return {event: {"failures": int(entry.get("failures", 0)), "last_failure": entry.get("last_failure"),
                    "last_error": entry.get("last_error") or None, "last_object": entry.get("last_object") or None}
            for event, entry in state.items() if entry.get("failures")}


def repository_lag_status(config: Config) -> list[Any] | None:
    """Each configured repository's lag (repo/lag.py); None with a single repository."""
    if len(config.repository_names()) < 2:
        return None
    from walkeeper.accel import fastpath
    from walkeeper.repo.lag import repository_lags

    def lag_dir(url: str) -> str | None:
        try:
            return fastpath.lag_dir(config.archive.status_dir, url, create=False)
        except OSError:  # no backlog on this host (or not this user's)
            return None

    return repository_lags(config, lag_dir)


# -- the server -------------------------------------------------------------------------------------

_CLUSTER_SQL = """
select a.archived_count, coalesce(a.last_archived_wal, ''),
       coalesce(extract(epoch from a.last_archived_time)::text, ''),
       a.failed_count, coalesce(a.last_failed_wal, ''),
       coalesce(extract(epoch from a.last_failed_time)::text, ''),
       pg_is_in_recovery(),
       case when pg_is_in_recovery() then '' else
            pg_walfile_name(pg_current_wal_lsn()) || ' ' || pg_current_wal_lsn()::text end,
       extract(epoch from now()),
       current_setting('archive_mode'),
       (select setting from pg_settings where name = 'wal_segment_size'),
       (select system_identifier from pg_control_system())
from pg_stat_archiver a
"""


def cluster_status(config: Config, conn: ConnOptions | None = None) -> dict[str, Any]:
    """pg_stat_archiver and the current WAL file, read with psql (flags, else the libpq environment)."""
    from walkeeper.postgres.client import psql

    try:
        row = psql(config, conn or ConnOptions(), _CLUSTER_SQL, timeout=15)
    except PostgresError as exc:
        raise PostgresError(f"cannot read the server's archiver status: {exc}") from None
    fields = row.split("|")
    if len(fields) != 12:
        raise PostgresError(f"unexpected psql output: {row[:200]!r}")
    (archived, last_wal, last_time, failed, failed_wal, failed_time, in_recovery, current,
     server_now, archive_mode, seg_size, sysid) = fields
    size = int(seg_size)
    doc: dict[str, Any] = {
        "archived_count": int(archived), "last_archived_wal": last_wal or None,
        "last_archived_time": float(last_time) if last_time else None,
        "failed_count": int(failed), "last_failed_wal": failed_wal or None,
        "last_failed_time": float(failed_time) if failed_time else None,
        "in_recovery": in_recovery == "t", "current_wal": current or None,
        "archive_mode": archive_mode, "system_identifier": sysid,
    }
    now = float(server_now)
    doc["failing"] = bool(doc["last_failed_time"] and
                          (doc["last_archived_time"] is None or doc["last_failed_time"] > doc["last_archived_time"]))
    lag_segments = lag_seconds = None
    if current:
        # pg_walfile_name() of an LSN right at a segment boundary (just after a switch) names the
        # previous segment: the segment being written is the one the LSN itself falls in.
        tli_name, lsn_text = current.split(" ")
        current = segment_of_lsn(int(tli_name[:8], 16), parse_lsn(lsn_text), size)
        doc["current_wal"] = current
        cur = parse_wal_name(current)
        if last_wal:
            last = parse_wal_name(last_wal[:24]) if len(last_wal) >= 24 else None
            if last is not None:
                lag_segments = max(0, cur.segno(size) - last.segno(size) - 1)
        else:
            lag_segments = cur.segno(size)  # nothing archived yet: everything before is pending
        if lag_segments is not None:
            if lag_segments == 0:
                lag_seconds = 0.0
            elif doc["last_archived_time"] is not None:
                lag_seconds = max(0.0, now - doc["last_archived_time"])
    doc["archive_lag_segments"] = lag_segments
    doc["archive_lag_seconds"] = lag_seconds
    return doc


# -- check ------------------------------------------------------------------------------------------

@dataclass
class Thresholds:
    max_wal_age: float | None = None  # CRITICAL above
    max_backup_age: float | None = None
    warn_wal_age: float | None = None  # WARNING above
    warn_backup_age: float | None = None
    max_dump_age: float | None = None  # for the newest dump of each database
    warn_dump_age: float | None = None
    max_restore_test_age: float | None = None  # of the last successful restore test
    warn_restore_test_age: float | None = None


@dataclass
class CheckResult:
    status: int
    messages: list[str] = field(default_factory=list)  # the reasons for a non-OK status, worst first
    facts: list[str] = field(default_factory=list)
    perfdata: list[str] = field(default_factory=list)
    repo: dict[str, Any] | None = None
    cluster: dict[str, Any] | None = None
    failures: dict[str, int] = field(default_factory=dict)
    lags: list[Any] | None = None  # several repositories: each one's lag (repo/lag.py)

    def raise_to(self, status: int, message: str) -> None:
        """Add a reason; the status only ever gets worse (UNKNOWN is only set when nothing could be read)."""
        self.messages.append(message)
        if self.status != UNKNOWN and status > self.status:
            self.status = status

    def line(self) -> str:
        text = "; ".join(self.messages + self.facts) or "nothing to report"
        perf = f" | {' '.join(self.perfdata)}" if self.perfdata else ""
        return f"WALKEEPER {STATE_NAMES[self.status]} - {text}{perf}"


def _age_check(result: CheckResult, what: str, age: float | None, warn: float | None, crit: float | None) -> None:
    if age is None:
        if crit is not None or warn is not None:
            result.raise_to(CRITICAL if crit is not None else WARNING, f"no {what} at all")
        return
    if crit is not None and age > crit:
        result.raise_to(CRITICAL, f"last {what} {human_age(age)} ago (critical above {human_age(crit)})")
    elif warn is not None and age > warn:
        result.raise_to(WARNING, f"last {what} {human_age(age)} ago (warning above {human_age(warn)})")


def clock_problems(doc: dict[str, Any]) -> list[str]:
    """What says a clock is (or was) wrong: ages that come out negative, skews recorded at backup time.

    Backups are ordered by WAL position, so a wrong clock cannot make 'latest' wrong; it still makes
    ages, keep_days and time targets wrong, which is worth a WARNING.
    """
    problems = []
    wal_age = doc["last_wal_age_seconds"]
    if wal_age is not None and clock_off(min(wal_age, 0.0)):
        problems.append(f"the newest WAL arrived {human_span(wal_age)} in the future by this host's clock")
    for b in reversed(doc["backups"]):
        if clock_off(min(b["age_seconds"], 0.0)):
            problems.append(f"backup {b['id']} ended {human_span(b['age_seconds'])} in the future by this host's clock")
        elif clock_off(b.get("clock_skew")):
            problems.append(f"backup {b['id']} was taken with its host's clock {describe_skew(b['clock_skew'])} "
                            "the server's")
    return problems


def run_check(config: Config, thresholds: Thresholds, *, cluster: bool = False, conn: ConnOptions | None = None,
              now: float | None = None) -> CheckResult:
    """Evaluate the repository (and the server when asked); never raises."""
    from walkeeper.commands.notify import read_state, state_path

    now = time.time() if now is None else now
    result = CheckResult(OK)
    with contextlib.suppress(Exception):
        result.failures = {k: int(v.get("failures", 0)) for k, v in read_state(state_path(config)).items()}
    try:
        from walkeeper.repo.repository import open_repository

        repo = open_repository(config)
        try:
            result.repo = repository_status(repo, now=now)
        finally:
            with contextlib.suppress(Exception):
                repo.storage.close()
    except Exception as exc:  # the repository cannot be read: the plugin says UNKNOWN
        result.status = UNKNOWN
        result.messages.append(f"cannot read the repository: {exc}")
        return result
    doc = result.repo
    wal_age = doc["last_wal_age_seconds"]
    backup_age = doc["backups"][-1]["age_seconds"] if doc["backups"] else None
    _age_check(result, "WAL archived", wal_age, thresholds.warn_wal_age, thresholds.max_wal_age)
    _age_check(result, "backup", backup_age, thresholds.warn_backup_age, thresholds.max_backup_age)
    if thresholds.max_dump_age is not None or thresholds.warn_dump_age is not None:
        if not doc["dumps"]:
            _age_check(result, "dump", None, thresholds.warn_dump_age, thresholds.max_dump_age)
        for d in doc["dumps"]:
            _age_check(result, f"dump of {d['database']}", d["age_seconds"], thresholds.warn_dump_age,
                       thresholds.max_dump_age)
    tests = doc.get("restore_tests") or {}
    success = tests.get("last_success")
    _age_check(result, "successful restore test", success["age_seconds"] if success else None,
               thresholds.warn_restore_test_age, thresholds.max_restore_test_age)
    if tests.get("last") and not tests["last"]["ok"] and (thresholds.max_restore_test_age is not None
                                                          or thresholds.warn_restore_test_age is not None):
        result.raise_to(WARNING, f"the last restore test {tests['last']['id']} failed: {tests['last']['reason']}")
    if doc["gaps"]:
        result.raise_to(WARNING, f"{plural(doc['gaps'], 'gap')} in the WAL archive (run walkeeper verify)")
    with contextlib.suppress(Exception):
        result.lags = repository_lag_status(config)
    from walkeeper.repo.lag import lag_problems

    for problem in lag_problems(result.lags or []):
        result.raise_to(WARNING, problem)
    if cluster:
        try:
            result.cluster = cluster_status(config, conn)
        except Exception as exc:  # the message says what could not be read, on one line
            result.raise_to(WARNING, str(exc))
        else:
            c = result.cluster
            if c["failing"]:
                result.raise_to(WARNING, "archive_command is failing on the server "
                                         f"({plural(c['failed_count'], 'failure')}, last {c['last_failed_wal']})")
            if doc["system_identifier"] and c["system_identifier"] != doc["system_identifier"]:
                result.raise_to(CRITICAL, f"the server is system {c['system_identifier']}, the repository "
                                          f"belongs to {doc['system_identifier']}")
    clock = clock_problems(doc)
    if clock:
        result.raise_to(WARNING, f"a clock is off: {clock[0]}" + (f" (and {len(clock) - 1} more)" if len(clock) > 1
                                                                  else "") + "; check NTP on the hosts involved")
    newest = doc["newest_segment"]
    if wal_age is None:
        result.facts.append("no WAL archived yet")
    else:
        result.facts.append(f"last WAL {human_ago(wal_age)}" + (f" ({newest['name']})" if newest else ""))
    if doc["backups"]:
        result.facts.append(f"last backup {doc['backups'][-1]['id']} {human_ago(backup_age)}")
    result.facts.append(f"{plural(len(doc['backups']), 'backup')}, {human_bytes(doc['total_bytes'])}")
    if doc["dumps"]:
        oldest_dump = max(doc["dumps"], key=lambda d: d["age_seconds"])
        result.facts.append(f"{plural(doc['dump_count'], 'dump')}, oldest newest-per-database: "
                            f"{oldest_dump['database']} {human_ago(oldest_dump['age_seconds'])}")
    if result.cluster and result.cluster.get("archive_lag_segments") is not None:
        result.facts.append(f"archive lag {plural(result.cluster['archive_lag_segments'], 'segment')}")

    def perf(label: str, value: float | None, warn: float | None, crit: float | None, unit: str = "s") -> None:
        if value is not None:
            result.perfdata.append(f"{label}={value:.0f}{unit};{'' if warn is None else f'{warn:.0f}'};"
                                   f"{'' if crit is None else f'{crit:.0f}'}")

    perf("wal_age", wal_age, thresholds.warn_wal_age, thresholds.max_wal_age)
    perf("backup_age", backup_age, thresholds.warn_backup_age, thresholds.max_backup_age)
    if doc["dumps"]:
        perf("dump_age", max(d["age_seconds"] for d in doc["dumps"]), thresholds.warn_dump_age,
             thresholds.max_dump_age)
    perf("repository_bytes", doc["total_bytes"], None, None, "B")
    result.perfdata.append(f"backups={len(doc['backups'])}")
    return result


# -- prometheus ------------------------------------------------------------------------------------

def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(result: CheckResult, repo_url: str, *, now: float | None = None) -> str:
    """The node-exporter textfile (exposition format 0.0.4)."""
    now = time.time() if now is None else now
    base = f'repo="{_label(repo_url)}"'
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{{{base}{labels}}} {value:.17g}" if isinstance(value, float)
                         else f"{name}{{{base}{labels}}} {value}")

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
        metric("walkeeper_wal_gaps", "gauge", "Holes in the archived WAL sequences (walkeeper verify explains).",
               [("", doc["gaps"])])
    metric("walkeeper_failures_total", "counter",
           "Failed walkeeper commands seen by [notify] on this host, per event.",
           [(f',event="{_label(event)}"', count) for event, count in sorted(result.failures.items())])
    if result.lags:
        from walkeeper.repo.lag import lag_metric

        lines += lag_metric(result.lags)
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
    return "\n".join(lines) + "\n"

"""The health model `status` and `check` share: plugin states, thresholds and the check's verdict.

``check`` speaks the monitoring-plugin protocol (Nagios, Icinga, Sensu...): exit 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN and one summary line with performance data. ``judge`` turns what was read
(commands/status.py) into that verdict without any I/O, so its thresholds are tested as a table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from walkeeper.core.chronology import clock_off, describe_skew, human_span
from walkeeper.core.config import Config
from walkeeper.core.errors import ConfigError
from walkeeper.core.units import human_bytes, plural
from walkeeper.repo.lag import RepositoryLag, lag_problems

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


def local_failures(config: Config) -> dict[str, dict[str, Any]]:
    """walkeeper's own failure record on this host (walkeeper.core.notify's state file), per command."""
    from walkeeper.core.notify import read_state, state_path

    try:
        state = read_state(state_path(config))
    except Exception:  # an unusable state file is no failure of status
        return {}
    return {event: {"failures": int(entry.get("failures", 0)), "last_failure": entry.get("last_failure"),
                    "last_error": entry.get("last_error") or None, "last_object": entry.get("last_object") or None}
            for event, entry in state.items() if entry.get("failures")}


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
    max_receive_lag: float | None = None  # wal-receive: age of the newest received data in the repository
    warn_receive_lag: float | None = None
    max_chain: int | None = None  # WARNING when a restore needs more backups ([backup] max_chain)


@dataclass
class CheckResult:
    status: int
    messages: list[str] = field(default_factory=list)  # the reasons for a non-OK status, worst first
    facts: list[str] = field(default_factory=list)
    perfdata: list[str] = field(default_factory=list)
    repo: dict[str, Any] | None = None
    cluster: dict[str, Any] | None = None
    failures: dict[str, int] = field(default_factory=dict)
    lags: list[RepositoryLag] | None = None  # several repositories: each one's lag (repo/lag.py)

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


def chain_problems(backups: list[dict[str, Any]], max_chain: int | None) -> list[str]:
    """Chains of incremental backups too long to restore comfortably, or broken (a member missing)."""
    problems = []
    broken = [b["id"] for b in backups if "chain_length" in b and b["chain_length"] is None]
    if broken:
        problems.append(f"{plural(len(broken), 'incremental backup')} cannot be restored, a backup of "
                        f"{'its' if len(broken) == 1 else 'their'} chain is missing ({', '.join(broken[:3])}"
                        f"{' ...' if len(broken) > 3 else ''}; run walkeeper verify)")
    if max_chain is not None:
        long = [b for b in backups if (b.get("chain_length") or 0) > max_chain]
        if long:
            worst = max(long, key=lambda b: b["chain_length"])
            problems.append(f"restoring backup {worst['id']} needs a chain of {worst['chain_length']} backups, more "
                            f"than [backup] max_chain ({max_chain}): take a full backup")
    return problems


def judge(result: CheckResult, thresholds: Thresholds, cluster_error: str | None = None) -> CheckResult:
    """The check's verdict over what was read: ``result.repo`` (repository_status), ``result.cluster``
    (cluster_status, or None with ``cluster_error`` saying why it could not be read). Pure."""
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
    receive = doc.get("receive")
    if thresholds.max_receive_lag is not None or thresholds.warn_receive_lag is not None:
        _age_check(result, "WAL received by wal-receive", receive["lag_seconds"] if receive else None,
                   thresholds.warn_receive_lag, thresholds.max_receive_lag)
    if doc["gaps"]:
        result.raise_to(WARNING, f"{plural(doc['gaps'], 'gap')} in the WAL archive (run walkeeper verify)")
    for problem in lag_problems(result.lags or []):
        result.raise_to(WARNING, problem)
    if cluster_error is not None:
        result.raise_to(WARNING, cluster_error)
    elif result.cluster is not None:
        c = result.cluster
        if c["failing"]:
            result.raise_to(WARNING, "archive_command is failing on the server "
                                     f"({plural(c['failed_count'], 'failure')}, last {c['last_failed_wal']})")
        if doc["system_identifier"] and c["system_identifier"] != doc["system_identifier"]:
            result.raise_to(CRITICAL, f"the server is system {c['system_identifier']}, the repository "
                                      f"belongs to {doc['system_identifier']}")
    for message in chain_problems(doc["backups"], thresholds.max_chain):
        result.raise_to(WARNING, message)
    clock = clock_problems(doc)
    if clock:
        result.raise_to(WARNING, f"a clock is off: {clock[0]}" + (f" (and {len(clock) - 1} more)" if len(clock) > 1
                                                                  else "") + "; check NTP on the hosts involved")
    newest = doc["newest_segment"]
    if wal_age is None:
        result.facts.append("no WAL archived yet")
    else:
        result.facts.append(f"last WAL {human_ago(wal_age)}" + (f" ({newest['name']})" if newest else ""))
    if receive:
        result.facts.append(f"receive lag {human_age(receive['lag_seconds'])}")
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
    perf("receive_lag", receive["lag_seconds"] if receive else None, thresholds.warn_receive_lag,
         thresholds.max_receive_lag)
    if doc["dumps"]:
        perf("dump_age", max(d["age_seconds"] for d in doc["dumps"]), thresholds.warn_dump_age,
             thresholds.max_dump_age)
    perf("repository_bytes", doc["total_bytes"], None, None, "B")
    result.perfdata.append(f"backups={len(doc['backups'])}")
    return result



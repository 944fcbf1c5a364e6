"""`walkeeper status` and `walkeeper check`: what the repository holds, how fresh it is, and
(when a connection is possible through libpq's environment) what the server's archiver says.

The check's states, thresholds and verdict are repo/health.py (shared with ``check --archive``,
commands/check.py); the node-exporter textfile is repo/prometheus.py. This module reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from typing import Any

from walkeeper.core.config import Config
from walkeeper.core.errors import PostgresError
from walkeeper.core.units import iso_utc
from walkeeper.core.wal import parse_lsn, parse_wal_name, segment_of_lsn
from walkeeper.postgres.client import ConnOptions
from walkeeper.repo import chains
from walkeeper.repo.health import (  # noqa: F401 (the CLI's names for the check model)
    OK,
    STATE_NAMES,
    UNKNOWN,
    CheckResult,
    Thresholds,
    human_age,
    human_ago,
    judge,
    local_failures,
    parse_duration,
)
from walkeeper.repo.inventory import Inventory, read_inventory
from walkeeper.repo.prometheus import prometheus_text  # noqa: F401 (the CLI writes it)
from walkeeper.repo.repository import Repository

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
    parents = chains.parent_map(inv.backups)
    backups = [{"id": b.id, "timeline": b.timeline, "start_wal": b.start_wal, "stop_wal": b.stop_wal,
                "stop_time": b.stop_time, "age_seconds": now - b.stop_time, "stored_bytes": b.stored_size,
                "wal_mode": b.wal_mode, "clock_skew": b.clock_skew, "type": b.type, "parent": b.parent,
                "chain_length": chains.chain_length(b.id, parents)} for b in inv.backups]
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
        "receive": receive_status(repo, now),
    }


def receive_status(repo: Repository, now: float) -> dict[str, Any] | None:
    """wal-receive's heartbeat (repo/received.py) with its lag; None when it never ran here."""
    from walkeeper.repo.received import list_received, read_receiver_state, receive_lag

    state = read_receiver_state(repo)
    if state is None:
        return None
    return {"updated": float(state["updated"]), "lag_seconds": receive_lag(state, now), "slot": state.get("slot"),
            "segment": state.get("segment"), "host": state.get("host"),
            "partials": [p.key.rsplit("/", 1)[1] for p in list_received(repo)]}


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
    if isinstance(out.get("receive"), dict):
        out["receive"] = {**out["receive"], "updated": iso_utc(out["receive"]["updated"])}
    if isinstance(out.get("restore_tests"), dict):
        out["restore_tests"] = {which: {**test, "finished": iso_utc(test["finished"])} if test else None
                                for which, test in out["restore_tests"].items()}
    if isinstance(out.get("walkeeper_failures"), dict):
        out["walkeeper_failures"] = {event: {**entry, "last_failure": iso_utc(entry.get("last_failure"))}
                                     for event, entry in out["walkeeper_failures"].items()}
    return out


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


def repository_lag_status(config: Config) -> list[Any] | None:
    """Each configured repository's lag (repo/lag.py); None with a single repository."""
    if len(config.repository_names()) < 2:
        return None
    from walkeeper.accel import state
    from walkeeper.repo.lag import repository_lags

    def lag_dir(url: str) -> str | None:
        try:
            return state.lag_dir(config.archive.status_dir, url, create=False)
        except OSError:  # no backlog on this host (or not this user's)
            return None

    return repository_lags(config, lag_dir)


# -- check: read here, judged by repo/health.py ---------------------------------------------------

def run_check(config: Config, thresholds: Thresholds, *, cluster: bool = False, conn: ConnOptions | None = None,
              now: float | None = None) -> CheckResult:
    """Evaluate the repository (and the server when asked); never raises."""
    from walkeeper.core.notify import read_state, state_path

    now = time.time() if now is None else now
    if thresholds.max_chain is None:
        thresholds = dataclasses.replace(thresholds, max_chain=config.backup.max_chain)
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
    cluster_error = None
    if cluster:
        try:
            result.cluster = cluster_status(config, conn)
        except Exception as exc:  # the message says what could not be read, on one line
            cluster_error = str(exc)
    with contextlib.suppress(Exception):
        result.lags = repository_lag_status(config)
    return judge(result, thresholds, cluster_error)



"""`walkeeper expire`: remove backups and WAL that no retained backup needs.

Rules:

* ``keep`` N: the newest N complete backups stay, newest by WAL position (timeline, stop LSN: see
  walkeeper.core.chronology), so a backup taken with a wrong host clock is never mistaken for the newest.
  ``keep_days`` D: every backup that ended within the last D days (by the clock of the host that
  took it) stays, and so does the newest one that ended before the window, because recovery to the
  first moment of the window starts from it. Both set: a backup kept by either rule stays.
* ``keep_daily/weekly/monthly/yearly`` N (grandfather-father-son, walkeeper.core.retention_gfs): the
  newest backup of each of the N most recent days/weeks/months/years that have one, by stop time
  in the configured (or local) time zone. Combined with the rules above: kept by any rule stays.
* Chains of incremental backups (walkeeper.repo.chains) are kept or removed whole: the rules above count
  a chain as one backup dated by its newest member (``keep`` 2 keeps the two newest chains), and a
  retained backup keeps every member of its chain (never an incremental without the backups it needs).
* The newest backup always stays (so does the only one), and so does all WAL from the oldest
  retained backup's start onwards, on every timeline: nothing after the newest backup ever goes.
* WAL segments, .partial and .backup files before that start go; restore points before it go.
* A ``.history`` file stays while retained WAL (or a retained backup) lies on its timeline or a
  descendant, and always for the newest timelines (PostgreSQL probes them to pick a new timeline).
* A backup with data but no metadata goes too when its writer is dead (walkeeper/repo/writers.py:
  its process gone on this host, or its marker not refreshed for 15 minutes); a running backup
  stays, whatever its id or age. One without a writer marker (older walkeeper) goes when it is
  older than the newest complete backup and untouched for an hour.
* Leftovers of dead writers go first: temporary objects, incomplete S3 uploads, then (after the
  objects) empty backup directories. A running backup's are never touched.

Order keeps an interruption harmless: a backup loses its metadata object first (from then on it
is not listed, never "usable but partial"), then its data; WAL goes oldest first, so an
interrupted expire never leaves a hole in the middle of the archive.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo

from walkeeper.core.chronology import oldest_first
from walkeeper.core.errors import ConfigError, RefusedError
from walkeeper.core.retention_gfs import GfsPolicy, Item, decide
from walkeeper.core.units import plural
from walkeeper.core.wal import WalKind, parse_wal_name
from walkeeper.repo import chains
from walkeeper.repo.inventory import BackupInfo, Inventory, read_inventory, restore_point_lsn
from walkeeper.repo.layout import (
    BACKUP_META,
    BACKUP_PREFIX,
    WRITER_NAME,
)
from walkeeper.repo.repository import Repository
from walkeeper.repo.writers import leftover_is_dead
from walkeeper.storage.base import Leftover

log = logging.getLogger(__name__)

STALE_INCOMPLETE = 3600.0


@dataclass
class Plan:
    keep: int | None
    keep_days: float | None
    kept_backups: list[str] = field(default_factory=list)
    expired_backups: list[str] = field(default_factory=list)
    incomplete_backups: list[str] = field(default_factory=list)
    cutoff_wal: str | None = None  # the first segment that stays (on the oldest retained backup's timeline)
    removals: list[tuple[str, int]] = field(default_factory=list)  # (key, stored bytes), in deletion order
    note: str | None = None
    reasons: dict[str, list[str]] = field(default_factory=dict)  # kept backup id -> the rules that keep it
    running_backups: list[str] = field(default_factory=list)  # kept: their writer lives
    leftovers: list[Leftover] = field(default_factory=list)  # of dead writers: temp/upload first, dirs last

    @property
    def bytes_freed(self) -> int:
        return sum(size for _key, size in self.removals) + sum(item.size for item in self.leftovers)

    def to_dict(self) -> dict[str, object]:
        return {"keep": self.keep, "keep_days": self.keep_days, "kept_backups": self.kept_backups,
                "expired_backups": self.expired_backups, "incomplete_backups": self.incomplete_backups,
                "running_backups": self.running_backups, "first_wal_kept": self.cutoff_wal,
                "objects": [k for k, _ in self.removals],
                "leftovers": [{"path": i.path, "kind": i.kind, "size": i.size} for i in self.leftovers],
                "bytes_freed": self.bytes_freed, "note": self.note, "kept_by": self.reasons}


def _backup_order(objects: list[tuple[str, int, float]]) -> list[tuple[str, int]]:
    """Metadata first (unlisted from then on), the writer marker last (the id stays reserved till the end)."""
    ordered = sorted(objects, key=lambda o: (not o[0].endswith(f"/{BACKUP_META}"), o[0].endswith(f"/{WRITER_NAME}")))
    return [(key, size) for key, size, _mtime in ordered]


def retained_backups(backups: list[BackupInfo], keep: int | None, keep_days: float | None,
                     now: float, gfs: GfsPolicy | None = None, zone: tzinfo | None = None,
                     reasons: dict[str, list[str]] | None = None) -> list[BackupInfo]:
    """The backups the rules keep, oldest first (chronology.oldest_first); never empty when backups exist.

    ``reasons`` (if given) receives, for each kept id, the rules that keep it.
    """
    if not backups:
        return []
    every = oldest_first(backups)
    # A chain counts as one backup, dated and placed by its newest member; what keeps it keeps it whole.
    backups = oldest_first(members[-1] for members in chains.groups(every).values())
    why: dict[str, list[str]] = {} if reasons is None else reasons
    why.setdefault(backups[-1].id, []).append("newest")
    if keep is not None:
        for b in backups[-keep:]:
            why.setdefault(b.id, []).append(f"newest {keep}")
    if keep_days is not None:
        window_start = now - keep_days * 86400
        # Each backup on its own here (its chain follows below): recovery to the window's first moment
        # starts from the newest backup that ended before it, whichever chain it belongs to.
        inside = [b for b in every if b.stop_time >= window_start]
        before = [b for b in every if b.stop_time < window_start]
        for b in inside:
            why.setdefault(b.id, []).append(f"last {keep_days:g} days")
        if before:
            why.setdefault(before[-1].id, []).append(f"start of the {keep_days:g}-day window")
    if gfs is not None and not replace(gfs, keep=None, keep_days=None).empty():
        items = [Item(b.id, datetime.fromtimestamp(b.stop_time, UTC)) for b in backups]
        for backup_id, rules in decide(items, replace(gfs, keep=None, keep_days=None),
                                       datetime.fromtimestamp(now, UTC), zone or _local_zone()).items():
            why.setdefault(backup_id, []).extend(rules)
    for member, newest in chains.expand_to_chains(list(why), every).items():
        if member != newest:
            why.setdefault(member, []).append(f"chain of {newest}")
    return [b for b in every if b.id in why]


def _local_zone() -> tzinfo:
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


def time_zone(name: str | None) -> tzinfo:
    """The zone GFS periods are counted in: an IANA name, or this host's local zone."""
    if not name:
        return _local_zone()
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {name!r}", hint="an IANA name such as Europe/Berlin or UTC") from None


def plan_expire(inv: Inventory, *, keep: int | None, keep_days: float | None, now: float | None = None,
                gfs: GfsPolicy | None = None, zone: tzinfo | None = None) -> Plan:
    if keep is None and keep_days is None and (gfs is None or gfs.empty()):
        raise ConfigError("expire needs a retention rule", hint="--keep N, --keep-days D and/or --keep-daily/"
                                                                "weekly/monthly/yearly N, or the same in "
                                                                "[retention] in the configuration")
    for name, value in (("keep_daily", gfs and gfs.daily), ("keep_weekly", gfs and gfs.weekly),
                        ("keep_monthly", gfs and gfs.monthly), ("keep_yearly", gfs and gfs.yearly)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1 (got {value})")
    if keep is not None and keep < 1:
        raise ConfigError(f"keep must be at least 1 (got {keep}); the newest backup is never expired")
    if keep_days is not None and keep_days <= 0:
        raise ConfigError(f"keep_days must be positive (got {keep_days})")
    now = time.time() if now is None else now
    plan = Plan(keep, keep_days)
    plan.running_backups = [state.backup_id for state in inv.running_backups]
    dead = inv.dead_leftovers(now)
    plan.leftovers = [i for i in dead if i.kind != "dir"] + [i for i in dead if i.kind == "dir"]
    newest_id = inv.backups[-1].id if inv.backups else None
    for backup_id in inv.incomplete_backups:  # running ones are not among them
        objects = inv.backup_objects.get(backup_id, [])
        legacy_stale = backup_id not in inv.writer_states and newest_id is not None and backup_id < newest_id \
            and bool(objects) and now - max(m for _k, _s, m in objects) > STALE_INCOMPLETE
        if backup_id in inv.writer_states or legacy_stale:
            plan.incomplete_backups.append(backup_id)
            plan.removals.extend(_backup_order(objects))
    if not inv.backups:
        plan.note = "no complete backups: nothing expires (all WAL stays until a backup exists)"
        return plan
    kept = retained_backups(inv.backups, keep, keep_days, now, gfs, zone, plan.reasons)
    kept_ids = {b.id for b in kept}
    plan.kept_backups = [b.id for b in kept]
    expired = [b for b in inv.backups if b.id not in kept_ids]
    plan.expired_backups = [b.id for b in expired]
    for backup in expired:
        plan.removals.extend(_backup_order(inv.backup_objects.get(backup.id, [])))

    oldest = min(kept, key=lambda b: b.start_segno)
    cutoff = oldest.start_segno
    plan.cutoff_wal = inv.name_of(oldest.timeline, cutoff)
    cutoff_lsn = cutoff * inv.segment_size
    for key, size, _mtime in sorted(inv.restore_points):
        lsn = restore_point_lsn(key)
        if lsn is not None and lsn < cutoff_lsn:
            plan.removals.append((key, size))

    doomed = []
    remaining_tlis: set[int] = {b.timeline for b in kept} | {b.stop_timeline for b in kept}
    for obj in inv.wal:
        if obj.name.kind is WalKind.HISTORY:
            continue
        if obj.name.segno(inv.segment_size) < cutoff:
            doomed.append(obj)
        else:
            remaining_tlis.add(obj.name.timeline)
    doomed.sort(key=lambda o: (o.name.segno(inv.segment_size), o.name.timeline, o.name.name))
    plan.removals.extend((o.key, o.size) for o in doomed)
    # wal-receive's partial uploads of segments before the cutoff (a receiver stopped before storing them)
    plan.removals.extend((key, size) for key, size, segment in sorted(inv.received)
                         if parse_wal_name(segment).segno(inv.segment_size) < cutoff)
    needed: set[int] = set()
    for tli in remaining_tlis:
        needed.update(t for t, _b, _e in inv.lineage(tli))
    newest_tli = max(remaining_tlis)
    for tli, obj in sorted(inv.history_files.items()):
        if tli not in needed and tli < newest_tli:
            plan.removals.append((obj.key, obj.size))
    return plan


def expire(repo: Repository, *, keep: int | None, keep_days: float | None, dry_run: bool = False,
           now: float | None = None, gfs: GfsPolicy | None = None, zone: tzinfo | None = None) -> Plan:
    """Plan, then (unless ``dry_run``) delete in the plan's order."""
    repo.require_meta()
    inv = read_inventory(repo, leftovers=True)
    if inv.history_errors:
        raise RefusedError(
            f"cannot read the history {'file' if len(inv.history_errors) == 1 else 'files'} of "
            f"{'timeline' if len(inv.history_errors) == 1 else 'timelines'} "
            f"{', '.join(map(str, sorted(inv.history_errors)))}; refusing to expire without knowing the timelines",
            hint="walkeeper verify explains")
    plan = plan_expire(inv, keep=keep, keep_days=keep_days, now=now, gfs=gfs, zone=zone)
    if dry_run or not (plan.removals or plan.leftovers):
        return plan
    for item in plan.leftovers:
        if item.kind != "dir":
            repo.storage.remove_leftover(item)
    batch: list[str] = []
    for key, _size in plan.removals:
        batch.append(key)
        # A backup's metadata goes alone and first: from then on it is not listed as usable.
        if len(batch) >= 100 or key.endswith(f"/{BACKUP_META}"):
            repo.storage.delete(batch)
            batch = []
    if batch:
        repo.storage.delete(batch)
    _remove_empty_directories(repo, plan)
    log.info("expired %s, %s, %d bytes", plural(len(plan.expired_backups), "backup"),
             plural(len(plan.removals), "object"), plan.bytes_freed)
    return plan


def _remove_empty_directories(repo: Repository, plan: Plan) -> None:
    """Directories of the backups just removed (now empty) and empty ones found dead before."""
    gone = set(plan.expired_backups) | set(plan.incomplete_backups)
    planned = {item.path for item in plan.leftovers if item.kind == "dir"}
    now = time.time()
    for item in repo.storage.list_leftovers(BACKUP_PREFIX):
        if item.kind == "dir" and (item.path in planned or leftover_is_dead(item, now, set(), {}, gone)):
            repo.storage.remove_leftover(item)
            if item.path not in planned:
                plan.leftovers.append(item)

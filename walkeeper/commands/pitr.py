"""Point-in-time recovery: choose a backup for a target, prove WAL coverage, write recovery settings.

Nothing is written before the plan holds: the target is validated, a backup that ended before it
is chosen, and every WAL segment recovery will read (from the backup's start to the target,
following timeline history the way PostgreSQL's ``XLogFileReadAnyTLI`` picks a timeline for each
segment) is present in the repository. Only then is the backup restored and the settings written.

Settings go into ``postgresql.auto.conf`` inside a marked block (replaced on the next run);
``recovery_target*`` lines elsewhere in postgresql.conf / postgresql.auto.conf are commented out,
because PostgreSQL refuses more than one target and would otherwise use a stale one.
"""

from __future__ import annotations

import logging
import os
import re
import time as clock
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from walkeeper.core import chronology
from walkeeper.core.config import Config
from walkeeper.core.errors import ConfigError, GapError, InvalidName, NotFound, RefusedError
from walkeeper.core.units import human_bytes, plural
from walkeeper.core.wal import (
    HistoryEntry,
    WalKind,
    format_lsn,
    parse_history,
    parse_lsn,
    parse_wal_name,
    segment_name,
)
from walkeeper.postgres.combine import describe_chain, restore_any
from walkeeper.postgres.extract import RestoreResult, stored_pg_control
from walkeeper.postgres.recovery_conf import (
    restore_command,
    settings_block,
    write_settings,
)
from walkeeper.repo.catalog import BackupMeta, Catalog, RestorePoint
from walkeeper.repo.chains import chain_length, chain_of, parent_map
from walkeeper.repo.repository import Repository, open_repository

log = logging.getLogger(__name__)

TARGET_KINDS = ("time", "lsn", "xid", "name", "immediate")
ACTIONS = ("pause", "promote", "shutdown")
GAP_RECHECK = 0.5  # seconds between listings while a gap may be a store in flight


# -- targets -----------------------------------------------------------------------------------

_TS_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[ T](?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)"
    r"\s*(?P<zone>Z|UTC|GMT|[+-]\d{1,2}(?::?\d{2})?|[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*)?$"
)


def parse_target_time(text: str, *, local_zone: timezone | None = None) -> datetime:
    """Parse a time target the way PostgreSQL would read it, or refuse it before anything is written.

    Accepted: ``YYYY-MM-DD HH:MM[:SS[.ffffff]]`` followed by a numeric offset (``+02``, ``+05:30``,
    ``-0800``), ``Z``/``UTC``/``GMT``, or a full zone name (``Europe/Berlin``). Abbreviations such
    as ``EST`` or ``CEST`` are refused: they are ambiguous and PostgreSQL reads them from its own
    ``timezone_abbreviations`` table. Without a zone the time is read in this machine's zone and
    written with an explicit offset, so the recovering server cannot read it differently.
    """
    match = _TS_RE.match(text.strip())
    if not match:
        raise ConfigError(
            f"--target-time {text!r}: not a timestamp walkeeper can check",
            hint="use e.g. '2026-01-31 14:05:00+01', '2026-01-31 13:05:00 UTC' or '2026-01-31 14:05:00 Europe/Paris'",
        )
    try:
        naive = datetime.fromisoformat(f"{match.group('date')} {match.group('time')}")
    except ValueError as exc:
        raise ConfigError(f"--target-time {text!r}: {exc}") from None
    zone = match.group("zone")
    if zone is None:
        local = local_zone or datetime.now().astimezone().tzinfo
        return naive.replace(tzinfo=local).astimezone(UTC)
    if zone in ("Z", "UTC", "GMT"):
        return naive.replace(tzinfo=UTC)
    if zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        hours, minutes = (int(digits[:-2]), int(digits[-2:])) if len(digits) > 2 else (int(digits), 0)
        if hours > 15 or minutes > 59:
            raise ConfigError(f"--target-time {text!r}: offset {zone} is out of range")
        delta = timedelta(hours=hours, minutes=minutes)
        return naive.replace(tzinfo=timezone(delta if zone[0] == "+" else -delta))
    if "/" not in zone and zone == zone.upper():
        # CET, EST or MET are zoneinfo keys too, but whoever writes them means an abbreviation, which
        # PostgreSQL reads from its own timezone_abbreviations table: refuse rather than guess.
        raise ConfigError(f"--target-time {text!r}: {zone} is an ambiguous abbreviation, not a time zone walkeeper "
                          "can check",
                          hint="use a full zone name such as Europe/Berlin, or a numeric offset such as +01")
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--target-time {text!r}: unknown time zone {zone!r}",
                          hint="use a full zone name such as Europe/Berlin, or a numeric offset") from None
    return naive.replace(tzinfo=tz)


def format_target_time(moment: datetime) -> str:
    """An unambiguous form PostgreSQL reads the same way whatever its TimeZone setting."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


@dataclass(frozen=True)
class Target:
    kind: str
    value: str  # as written to recovery_target_<kind>
    time: datetime | None = None
    lsn: int | None = None
    xid: int | None = None
    point: RestorePoint | None = None

    def describe(self) -> str:
        return "immediate (the end of the backup)" if self.kind == "immediate" else f"{self.kind} {self.value}"


# -- transaction ids ---------------------------------------------------------------------------

XID_SPACE = 1 << 32  # PostgreSQL's transaction ids are 32 bits; the epoch counts their wraparounds


def parse_xid(text: str) -> int:
    """A ``recovery_target_xid`` as PostgreSQL reads it: a 32-bit xid, or a 64-bit full xid (epoch << 32 |
    xid, what pg_current_xact_id() and txid_current() return), of which recovery compares the low 32 bits."""
    digits = text.strip()
    if not digits.isdigit() or int(digits) >= 1 << 64:
        raise ConfigError(f"--target-xid {text!r}: expected a transaction id: a 32-bit xid or the 64-bit form "
                          "pg_current_xact_id() returns (e.g. 123456 or 4294967396)",
                          hint="for epoch:xid as pg_controldata prints it, give epoch * 4294967296 + xid")
    value = int(digits)
    if value % XID_SPACE < 3:
        raise ConfigError(f"--target-xid {text!r}: xid {value % XID_SPACE} is not a normal transaction id "
                          "(the first one is 3): no transaction commits with it")
    return value


def full_xid(value: int, reference: int | None) -> int:
    """The 64-bit transaction id meant by ``value``.

    A 64-bit value says its epoch. A 32-bit one is the xid nearest to ``reference`` (a known full next xid):
    within 2^31 transactions of it, before or after, PostgreSQL's own rule for relating a 32-bit xid to a
    full one (FullXidRelativeTo; TransactionIdPrecedes compares the same way).
    """
    if value >= XID_SPACE or reference is None:
        return value
    delta = (value - reference) % XID_SPACE
    if delta >= XID_SPACE // 2:
        delta -= XID_SPACE
    full = reference + delta
    return full if full >= 0 else full + XID_SPACE


def format_xid(full: int) -> str:
    epoch, xid = divmod(full, XID_SPACE)
    return str(xid) if epoch == 0 else f"{xid} of epoch {epoch} ({full})"


@dataclass(frozen=True)
class XidMark:
    """Where a backup's transaction ids stood (64-bit next xids; None: not known)."""

    backup: BackupMeta
    checkpoint_next_xid: int | None = None  # at the checkpoint recovery from the backup starts from
    stop_next_xid: int | None = None  # once the backup had ended
    from_control: bool = False  # read from the stored pg_control (metadata older than the field)

    @classmethod
    def of(cls, backup: BackupMeta) -> XidMark:
        return cls(backup, backup.checkpoint_next_xid, backup.stop_next_xid)

    @property
    def bound(self) -> int | None:
        """Transactions from this xid on committed after the backup ended (checkpoint: after it began)."""
        return self.stop_next_xid if self.stop_next_xid is not None else self.checkpoint_next_xid


@dataclass(frozen=True)
class XidChoice:
    backup: BackupMeta
    xid: int  # the target as a 64-bit xid
    reason: str
    settled: bool  # the backup began before the target transaction did (no older backup can do better)
    warnings: tuple[str, ...] = ()


def choose_for_xid(marks: list[XidMark], value: int) -> XidChoice:
    """The backup recovery to transaction ``value`` starts from; ``marks`` oldest first.

    Recovery stops at the first commit (or abort) record of the xid it replays. A transaction that
    committed before the backup ended cannot be reached from that backup: before the backup's checkpoint
    the record is not replayed ("recovery ended before configured recovery target was reached"); between
    the checkpoint and the end of the backup it is, before the data is consistent ("requested recovery stop
    point is before consistent recovery point"). A transaction at or above the server's next xid when the
    backup ended had not ended then, so the newest backup whose next xid is at most the target reaches it.
    For backups that only know their checkpoint's next xid that is the best guess, and a warning says what
    PostgreSQL reports if the transaction committed while that backup ran.
    """
    if not marks:
        raise RefusedError("the repository holds no backup", hint="take one with walkeeper backup")
    known = [m for m in marks if m.bound is not None]
    if not known:
        return XidChoice(marks[0].backup, value, "the oldest backup: no backup records where transaction ids "
                         "stood, and the oldest reaches the most transactions", False)
    newest = known[-1]
    assert newest.bound is not None
    xid = full_xid(value, newest.bound)
    shown = format_xid(xid)
    warnings: list[str] = []
    if value < XID_SPACE and xid >= XID_SPACE:
        warnings.append(f"--target-xid {value} is a 32-bit xid: read as {shown}, the one nearest the newest "
                        "backup; give the 64-bit form pg_current_xact_id() returns to mean another epoch")
    if xid - newest.bound >= XID_SPACE // 2:
        warnings.append(f"transaction {shown} is more than 2^31 transactions after the newest backup (next xid "
                        f"{format_xid(newest.bound)}): no archive of this cluster is likely to hold it; check the "
                        "number (another cluster's?)")
    before = [m for m in known if m.bound is not None and m.bound <= xid]
    if not before:
        oldest = marks[0]
        if oldest.stop_next_xid is not None:
            since = f"before the oldest backup ended (the server's next xid then: {format_xid(oldest.stop_next_xid)})"
        elif oldest.checkpoint_next_xid is not None:
            since = f"before the oldest backup's checkpoint (its next xid: {format_xid(oldest.checkpoint_next_xid)})"
        else:
            since = "before every backup whose next xid is known"
        return XidChoice(oldest.backup, xid, (
            f"the oldest backup: transaction {shown} began {since}; recovery reaches it only if it committed "
            "after this backup ended, else PostgreSQL stops with 'recovery ended before configured recovery "
            "target was reached'"), False, tuple(warnings))
    chosen = before[-1]
    assert chosen.bound is not None
    if xid - chosen.bound >= XID_SPACE:
        raise RefusedError(
            f"transaction {shown} began {xid - chosen.bound} transactions after backup {chosen.backup.id}, more "
            f"than one wraparound: recovery compares 32-bit xids and would stop at transaction "
            f"{format_xid(xid - XID_SPACE)} first",
            hint="take a new backup, or recover to a time or LSN instead")
    where = " (read from its stored global/pg_control)" if chosen.from_control else ""
    if chosen.stop_next_xid is not None:
        why = (f"the newest backup that ended before transaction {shown} could commit (the server's next xid "
               f"when it ended: {format_xid(chosen.bound)})")
    else:
        why = (f"the newest backup whose checkpoint came before transaction {shown} began (the checkpoint's next "
               f"xid: {format_xid(chosen.bound)}{where})")
        older = [m for m in marks if m is not chosen and parse_lsn(m.backup.stop_lsn) < parse_lsn(
            chosen.backup.stop_lsn)]
        advice = f"give --backup {older[-1].backup.id}" if older else "no older backup can"
        warnings.append(f"backup {chosen.backup.id} does not record the next xid at its end: if transaction {shown} "
                        "committed while it ran, PostgreSQL stops with 'requested recovery stop point is before "
                        f"consistent recovery point' ({advice})")
    if chosen is newest:
        why += "; it is the newest backup: recovery reaches the target if the archive holds its commit"
    return XidChoice(chosen.backup, xid, why, True, tuple(warnings))


# -- timelines ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TimelineStep:
    """Recovery on ``timeline`` from ``begin`` (the parent's switch point, or 0) to ``end`` (or None)."""

    timeline: int
    begin: int
    end: int | None


def timeline_path(repo: Repository, target_tli: int) -> list[TimelineStep]:
    """The timelines PostgreSQL traverses to reach ``target_tli``, from the history file."""
    if target_tli == 1:
        return [TimelineStep(1, 0, None)]
    history = read_history(repo, target_tli)
    steps = []
    begin = 0
    for entry in history:
        steps.append(TimelineStep(entry.parent, begin, entry.switch_lsn))
        begin = entry.switch_lsn
    steps.append(TimelineStep(target_tli, begin, None))
    return steps


def read_history(repo: Repository, tli: int) -> list[HistoryEntry]:
    name = parse_wal_name(f"{tli:08X}.history")
    try:
        text = repo.fetch_wal(name).decode()
    except NotFound:
        raise RefusedError(f"timeline {tli} has no history file {name.name} in the repository",
                           hint="timeline history files are archived when a server is promoted") from None
    return parse_history(text)


def latest_timeline(repo: Repository, start: int, histories: set[int]) -> int:
    """PostgreSQL's recovery_target_timeline = 'latest': probe start+1, start+2... for .history files."""
    tli = start
    while tli + 1 in histories:
        tli += 1
    return tli


# -- the plan ----------------------------------------------------------------------------------

@dataclass
class Plan:
    target: Target
    backup: BackupMeta
    reason: str
    timeline: int
    timeline_explicit: bool
    path: list[TimelineStep]
    first_wal: str
    last_wal: str | None
    segments: int
    action: str
    exclusive: bool
    standby: bool
    warnings: list[str] = field(default_factory=list)
    chain: list[BackupMeta] = field(default_factory=list)  # an incremental backup's chain, the full first

    def lines(self) -> list[str]:
        out = [
            f"target: {self.target.describe()}",
            f"backup: {self.backup.id} (label {self.backup.label!r}, ended {self.backup.stop_time} at "
            f"LSN {self.backup.stop_lsn}, timeline {self.backup.stop_timeline})",
            f"  because: {self.reason}",
            *([f"chain: {len(self.chain)} backups fetched, staged and combined (pg_combinebackup):",
               *describe_chain(self.chain)] if len(self.chain) > 1 else []),
            "timeline: " + " -> ".join(str(s.timeline) for s in self.path)
            + ("" if self.timeline_explicit else " (the latest timeline, PostgreSQL's default)"),
            f"WAL: {plural(self.segments, 'segment')} {self.first_wal} .. {self.last_wal or '(end of archive)'} "
            "all present in the repository",
        ]
        if self.target.kind != "none":
            if self.action == "pause":
                out.append("target action: pause (PostgreSQL's default): at the target, recovery pauses; check the "
                           "data, then run  select pg_wal_replay_resume();  to end recovery and promote")
            else:
                out.append(f"target action: {self.action}")
        if self.exclusive:
            out.append("the target itself is excluded (recovery_target_inclusive = off)")
        if self.standby:
            out.append("mode: standby (standby.signal): the server keeps following the archive")
        out.extend(f"warning: {w}" for w in self.warnings)
        return out


def _end_time(backup: BackupMeta) -> datetime:
    return datetime.fromisoformat(backup.stop_time)


def _on_path(backup: BackupMeta, path: list[TimelineStep]) -> bool:
    """PostgreSQL can only recover a backup along a timeline history that contains its checkpoint."""
    start = parse_lsn(backup.checkpoint_lsn or backup.start_lsn)
    stop = parse_lsn(backup.stop_lsn)
    for step in path:
        if step.timeline == backup.stop_timeline:
            return step.begin <= start and (step.end is None or stop <= step.end)
    return False


def choose_backup(backups: list[BackupMeta], target: Target, path: list[TimelineStep],
                  chosen_id: str | None) -> tuple[BackupMeta, str]:
    """The backup for a time, LSN, restore point or immediate target (xid targets: ``choose_for_xid``)."""
    if not backups:
        raise RefusedError("the repository holds no backup", hint="take one with walkeeper backup")
    if chosen_id is not None:
        matches = [b for b in backups if b.id == chosen_id]
        if not matches:
            raise RefusedError(f"no backup {chosen_id}", hint="walkeeper backups lists them")
        backup = matches[0]
        problem = _ended_after(backup, target)
        if problem:
            raise RefusedError(f"backup {backup.id} cannot reach the target: {problem}")
        if not _on_path(backup, path):
            raise RefusedError(f"backup {backup.id} (timeline {backup.stop_timeline}) is not on the history of "
                               f"timeline {path[-1].timeline}")
        return backup, "chosen with --backup"
    usable = [b for b in backups if _on_path(b, path)]
    if not usable:
        raise RefusedError(f"no backup lies on the history of timeline {path[-1].timeline}")
    before = [b for b in usable if not _ended_after(b, target)]
    if not before:
        oldest = min(usable, key=chronology.position)
        raise RefusedError(
            f"the target ({target.describe()}) is before the end of every backup: the oldest, {oldest.id}, "
            f"ended at {oldest.stop_time} (LSN {oldest.stop_lsn}); a database cannot be recovered to a moment "
            "before its backup was complete",
        )
    backup = max(before, key=chronology.position)
    if target.kind == "time":
        why = f"the newest backup that ended before {target.value} (ended {backup.stop_time})"
    elif target.kind in ("lsn", "name"):
        why = f"the newest backup that ended before LSN {target.value if target.kind == 'lsn' else target.point.lsn}"  # type: ignore[union-attr]
        why += f" (ended at {backup.stop_lsn})"
    else:
        why = "the newest backup (recovery stops as soon as it is consistent)"
    return backup, why


def xid_choice(repo: Repository, usable: list[BackupMeta], value: int) -> XidChoice:
    """``choose_for_xid`` over backups whose next xids are read lazily: a backup whose metadata predates
    them is read from its stored pg_control (a whole base tar), newest first and only until one qualifies."""
    marks = [XidMark.of(b) for b in sorted(usable, key=chronology.position)]
    for i in range(len(marks) - 1, -1, -1):
        if marks[i].bound is None:
            backup = marks[i].backup
            log.warning("reading backup %s's next transaction id from its stored global/pg_control (its "
                        "metadata predates recording it): decoding %s", backup.id, human_bytes(backup.plain_size))
            marks[i] = XidMark(backup, stored_pg_control(repo, backup).next_xid, None, from_control=True)
        choice = choose_for_xid(marks[i:], value)
        if choice.settled or i == 0:
            return choice
    return choose_for_xid(marks, value)  # no backup: refused there


def _ended_after(backup: BackupMeta, target: Target) -> str | None:
    if target.kind == "time" and target.time is not None and _end_time(backup) >= target.time:
        return f"it ended at {backup.stop_time}, after the target time"
    if target.kind in ("lsn", "name"):
        lsn = target.lsn if target.lsn is not None else None
        if lsn is not None and parse_lsn(backup.stop_lsn) > lsn:
            return f"it ended at LSN {backup.stop_lsn}, after the target LSN"
    return None


def check_coverage(repo: Repository, backup: BackupMeta, target: Target, path: list[TimelineStep]
                   ) -> tuple[str, str | None, int]:
    """Every segment recovery reads must be archived; returns (first, last, count). Raises GapError."""
    size = backup.wal_segment_size or repo.segment_size
    present: dict[int, dict[int, float]] = {}  # tli -> segno -> mtime
    for name, _stored, mtime in repo.iter_wal():
        if name.kind is WalKind.SEGMENT:
            present.setdefault(name.timeline, {})[name.segno(size)] = mtime

    def tli_for(segno: int) -> int:
        # PostgreSQL reads a segment from the newest timeline that had begun by that segment.
        for step in reversed(path):
            if step.begin // size <= segno:
                return step.timeline
        return path[0].timeline

    first = parse_lsn(backup.start_lsn) // size
    if target.kind == "immediate":
        last: int | None = (parse_lsn(backup.stop_lsn) - 1) // size
    elif target.kind in ("lsn", "name") and target.lsn is not None:
        last = max(target.lsn, parse_lsn(backup.stop_lsn) - 1) // size
    else:
        last = None  # time or xid: walk forward (see below)
    segno = first
    count = 0
    while True:
        tli = tli_for(segno)
        mtime = present.get(tli, {}).get(segno)
        name = segment_name(tli, segno, size)
        if mtime is None:
            stop_seg = (parse_lsn(backup.stop_lsn) - 1) // size
            path_tlis = {step.timeline for step in path}
            later = any(s > segno and tli_for(s) == t for t in path_tlis for s in present.get(t, {}))
            if last is not None or segno <= stop_seg or later:
                raise _gap(name, backup, target)
            if target.kind == "time" and target.time is not None and target.time > datetime.now(UTC):
                raise RefusedError(
                    f"the target time {target.value} is in the future (now {format_target_time(datetime.now(UTC))}"
                    " by this host's clock): no archived WAL can reach it yet",
                    hint="choose a moment in the past; to follow the archive as it grows, use --standby",
                )
            if target.kind == "time":
                raise RefusedError(
                    f"the archive ends before {name}, and nothing in it was archived after the target time "
                    f"{target.value}: recovery would stop short of the target",
                    hint="on the primary, run  select pg_switch_wal();  and wait for it to be archived, "
                         "or choose an earlier target",
                )
            return segment_name(tli_for(first), first, size), None, count
        count += 1
        if last is not None and segno >= last:
            return segment_name(tli_for(first), first, size), name, count
        if target.kind == "time" and target.time is not None and \
                archived_after(mtime, target.time) and segno > (parse_lsn(backup.stop_lsn) - 1) // size:
            # The first segment archived after the target time holds (or passes) the target.
            return segment_name(tli_for(first), first, size), name, count
        segno += 1


def check_coverage_settled(repo: Repository, backup: BackupMeta, target: Target, path: list[TimelineStep],
                           gap_wait: float) -> tuple[str, str | None, int]:
    """``check_coverage``, reporting a gap only if it is still there after ``gap_wait`` seconds.

    While the primary archives, parallel pushes may store a segment after a later one; a plan made in
    that moment would refuse a whole archive (as wal-fetch would, see Repository.fetch_wal).
    """
    deadline = clock.monotonic() + gap_wait
    while True:
        try:
            return check_coverage(repo, backup, target, path)
        except GapError:
            left = deadline - clock.monotonic()
            if left <= 0:
                raise
            clock.sleep(min(GAP_RECHECK, left))


def archived_after(mtime: float, moment: datetime) -> bool:
    """Whether an object stored at ``mtime`` may have been stored after ``moment``.

    S3 reports LastModified in whole seconds: an object stored at 12:00:00.700 lists as 12:00:00, before
    a target of 12:00:00.300. A whole-second mtime therefore counts as anywhere in its second. Erring
    this way is safe: if the archive really ends before the target, PostgreSQL itself stops with
    "recovery ended before configured recovery target was reached" instead of ending recovery early.
    """
    if mtime == int(mtime):
        mtime += 1
    return datetime.fromtimestamp(mtime, UTC) > moment


def _gap(name: str, backup: BackupMeta, target: Target) -> GapError:
    return GapError(
        f"WAL segment {name} is missing from the repository; recovery from backup {backup.id} to "
        f"{target.describe()} would stop there. Nothing was written",
        hint="put the segment back, choose a target before the gap, or a backup after it",
    )


def build_plan(repo: Repository, catalog: Catalog, target: Target, *, action: str, target_timeline: str | None,
               exclusive: bool, backup_id: str | None, standby: bool, gap_wait: float = 0.0) -> Plan:
    every = catalog.backups()
    # An incremental backup whose chain lacks a member cannot be restored: never chosen (verify reports it).
    broken = {b.id for b in every if chain_length(b.id, parent_map(every)) is None}
    backups = [b for b in every if b.id not in broken or b.id == backup_id]
    histories = {n.timeline for n, _s, _m in repo.iter_wal() if n.kind is WalKind.HISTORY}
    warnings: list[str] = []
    if target_timeline in (None, "latest"):
        base_tli = min((b.stop_timeline for b in backups), default=1)
        tli = latest_timeline(repo, base_tli, histories)
        explicit = False
    elif target_timeline == "current":
        raise ConfigError("--target-timeline current: give the timeline number (walkeeper wal-list shows them)")
    else:
        try:
            tli = int(target_timeline, 0) if not target_timeline.isdigit() else int(target_timeline)
        except ValueError:
            raise ConfigError(f"--target-timeline {target_timeline!r}: expected a number or 'latest'") from None
        explicit = True
    path = timeline_path(repo, tli)
    if target.kind == "xid" and backup_id is None and target.xid is not None:
        usable = [b for b in backups if _on_path(b, path)]
        if not usable and backups:
            raise RefusedError(f"no backup lies on the history of timeline {path[-1].timeline}")
        choice = xid_choice(repo, usable, target.xid)
        backup, reason = choice.backup, choice.reason
        warnings.extend(choice.warnings)
    else:
        backup, reason = choose_backup(backups, target, path, backup_id)
        if target.kind == "xid" and target.xid is not None:
            mark = XidMark.of(backup)  # --backup: warn from the metadata only (reading pg_control costs a backup)
            if mark.bound is not None and full_xid(target.xid, mark.bound) < mark.bound:
                when = "ended" if mark.stop_next_xid is not None else "began (its checkpoint)"
                warnings.append(f"transaction {format_xid(full_xid(target.xid, mark.bound))} began before backup "
                                f"{backup.id} {when}, next xid {format_xid(mark.bound)}: if it had committed by "
                                "the end of the backup, recovery from it cannot stop at it")
    if not explicit:
        # 'latest' as PostgreSQL computes it starts from the backup's own timeline.
        tli = latest_timeline(repo, backup.stop_timeline, histories)
        path = timeline_path(repo, tli)
    if target.kind == "name" and target.point is not None:
        on = [s.timeline for s in path]
        if target.point.timeline not in on:
            raise RefusedError(f"restore point {target.point.name!r} was created on timeline "
                               f"{target.point.timeline}, which is not on the path {on}",
                               hint=f"add --target-timeline {target.point.timeline}")
    if target.kind == "time" and not explicit and len(path) > 1 and target.time is not None:
        branch = path[-2]
        for name, _s, mtime in repo.iter_wal():
            if name.kind is WalKind.HISTORY and name.timeline == path[-1].timeline:
                created = datetime.fromtimestamp(mtime, UTC)
                if target.time < created:
                    warnings.append(
                        f"timeline {path[-1].timeline} was created at {created.isoformat(timespec='seconds')}, "
                        f"after the target time, by branching from timeline {branch.timeline}; recovery follows "
                        f"timeline {path[-1].timeline}. For timeline {branch.timeline}'s own history after the "
                        f"branch point, use --target-timeline {branch.timeline}")
    if broken:
        warnings.append(f"{plural(len(broken), 'incremental backup')} with a missing chain member not considered "
                        f"({', '.join(sorted(broken))}; walkeeper verify explains)")
    chain = chain_of(backup, every)  # raises BrokenChain for --backup of a broken one
    first, last, count = check_coverage_settled(repo, backup, target, path, gap_wait)
    return Plan(target, backup, reason, tli, explicit, path, first, last, count, action, exclusive, standby,
                warnings, chain)


# -- the command ----------------------------------------------------------------------------------

@dataclass
class PitrResult:
    plan: Plan
    restored: RestoreResult | None
    notes: list[str]
    pgdata: Path
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        """`pitr --json` (docs/json.md): the plan, and what was written unless --dry-run."""
        plan, target, backup = self.plan, self.plan.target, self.plan.backup
        restored = self.restored
        return {
            "pgdata": str(self.pgdata), "dry_run": self.dry_run,
            "target": {"kind": target.kind,
                       "value": target.time.astimezone(UTC).isoformat(timespec="microseconds") if target.time
                       else target.value or None,
                       "settings": [line for line in settings_block(plan, "").splitlines()
                                    if line.startswith("recovery_target")]},
            "backup": {"id": backup.id, "label": backup.label, "stop_time": backup.stop_time,
                       "stop_lsn": backup.stop_lsn, "stop_timeline": backup.stop_timeline},
            "reason": plan.reason,
            "timelines": [{"timeline": s.timeline, "begin_lsn": format_lsn(s.begin),
                           "end_lsn": None if s.end is None else format_lsn(s.end)} for s in plan.path],
            "timeline_explicit": plan.timeline_explicit,
            "wal": {"first": plan.first_wal, "last": plan.last_wal, "segments": plan.segments},
            "action": plan.action, "exclusive": plan.exclusive, "standby": plan.standby,
            "warnings": plan.warnings,
            "restored": None if restored is None else {
                "backup": restored.backup.id, "files": restored.files, "bytes": restored.bytes,
                "seconds": round(restored.seconds, 3)},
            "notes": self.notes,
        }


def make_target(catalog: Catalog, *, time: str | None = None, lsn: str | None = None, xid: str | None = None,
                name: str | None = None, immediate: bool = False, standby: bool = False) -> Target:
    given = [k for k, v in (("time", time), ("lsn", lsn), ("xid", xid), ("name", name),
                            ("immediate", immediate)) if v]
    if len(given) > 1:
        raise ConfigError(f"give exactly one recovery target, not {len(given)} ({', '.join(given)})",
                          hint="PostgreSQL refuses more than one recovery_target* setting")
    if not given:
        if standby:
            return Target("none", "")
        raise ConfigError("give one recovery target: --target-time, --target-lsn, --target-xid, --target-name "
                          "or --target-immediate")
    if time:
        moment = parse_target_time(time)
        return Target("time", format_target_time(moment), time=moment)
    if lsn:
        try:
            value = parse_lsn(lsn)
        except ValueError as exc:
            raise ConfigError(f"--target-lsn: {exc}") from None
        return Target("lsn", lsn.strip().upper(), lsn=value)
    if xid:
        value = parse_xid(xid)
        return Target("xid", str(value), xid=value)
    if name:
        if len(name) >= 64:
            raise ConfigError("--target-name: restore point names are shorter than 64 characters")
        points = [p for p in catalog.restore_points() if p.name == name]
        if not points:
            raise RefusedError(f"no restore point named {name!r} is recorded in the repository",
                               hint="walkeeper restore-points lists them; points created without walkeeper "
                                    "are unknown to it")
        # PostgreSQL stops at the first record with that name it replays.
        point = min(points, key=lambda p: parse_lsn(p.lsn))
        return Target("name", name, lsn=parse_lsn(point.lsn), point=point)
    return Target("immediate", "immediate")


def _check_restored_dir(pgdata: Path) -> str:
    if not (pgdata / "PG_VERSION").exists() or not (pgdata / "global" / "pg_control").exists():
        raise RefusedError(f"--no-restore: {pgdata} does not hold a restored backup (no PG_VERSION/pg_control)")
    label = pgdata / "backup_label"
    if not label.exists():
        raise RefusedError(f"--no-restore: {pgdata} has no backup_label: it is not a freshly restored backup "
                           "(a data directory that already ran cannot be recovered to a point in time)")
    for line in label.read_text(errors="replace").splitlines():
        if line.startswith("START WAL LOCATION:"):
            return line.split(":", 1)[1].split()[0]
    raise RefusedError(f"--no-restore: cannot read START WAL LOCATION from {label}")


def pitr(config: Config, pgdata: str, *, time: str | None = None, lsn: str | None = None, xid: str | None = None,
         name: str | None = None, immediate: bool = False, action: str = "pause", target_timeline: str | None = None,
         exclusive: bool = False, backup_id: str | None = None, standby: bool = False, no_restore: bool = False,
         dry_run: bool = False, config_path: str | None = None, repo_flag: str | None = None,
         tablespace_map: tuple[str, ...] = (), end_of_archive: bool = False) -> PitrResult:
    """``end_of_archive``: no target, recover all archived WAL (restore-test --target latest)."""
    if action not in ACTIONS:
        raise ConfigError(f"--target-action must be one of {', '.join(ACTIONS)}")
    if backup_id is not None and backup_id != "latest":
        from walkeeper.repo.layout import validate_backup_id

        try:
            validate_backup_id(backup_id)
        except InvalidName as exc:
            raise ConfigError(str(exc)) from None
    repo = open_repository(config)
    repo.require_meta()
    catalog = Catalog(repo)
    target = make_target(catalog, time=time, lsn=lsn, xid=xid, name=name, immediate=immediate,
                         standby=standby or end_of_archive)
    directory = Path(os.path.abspath(pgdata))
    if no_restore:
        start = _check_restored_dir(directory)
        if backup_id is None:
            matches = [b for b in catalog.backups() if b.start_lsn == start]
            if not matches:
                raise RefusedError(f"--no-restore: no backup in the repository starts at {start} (from "
                                   f"{directory}/backup_label)", hint="give --backup ID")
            backup_id = matches[-1].id
    elif directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise RefusedError(f"{directory} exists and is not empty; refusing to restore over it",
                           hint="give a new or empty directory, or --no-restore if it holds a freshly restored "
                                "backup")
    if backup_id == "latest":
        backup_id = catalog.resolve("latest").id
    plan = build_plan(repo, catalog, target, action=action, target_timeline=target_timeline,
                      exclusive=exclusive, backup_id=backup_id, standby=standby, gap_wait=config.restore.gap_wait)
    command = restore_command(config_path or config.source, repo_flag)
    if not (config_path or config.source):
        plan.warnings.append("no configuration file: restore_command relies on WALKEEPER_* variables being set "
                             "in the server's environment")
    if dry_run:
        return PitrResult(plan, None, [f"would write into {directory}/postgresql.auto.conf:",
                                       *("    " + line for line in settings_block(plan, command).splitlines())],
                          directory, True)
    if no_restore:
        return PitrResult(plan, None, write_settings(directory, plan, command), directory, False)
    notes: list[str] = []
    # The settings are written before pg_control: a directory is never startable without them.
    restored = restore_any(config, repo, plan.backup, directory, tablespace_map=tablespace_map,
                              before_control=lambda pgdata: notes.extend(write_settings(pgdata, plan, command)))
    return PitrResult(plan, restored, notes, directory, False)

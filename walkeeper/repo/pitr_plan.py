"""PITR planning over what is stored: the timeline walk, the backup for a target, WAL coverage.

Every WAL segment recovery will read (from the backup's start to the target, following timeline history
the way PostgreSQL's ``XLogFileReadAnyTLI`` picks a timeline for each segment) must be present in the
repository before anything is written.
"""

from __future__ import annotations

import time as clock
from dataclasses import dataclass, field
from datetime import UTC, datetime

from walkeeper.core import chronology
from walkeeper.core.errors import GapError, NotFound, RefusedError
from walkeeper.core.units import plural
from walkeeper.core.wal import (
    HistoryEntry,
    WalKind,
    parse_history,
    parse_lsn,
    parse_wal_name,
    segment_name,
)
from walkeeper.repo.catalog import BackupMeta
from walkeeper.repo.chains import describe_chain
from walkeeper.repo.pitr_target import Target, format_target_time
from walkeeper.repo.received import received_ends
from walkeeper.repo.repository import Repository

GAP_RECHECK = 0.5  # seconds between listings while a gap may be a store in flight


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
    sources: str | None = None  # several repositories: where the backup and the WAL come from

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
            + ("all present in the repositories" if self.sources else "all present in the repository"),
        ]
        if self.sources:
            out.append(f"repositories: {self.sources}")
        if self.target.kind != "none":
            if self.action == "pause":
                out.append("target action: pause (PostgreSQL's default): at the target, recovery pauses; check the "
                           "data, then run  select pg_wal_replay_resume();  to end recovery and promote")
            else:
                out.append(f"target action: {self.action}")
        if self.exclusive:
            out.append("the target itself is excluded (recovery_target_inclusive = off)")
        if self.last_wal and self.last_wal.endswith(".partial"):
            out.append(f"recovery ends in a partial segment received by wal-receive ({self.last_wal}): WAL the "
                       "primary wrote after its last upload is not in the repository")
        if self.standby:
            out.append("mode: standby (standby.signal): the server keeps following the archive")
        out.extend(f"warning: {w}" for w in self.warnings)
        return out


def _end_time(backup: BackupMeta) -> datetime:
    return datetime.fromisoformat(backup.stop_time)


def on_path(backup: BackupMeta, path: list[TimelineStep]) -> bool:
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
        if not on_path(backup, path):
            raise RefusedError(f"backup {backup.id} (timeline {backup.stop_timeline}) is not on the history of "
                               f"timeline {path[-1].timeline}")
        return backup, "chosen with --backup"
    usable = [b for b in backups if on_path(b, path)]
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
    return coverage(present, size, backup, target, path, now=datetime.now(UTC), received=received_ends(repo))


def coverage(present: dict[int, dict[int, float]], size: int, backup: BackupMeta, target: Target,
             path: list[TimelineStep], *, now: datetime,
             received: dict[int, dict[int, tuple[float, int]]] | None = None) -> tuple[str, str | None, int]:
    """``check_coverage`` over a listing (timeline -> segment number -> mtime): the pure decision.

    Returns (first segment, last segment or None for "to the end of the archive", count); raises GapError
    for a hole recovery would stop at, RefusedError when the archive cannot reach a time target.
    ``received``: wal-receive's partials (timeline -> segment number -> (stored at, bytes received)); the
    first missing segment with one and nothing later stored is where recovery ends (wal-fetch serves it),
    reported as last segment ``<name>.partial``."""
    received = received or {}

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
            later = any(s > segno and tli_for(s) == t for t in path_tlis
                        for s in [*present.get(t, {}), *received.get(t, {})])
            end = received.get(tli, {}).get(segno)
            if end is not None and not later:
                ends_at = segno * size + end[1]  # the LSN up to which the partial holds WAL
                needed = max(parse_lsn(backup.stop_lsn), target.lsn or 0) if last is not None or \
                    segno <= stop_seg else 0
                reaches_time = target.kind != "time" or target.time is None or archived_after(end[0], target.time)
                if (last is None or segno == last) and needed <= ends_at and reaches_time:
                    return segment_name(tli_for(first), first, size), f"{name}.partial", count + 1
            if last is not None or segno <= stop_seg or later:
                raise _gap(name, backup, target)
            if target.kind == "time" and target.time is not None and target.time > now:
                raise RefusedError(
                    f"the target time {target.value} is in the future (now {format_target_time(now)}"
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


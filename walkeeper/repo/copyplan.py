"""What `walkeeper copy` does, in which order, and how far a copy lags: pure decisions, no I/O.

The order is the promise that makes a copy safe to kill at any moment: a backup is listed in the
destination (its ``backup.json`` written) only after its data objects, the WAL it needs from its
start to its stop (its ``.backup`` label and the history files of its timelines included) and, for
an incremental backup, its parent are there. A dump is listed after its streams. Everything else is
one independent object each. The destination's own atomic puts do the rest: a rerun finds each
object either whole or absent, checks the whole ones (same plaintext SHA-256: skipped; different:
refused) and copies the absent ones.

walkeeper/repo/copier.py reads both repositories into the shapes below and carries the plan out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# -- operations ------------------------------------------------------------------------------------

COPY = "copy"  # absent from the destination: copy it
VERIFY = "verify"  # present in the destination: identical is skipped, different is refused
LIST_BACKUP = "list-backup"  # write the destination's backup.json (everything it needs is there)
LIST_DUMP = "list-dump"
SAME_BACKUP = "same-backup"  # already listed in the destination: compare the metadata, visit nothing else
SAME_DUMP = "same-dump"
UNUSABLE = "unusable"  # the source itself lacks what this backup needs: not copied, reported

KINDS = ("backups", "wal", "dumps", "restore-points")


@dataclass(frozen=True)
class Action:
    op: str
    key: str  # an object key; a backup or dump id for the list/same/unusable operations
    kind: str  # "wal", "backup", "dump", "restore-point"
    owner: str | None = None  # the backup or dump an object belongs to
    detail: str = ""  # UNUSABLE: what is missing


@dataclass(frozen=True)
class WalRef:
    key: str
    segno: int | None  # None for history files
    mtime: float


@dataclass(frozen=True)
class BackupRef:
    id: str
    objects: tuple[str, ...]  # data object keys (the tars), in the metadata's order
    wal: tuple[str, ...]  # WAL keys it needs: history files, its .backup label, start..stop segments
    missing: tuple[str, ...] = ()  # of those, what the source does not hold
    parent: str | None = None  # incremental backups: the backup they build on
    start_segno: int = 0
    start_time: float = 0.0


@dataclass(frozen=True)
class DumpRef:
    id: str
    objects: tuple[str, ...]  # the reservation marker first, then the streams
    start_time: float = 0.0


@dataclass(frozen=True)
class RestorePointRef:
    key: str
    lsn: int | None
    time: float


@dataclass
class SourceListing:
    """What the source holds, as the planner needs it (backups oldest first by WAL position)."""

    wal: list[WalRef] = field(default_factory=list)
    backups: list[BackupRef] = field(default_factory=list)
    dumps: list[DumpRef] = field(default_factory=list)
    restore_points: list[RestorePointRef] = field(default_factory=list)
    segment_size: int = 16 * 1024 * 1024


@dataclass
class DestListing:
    keys: set[str] = field(default_factory=set)
    backups: set[str] = field(default_factory=set)  # listed (complete) backup ids
    dumps: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Selection:
    kinds: frozenset[str] = frozenset(KINDS)
    since_backup: str | None = None  # this backup and every later one (by WAL position)
    since_time: float | None = None  # backups started, dumps taken, WAL archived at or after this


def _with_parents(chosen: list[BackupRef], every: list[BackupRef]) -> list[BackupRef]:
    """``chosen`` plus the parents they build on, each parent before its children."""
    by_id = {b.id: b for b in every}
    ordered: list[BackupRef] = []
    seen: set[str] = set()

    def visit(backup: BackupRef, trail: tuple[str, ...]) -> None:
        if backup.id in seen:
            return
        if backup.parent is not None:
            if backup.parent in trail:
                raise ValueError(f"backup {backup.id}: its parents form a cycle ({' -> '.join(trail)})")
            parent = by_id.get(backup.parent)
            if parent is not None:
                visit(parent, (*trail, backup.id))
        seen.add(backup.id)
        ordered.append(backup)

    for backup in chosen:
        visit(backup, (backup.id,))
    return ordered


def select_backups(source: SourceListing, selection: Selection) -> list[BackupRef]:
    """The backups a copy carries, parents first; --since cuts by position (an id) or start time."""
    backups = source.backups
    if selection.since_backup is not None:
        ids = [b.id for b in backups]
        backups = backups[ids.index(selection.since_backup):] if selection.since_backup in ids else []
    elif selection.since_time is not None:
        backups = [b for b in backups if b.start_time >= selection.since_time]
    return _with_parents(backups, source.backups)


def wal_cut(source: SourceListing, selection: Selection, chosen: list[BackupRef]) -> tuple[int | None, float | None]:
    """(first segment number, first archive time) of the WAL to copy; (None, None): all of it.

    With --since the WAL starts where the oldest backup copied starts, so that every backup copied
    can be recovered to any point after it; with a time and no backup after it, at that time.
    """
    if selection.since_backup is None and selection.since_time is None:
        return None, None
    if chosen:
        return min(b.start_segno for b in chosen), None
    return None, selection.since_time if selection.since_time is not None else float("inf")


def plan(source: SourceListing, dest: DestListing, selection: Selection) -> list[Action]:
    """Every step of a copy in dependency order (see the module docstring)."""
    actions: list[Action] = []
    done: set[str] = set()

    def obj(key: str, kind: str, owner: str | None = None) -> None:
        if key not in done:
            done.add(key)
            actions.append(Action(VERIFY if key in dest.keys else COPY, key, kind, owner))

    chosen = select_backups(source, selection) if "backups" in selection.kinds else []
    histories = [w for w in source.wal if w.segno is None]
    if chosen or "wal" in selection.kinds:
        for ref in histories:  # tiny, and recovery along any timeline needs them
            obj(ref.key, "wal")
    unusable: set[str] = set()
    for backup in chosen:
        if backup.id in dest.backups:
            actions.append(Action(SAME_BACKUP, backup.id, "backup"))
            continue
        if backup.missing or backup.parent in unusable:
            unusable.add(backup.id)
            what = f"WAL {', '.join(k.rsplit('/', 1)[1] for k in backup.missing[:3])}" if backup.missing else \
                f"its parent {backup.parent}"
            actions.append(Action(UNUSABLE, backup.id, "backup", detail=f"the source lacks {what}"))
            continue
        if backup.parent is not None and backup.parent not in {b.id for b in source.backups}:
            unusable.add(backup.id)
            actions.append(Action(UNUSABLE, backup.id, "backup",
                                  detail=f"the source lacks its parent {backup.parent}"))
            continue
        for key in backup.objects:
            obj(key, "backup", backup.id)
        for key in backup.wal:
            obj(key, "wal", backup.id)
        actions.append(Action(LIST_BACKUP, backup.id, "backup"))
    if "wal" in selection.kinds:
        first_segno, first_time = wal_cut(source, selection, chosen)
        for ref in source.wal:
            if ref.segno is None:
                continue
            if first_segno is not None and ref.segno < first_segno:
                continue
            if first_time is not None and ref.mtime < first_time:
                continue
            obj(ref.key, "wal")
    since_time = selection.since_time
    if selection.since_backup is not None:
        since_time = next((b.start_time for b in source.backups if b.id == selection.since_backup), float("inf"))
    if "dumps" in selection.kinds:
        for dump in source.dumps:
            if since_time is not None and dump.start_time < since_time:
                continue
            if dump.id in dest.dumps:
                actions.append(Action(SAME_DUMP, dump.id, "dump"))
                continue
            for key in dump.objects:
                obj(key, "dump", dump.id)
            actions.append(Action(LIST_DUMP, dump.id, "dump"))
    if "restore-points" in selection.kinds:
        for point in source.restore_points:
            if since_time is not None and point.time < since_time:
                continue
            obj(point.key, "restore-point")
    return actions


# -- lag -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LagInput:
    """One repository's state: WAL segments as (timeline, segno, mtime, name) and backups oldest first."""

    segments: list[tuple[int, int, float, str]]
    backups: list[tuple[str, float]]  # (id, stop time)


@dataclass(frozen=True)
class CopyLag:
    seconds: float  # 0: the destination holds the source's newest WAL segment and newest backup
    wal_behind: int  # source segments newer than the destination's newest
    backups_behind: list[str]  # source backups newer than the destination's newest that it lacks
    oldest_missing: str | None  # what has waited longest ("segment ..." or "backup ...")


def copy_lag(source: LagInput, dest: LagInput, now: float) -> CopyLag:
    """How long the destination has been behind: the age of the oldest source WAL segment or backup
    newer than everything the destination holds (an expire that ran differently is no lag)."""
    dest_newest = max(((t, s) for t, s, _m, _n in dest.segments), default=None)
    waiting = sorted((m, n) for t, s, m, n in source.segments if dest_newest is None or (t, s) > dest_newest)
    dest_ids = {i for i, _s in dest.backups}
    newest_listed = max((n for n, (i, _s) in enumerate(source.backups) if i in dest_ids), default=-1)
    missing = [(stop, i) for i, stop in source.backups[newest_listed + 1:] if i not in dest_ids]
    oldest = []
    if waiting:
        oldest.append((waiting[0][0], f"WAL {waiting[0][1]}"))
    if missing:
        oldest.append((min(missing)[0], f"backup {min(missing)[1]}"))
    first = min(oldest, default=None)
    return CopyLag(seconds=max(0.0, now - first[0]) if first else 0.0, wal_behind=len(waiting),
                   backups_behind=[i for _s, i in missing], oldest_missing=first[1] if first else None)

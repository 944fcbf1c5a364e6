"""One listing of a repository, shared by verify, status, check and expire.

What is there (WAL objects per timeline, backups, restore points), how timelines descend from one
another (history files), and which segments a recovery along a timeline needs. Backups come from
walkeeper.repo.catalog through ``load_backups``, the one place that knows the catalog's shape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from walkeeper.codec import decode_bytes
from walkeeper.core.chronology import oldest_first
from walkeeper.core.errors import InvalidName, InvalidWal, WalkeeperError
from walkeeper.core.wal import (
    DEFAULT_SEGMENT_SIZE,
    HistoryEntry,
    WalKind,
    WalName,
    parse_history,
    parse_lsn,
    parse_wal_name,
    segment_name,
)
from walkeeper.repo.layout import (
    BACKUP_PREFIX,
    RESTORE_POINT_PREFIX,
    WAL_PREFIX,
    parse_received_partial_key,
)
from walkeeper.repo.repository import RepoMeta, Repository
from walkeeper.storage.base import Leftover, ObjectInfo

if TYPE_CHECKING:
    from walkeeper.repo.writers import WriterState

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class WalObject:
    name: WalName
    key: str
    size: int
    mtime: float


@dataclass(frozen=True)
class BackupInfo:
    """What retention and verification need to know about one complete backup."""

    id: str
    timeline: int
    stop_timeline: int
    start_segno: int
    stop_segno: int
    start_wal: str
    stop_wal: str
    start_lsn: int
    stop_lsn: int
    start_time: float  # the backup host's clock: for time windows and ages only, never for order
    stop_time: float
    wal_mode: str
    stored_size: int
    objects: tuple[tuple[str, str], ...]  # (key, sha256) of each data object
    clock_skew: float | None = None  # host minus server clock at backup time, when measured
    type: str = "full"  # or "incremental" (walkeeper.repo.chains): then ``parent`` names the backup it needs
    parent: str | None = None
    manifest: tuple[str, str] | None = None  # (key, sha256) of its separately stored backup_manifest

    @property
    def self_contained(self) -> bool:
        return self.wal_mode == "include"


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def load_backups(repo: Repository) -> tuple[list[BackupInfo], list[str]]:
    """(complete backups oldest first by WAL position, ids of incomplete ones); empty without the backups
    feature."""
    try:
        from walkeeper.repo.catalog import Catalog
    except ImportError:  # pragma: no cover - the backups feature is not installed
        return [], []
    catalog = Catalog(repo)
    size = repo.segment_size
    infos = []
    for meta in catalog.backups():
        start, stop = parse_wal_name(meta.start_wal), parse_wal_name(meta.stop_wal)
        infos.append(BackupInfo(
            id=meta.id, timeline=meta.timeline, stop_timeline=meta.stop_timeline,
            start_segno=start.segno(size), stop_segno=stop.segno(size), start_wal=meta.start_wal,
            stop_wal=meta.stop_wal, start_lsn=parse_lsn(meta.start_lsn), stop_lsn=parse_lsn(meta.stop_lsn),
            start_time=_epoch(meta.start_time), stop_time=_epoch(meta.stop_time), wal_mode=meta.wal_mode,
            stored_size=meta.stored_size, objects=tuple((o.key, o.sha256) for o in meta.objects),
            clock_skew=meta.clock_skew, type=meta.type, parent=meta.parent,
            manifest=(meta.manifest_key, meta.manifest_sha256) if meta.manifest_key and meta.manifest_sha256 else None,
        ))
    return oldest_first(infos), catalog.incomplete_backup_ids()


@dataclass
class Inventory:
    repo: Repository
    meta: RepoMeta | None
    segment_size: int
    wal: list[WalObject] = field(default_factory=list)
    segments: dict[int, dict[int, WalObject]] = field(default_factory=dict)  # tli -> segno -> object
    partials: dict[int, list[WalObject]] = field(default_factory=dict)
    labels: dict[int, list[WalObject]] = field(default_factory=dict)
    history_files: dict[int, WalObject] = field(default_factory=dict)
    histories: dict[int, list[HistoryEntry]] = field(default_factory=dict)
    history_errors: dict[int, str] = field(default_factory=dict)
    backups: list[BackupInfo] = field(default_factory=list)
    incomplete_backups: list[str] = field(default_factory=list)
    backup_objects: dict[str, list[tuple[str, int, float]]] = field(default_factory=dict)  # id -> keys
    # Writers (walkeeper/repo/writers.py): incomplete backups split into running ones and the rest.
    running_backups: list[WriterState] = field(default_factory=list)
    writer_states: dict[str, WriterState] = field(default_factory=dict)  # every incomplete backup with a marker
    complete_ids: set[str] = field(default_factory=set)
    leftovers: list[Leftover] = field(default_factory=list)  # only with read_inventory(leftovers=True)
    newest_mtime: float | None = None  # the storage's clock, as of its latest write
    restore_points: list[tuple[str, int, float]] = field(default_factory=list)  # (key, size, mtime)
    received: list[tuple[str, int, str]] = field(default_factory=list)  # wal-receive partials: (key, size, segment)
    total_bytes: int = 0

    # -- timelines ------------------------------------------------------------------------------

    def timelines(self) -> list[int]:
        return sorted(set(self.segments) | set(self.partials) | set(self.history_files) | set(self.labels))

    def known(self, tli: int) -> bool:
        """Timeline 1 needs no history file; every later one does (or recovery cannot follow it)."""
        return tli == 1 or tli in self.histories

    def lineage(self, tli: int) -> list[tuple[int, int, int | None]]:
        """[(timeline, first segno, last segno or None)] from timeline 1 (or the oldest known) to ``tli``.

        Recovery reads a segment from the newest timeline that had begun by then, so the segment
        holding a switch point comes from the child: the parent is needed up to the one before.
        """
        entries = self.histories.get(tli, [])
        path: list[tuple[int, int, int | None]] = []
        begin = 0
        for entry in entries:
            switch = entry.switch_lsn // self.segment_size
            path.append((entry.parent, begin, switch - 1))
            begin = switch
        path.append((tli, begin, None))
        return path

    def begin_segno(self, tli: int) -> int:
        return self.lineage(tli)[-1][1]

    def descends_from(self, child: int, ancestor: int) -> bool:
        return child == ancestor or any(t == ancestor for t, _b, _e in self.lineage(child))

    def last_segno(self, tli: int) -> int | None:
        segs = self.segments.get(tli)
        return max(segs) if segs else None

    def required_segments(self, tli: int, first: int, last: int) -> list[tuple[int, int]]:
        """(timeline, segno) a recovery along ``tli`` reads to replay segments first..last."""
        needed = []
        for t, begin, end in self.lineage(tli):
            lo = max(begin, first)
            hi = last if end is None else min(end, last)
            needed.extend((t, s) for s in range(lo, hi + 1))
        return needed

    def name_of(self, tli: int, segno: int) -> str:
        return segment_name(tli, segno, self.segment_size)

    # -- newest ---------------------------------------------------------------------------------

    def newest_segment(self) -> WalObject | None:
        """The newest archived segment: highest timeline first, then highest segment number."""
        best: WalObject | None = None
        for tli in sorted(self.segments):
            segs = self.segments[tli]
            candidate = segs[max(segs)]
            if best is None or (candidate.name.timeline, candidate.name.segno(self.segment_size)) > \
                    (best.name.timeline, best.name.segno(self.segment_size)):
                best = candidate
        return best

    def newest_wal_mtime(self) -> float | None:
        """When the last WAL file of any kind arrived (what 'is archiving alive?' asks)."""
        return max((o.mtime for o in self.wal), default=None)


    def dead_leftovers(self, now: float) -> list[Leftover]:
        """Leftovers no living writer can still need (what expire and the next backup remove)."""
        from walkeeper.repo.writers import leftover_is_dead

        return [item for item in self.leftovers
                if leftover_is_dead(item, now, self.complete_ids, self.writer_states)]


def read_inventory(repo: Repository, *, backups: bool = True, histories: bool = True,
                   leftovers: bool = False) -> Inventory:
    """List the repository once (and its leftovers if asked). Needs the codec only for history files."""
    meta = repo.meta()
    size = (meta.wal_segment_size if meta else None) or DEFAULT_SEGMENT_SIZE
    inv = Inventory(repo=repo, meta=meta, segment_size=size)
    backup_listing: list[ObjectInfo] = []
    for info in repo.storage.list(""):
        inv.total_bytes += info.size
        inv.newest_mtime = max(inv.newest_mtime or 0.0, info.mtime)
        if info.key.startswith(WAL_PREFIX):
            try:
                name = parse_wal_name(info.key.rsplit("/", 1)[1])
            except InvalidName:
                log.warning("ignoring unexpected object %s", info.key)
                continue
            obj = WalObject(name, info.key, info.size, info.mtime)
            inv.wal.append(obj)
            if name.kind is WalKind.SEGMENT:
                inv.segments.setdefault(name.timeline, {})[name.segno(size)] = obj
            elif name.kind is WalKind.PARTIAL:
                inv.partials.setdefault(name.timeline, []).append(obj)
            elif name.kind is WalKind.BACKUP:
                inv.labels.setdefault(name.timeline, []).append(obj)
            else:
                inv.history_files[name.timeline] = obj
        elif info.key.startswith(BACKUP_PREFIX):
            backup_listing.append(info)
            parts = info.key.split("/")
            if len(parts) == 3:
                inv.backup_objects.setdefault(parts[1], []).append((info.key, info.size, info.mtime))
        elif (received := parse_received_partial_key(info.key)) is not None:
            inv.received.append((info.key, info.size, received[0]))
        elif info.key.startswith(RESTORE_POINT_PREFIX):
            inv.restore_points.append((info.key, info.size, info.mtime))
    if histories:
        for tli, obj in sorted(inv.history_files.items()):
            try:
                _header, data = decode_bytes(repo.keyring, repo.storage.get(obj.key), expected_name=obj.name.name)
                inv.histories[tli] = parse_history(data.decode("utf-8", errors="replace"))
            except (WalkeeperError, InvalidWal) as exc:
                inv.history_errors[tli] = str(exc)
    if backups and inv.backup_objects:
        from walkeeper.repo.writers import writer_states

        inv.backups, incomplete = load_backups(repo)
        inv.complete_ids, inv.writer_states = writer_states(repo.storage, backup_listing, newest=inv.newest_mtime)
        inv.running_backups = [s for s in inv.writer_states.values() if s.alive]
        inv.incomplete_backups = [i for i in incomplete if not (i in inv.writer_states and inv.writer_states[i].alive)]
    if leftovers:
        inv.leftovers = list(repo.storage.list_leftovers(""))
    return inv


def restore_point_lsn(key: str) -> int | None:
    """The LSN in a restore point's key (``restore-points/<TIME>-<LSN HEX 16>.json``)."""
    stem = key.rsplit("/", 1)[-1].removesuffix(".json")
    try:
        return int(stem.rsplit("-", 1)[1], 16)
    except (IndexError, ValueError):
        return None

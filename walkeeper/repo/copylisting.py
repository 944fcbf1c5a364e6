"""Read two repositories into what the copy planner and the copy-lag figure need (one listing each).

Built on walkeeper.repo.inventory (WAL, timelines, backups' keys) so that copy sees the repository
as verify, status and expire do; backups' and dumps' metadata are read as stored documents, every
field kept, because the copy must carry fields a newer walkeeper wrote (an incremental backup's
``type`` and ``parent``) even where this one does not know them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from walkeeper.core.chronology import oldest_first
from walkeeper.core.config import Config
from walkeeper.core.errors import IntegrityError, InvalidName
from walkeeper.core.wal import WalKind, parse_lsn, parse_wal_name
from walkeeper.repo.catalog import BackupMeta, Catalog, DumpMeta
from walkeeper.repo.copyplan import (
    BackupRef,
    CopyLag,
    DestListing,
    DumpRef,
    LagInput,
    RestorePointRef,
    SourceListing,
    WalRef,
    copy_lag,
)
from walkeeper.repo.inventory import Inventory, read_inventory, restore_point_lsn
from walkeeper.repo.layout import (
    BACKUP_ID_RE,
    BACKUP_META,
    BACKUP_PREFIX,
    DUMP_META,
    DUMP_PREFIX,
    RESTORE_POINT_PREFIX,
    backup_key,
    dump_key,
    wal_key,
)
from walkeeper.repo.repository import Repository, open_repository


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class SourceState:
    """The source as the copy needs it: the planner's listing plus what the copier checks against."""

    listing: SourceListing
    backup_docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    dump_docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    expected: dict[str, str] = field(default_factory=dict)  # key -> plaintext sha256 from the metadata
    sizes: dict[str, int] = field(default_factory=dict)  # key -> stored size in the source
    inventory: Inventory | None = None


def _backup_wal(inv: Inventory, meta: BackupMeta) -> tuple[list[str], list[str]]:
    """(keys of the WAL a backup needs to be restored, those the repository lacks)."""
    if meta.wal_mode == "include":
        return [], []
    size = inv.segment_size
    start, stop = parse_wal_name(meta.start_wal), parse_wal_name(meta.stop_wal)
    needed: list[str] = []
    missing: list[str] = []
    present = {o.key for o in inv.wal}
    for tli, _begin, _end in inv.lineage(meta.stop_timeline):
        if tli > 1:
            key = wal_key(parse_wal_name(f"{tli:08X}.history"))
            needed.append(key)
            if key not in present:
                missing.append(key)
    label = wal_key(parse_wal_name(f"{meta.start_wal}.{parse_lsn(meta.start_lsn) % size:08X}.backup"))
    if label in present:  # recovery does not need it; it records the backup's start and stop in the archive
        needed.append(label)
    for tli, segno in inv.required_segments(meta.stop_timeline, start.segno(size), stop.segno(size)):
        key = wal_key(parse_wal_name(inv.name_of(tli, segno)))
        needed.append(key)
        if key not in present:
            missing.append(key)
    return needed, missing


def _stamp_epoch(key: str) -> float:
    """The time in a restore point's key (``<YYYYMMDDTHHMMSSffffff>Z-<LSN>.json``)."""
    stamp = key[len(RESTORE_POINT_PREFIX):].split("-", 1)[0]
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return 0.0


def read_source(repo: Repository) -> SourceState:
    inv = read_inventory(repo, backups=False, histories=True)
    size = inv.segment_size
    state = SourceState(SourceListing(segment_size=size), inventory=inv)
    for obj in inv.wal:
        segno = None if obj.name.kind is WalKind.HISTORY else obj.name.segno(size)
        state.listing.wal.append(WalRef(obj.key, segno, obj.mtime))
        state.sizes[obj.key] = obj.size
    metas = []
    for backup_id, objects in sorted(inv.backup_objects.items()):
        for key, stored, _mtime in objects:
            state.sizes[key] = stored
        if not BACKUP_ID_RE.match(backup_id) or not any(k.endswith("/" + BACKUP_META) for k, _s, _m in objects):
            continue
        key = backup_key(backup_id, BACKUP_META)
        doc = Catalog(repo).document(key)
        meta = BackupMeta.from_dict(doc, key)
        if meta.id != backup_id:
            raise IntegrityError(f"{key} describes backup {meta.id}: swapped metadata")
        state.backup_docs[backup_id] = doc
        metas.append(meta)
    for meta in oldest_first(metas):
        wal, missing = _backup_wal(inv, meta)
        for obj in meta.objects:
            state.expected[obj.key] = obj.sha256
        doc = state.backup_docs[meta.id]
        parent = doc.get("parent")
        objects = [o.key for o in meta.objects]
        manifest = doc.get("manifest_key")  # incremental-capable backups store their backup_manifest alone
        if isinstance(manifest, str) and manifest.startswith(backup_key(meta.id, "")) and manifest in state.sizes:
            objects.append(manifest)
            if isinstance(doc.get("manifest_sha256"), str):
                state.expected[manifest] = doc["manifest_sha256"]
        state.listing.backups.append(BackupRef(
            id=meta.id, objects=tuple(objects), wal=tuple(wal), missing=tuple(missing),
            parent=parent if isinstance(parent, str) else None,
            start_segno=parse_wal_name(meta.start_wal).segno(size), start_time=_epoch(meta.start_time)))
    dump_keys: dict[str, list[str]] = {}
    for info in repo.storage.list(DUMP_PREFIX):
        parts = info.key.split("/")
        if len(parts) == 3 and BACKUP_ID_RE.match(parts[1]):
            dump_keys.setdefault(parts[1], []).append(info.key)
            state.sizes[info.key] = info.size
    for dump_id, keys in sorted(dump_keys.items()):
        key = dump_key(dump_id, DUMP_META)
        if key not in keys:
            continue  # a dump in progress or killed: never listed, never copied
        doc = Catalog(repo).document(key)
        dump = DumpMeta.from_dict(doc, key)
        state.dump_docs[dump_id] = doc
        for item in dump.items:
            state.expected[item.key] = item.sha256
        reserved = [k for k in keys if k.endswith("/reserved")]
        state.listing.dumps.append(DumpRef(dump_id, tuple(reserved + [i.key for i in dump.items]),
                                           _epoch(dump.start_time)))
    for key, stored, _mtime in inv.restore_points:
        if key.endswith(".json"):
            state.sizes[key] = stored
            state.listing.restore_points.append(RestorePointRef(key, restore_point_lsn(key), _stamp_epoch(key)))
    return state


def read_dest(repo: Repository) -> DestListing:
    dest = DestListing()
    for info in repo.storage.list(""):
        dest.keys.add(info.key)
        parts = info.key.split("/")
        if len(parts) == 3 and BACKUP_ID_RE.match(parts[1]):
            if f"{parts[0]}/" == BACKUP_PREFIX and parts[2] == BACKUP_META:
                dest.backups.add(parts[1])
            elif f"{parts[0]}/" == DUMP_PREFIX and parts[2] == DUMP_META:
                dest.dumps.add(parts[1])
    return dest


def lag_input(inv: Inventory) -> LagInput:
    """What copy_lag compares, from a repository's inventory (read with backups)."""
    size = inv.segment_size
    segments = []
    for obj in inv.wal:
        if obj.name.kind is WalKind.SEGMENT:
            try:
                segments.append((obj.name.timeline, obj.name.segno(size), obj.mtime, obj.name.name))
            except InvalidName:
                continue
    return LagInput(segments, [(b.id, b.stop_time) for b in inv.backups])


@dataclass(frozen=True)
class LagFigure:
    """How far repository ``destination`` lags behind ``source`` (names as configured)."""

    source: str
    destination: str
    lag: CopyLag

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.destination, **asdict(self.lag)}


def copy_lags(config: Config, source: str | None = None, *, now: float | None = None) -> list[LagFigure]:
    """Each other configured repository's lag behind ``source`` (default: the first, where backups are
    taken and copies start); empty with one repository."""
    names = config.repository_names()
    if len(names) < 2:
        return []
    src_config = config.for_repository(source)
    now = time.time() if now is None else now
    src = open_repository(src_config)
    try:
        src_input = lag_input(read_inventory(src, histories=False))
        figures = []
        for name in names:
            if name == src_config.repository_name:
                continue
            dst = open_repository(config.for_repository(name))
            try:
                figures.append(LagFigure(src_config.repository_name, name,
                                         copy_lag(src_input, lag_input(read_inventory(dst, histories=False)), now)))
            finally:
                dst.storage.close()
        return figures
    finally:
        src.storage.close()

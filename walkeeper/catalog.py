"""Backups and restore points in the repository, on top of Repository (WAL layout untouched).

Layout (keys)::

    backups/<ID>/<TAR NAME>.tar         one object per tar of a base backup (base.tar, <oid>.tar)
    backups/<ID>/backup.json            the backup's metadata, written LAST: a backup without it
                                        is not listed and cannot be restored (an interrupted one)
    restore-points/<TIME>-<LSN>.json    one object per restore point

Every object here goes through the codec like WAL does (compressed, encrypted, authenticated,
its key bound into the header), so metadata cannot be edited or swapped unnoticed either.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from walkeeper.chronology import newest, oldest_first
from walkeeper.codec import decode_bytes, encode_bytes
from walkeeper.errors import IntegrityError, InvalidName, NotFound, RefusedError, WalkeeperError
from walkeeper.repository import Repository

log = logging.getLogger(__name__)

BACKUP_PREFIX = "backups/"
RESTORE_POINT_PREFIX = "restore-points/"
BACKUP_META = "backup.json"
BACKUP_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z(-[0-9]{1,3})?$")
RESTORE_POINT_KEY_RE = re.compile(r"^[0-9]{8}T[0-9]{12}Z-[0-9A-F]{16}\.json$")


def validate_backup_id(backup_id: str) -> str:
    if not isinstance(backup_id, str) or not BACKUP_ID_RE.match(backup_id):
        raise InvalidName(f"not a backup id: {backup_id!r}",
                          hint="ids look like 20260101T120000Z; see walkeeper backups")
    return backup_id


def backup_key(backup_id: str, name: str) -> str:
    return f"{BACKUP_PREFIX}{validate_backup_id(backup_id)}/{name}"


@dataclass(frozen=True)
class BackupObject:
    """One stored tar of a backup."""

    key: str
    tar: str  # base.tar or <oid>.tar
    tablespace_oid: str | None
    location: str | None  # original tablespace directory
    plain_size: int
    stored_size: int
    sha256: str


@dataclass(frozen=True)
class BackupMeta:
    id: str
    label: str
    start_lsn: str
    stop_lsn: str
    start_wal: str
    stop_wal: str
    timeline: int
    stop_timeline: int
    start_time: str  # ISO 8601 UTC, when pg_basebackup was started
    stop_time: str  # ISO 8601 UTC, when the backup had ended (after pg_basebackup returned)
    pg_version: int
    system_identifier: str
    wal_segment_size: int
    wal_mode: str  # "archive" (WAL from the repository) or "include" (self-contained)
    plain_size: int
    stored_size: int
    objects: list[BackupObject]
    tablespaces: list[dict[str, str]] = field(default_factory=list)
    checkpoint_lsn: str | None = None
    # Transaction ids (64-bit: epoch << 32 | xid), for choosing a backup for an xid target; None in
    # backups taken before walkeeper recorded them (then read from the stored global/pg_control).
    checkpoint_next_xid: int | None = None  # the next xid of the checkpoint in the backup's pg_control
    stop_next_xid: int | None = None  # the server's next xid once the backup had ended (snapshot xmax)
    host: str | None = None
    walkeeper_version: str | None = None
    format: int = 1
    clock_skew: float | None = None  # seconds the host clock was ahead of the server's (None: not measured)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str) -> BackupMeta:
        try:
            fields = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
            fields["objects"] = [BackupObject(**o) for o in fields.get("objects", [])]
            meta = cls(**fields)
        except TypeError as exc:
            raise IntegrityError(f"{where}: not valid backup metadata ({exc})") from None
        if meta.format != 1:
            raise IntegrityError(f"{where}: backup metadata format {meta.format} is not supported")
        validate_backup_id(meta.id)
        return meta

    def summary(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: str
    time: str  # ISO 8601 with offset, from the server's now()
    timeline: int
    system_identifier: str
    wal_file: str


class Catalog:
    """Backup and restore point objects of one repository."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    # -- encoded JSON objects ----------------------------------------------------------------

    def _put_json(self, key: str, doc: bytes, *, overwrite: bool = False) -> None:
        blob, _sha = encode_bytes(self.repo.codec.for_metadata(), key, doc)
        self.repo.storage.put(key, blob, overwrite=overwrite)

    def _get_json(self, key: str) -> dict[str, Any]:
        blob = self.repo.storage.get(key)
        _header, data = decode_bytes(self.repo.keyring, blob, expected_name=key)
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(f"{key} is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise IntegrityError(f"{key} is not a JSON object")
        return doc

    # -- backups -------------------------------------------------------------------------------

    def save_backup(self, meta: BackupMeta) -> None:
        """Publish a backup: its metadata is the last object written."""
        self._put_json(backup_key(meta.id, BACKUP_META), meta.to_json())

    def backup_ids(self) -> list[str]:
        """Ids with a metadata object (complete backups), by id: the host clock's order, not an age order."""
        ids = []
        for info in self.repo.storage.list(BACKUP_PREFIX):
            parts = info.key.split("/")
            if len(parts) == 3 and parts[2] == BACKUP_META and BACKUP_ID_RE.match(parts[1]):
                ids.append(parts[1])
        return sorted(ids)

    def incomplete_backup_ids(self) -> list[str]:
        """Ids with data objects but no metadata: interrupted backups (not usable)."""
        seen: dict[str, bool] = {}
        for info in self.repo.storage.list(BACKUP_PREFIX):
            parts = info.key.split("/")
            if len(parts) == 3 and BACKUP_ID_RE.match(parts[1]):
                seen[parts[1]] = seen.get(parts[1], False) or parts[2] == BACKUP_META
        return sorted(i for i, complete in seen.items() if not complete)

    def backup(self, backup_id: str) -> BackupMeta:
        key = backup_key(backup_id, BACKUP_META)
        try:
            doc = self._get_json(key)
        except NotFound:
            raise NotFound(f"no backup {backup_id} in {self.repo.storage.url}",
                           hint="walkeeper backups lists them") from None
        meta = BackupMeta.from_dict(doc, key)
        if meta.id != backup_id:
            raise IntegrityError(f"{key} describes backup {meta.id}: swapped metadata")
        return meta

    def backups(self) -> list[BackupMeta]:
        """Every complete backup, oldest first by WAL position (walkeeper.chronology); unreadable
        metadata is an error, never skipped."""
        return oldest_first(self.backup(i) for i in self.backup_ids())

    def resolve(self, backup_id: str | None) -> BackupMeta:
        """``None`` or "latest": the newest backup by WAL position, whatever the clocks said."""
        if backup_id in (None, "latest"):
            latest = newest(self.backups())
            if latest is None:
                raise RefusedError(f"no backups in {self.repo.storage.url}", hint="take one with walkeeper backup")
            return latest
        return self.backup(backup_id)

    def new_backup_id(self, stamp: str) -> str:
        """A free id for a backup started at ``stamp`` (YYYYMMDDTHHMMSSZ)."""
        taken = {info.key.split("/")[1] for info in self.repo.storage.list(BACKUP_PREFIX)
                 if info.key.count("/") >= 2}
        candidate = stamp
        n = 1
        while candidate in taken:
            candidate = f"{stamp}-{n}"
            n += 1
        return validate_backup_id(candidate)

    def delete_backup_objects(self, backup_id: str) -> None:
        keys = [info.key for info in self.repo.storage.list(f"{BACKUP_PREFIX}{validate_backup_id(backup_id)}/")]
        self.repo.storage.delete(keys)

    # -- restore points ---------------------------------------------------------------------------

    def save_restore_point(self, point: RestorePoint, stamp: str, lsn: int) -> str:
        key = f"{RESTORE_POINT_PREFIX}{stamp}-{lsn:016X}.json"
        self._put_json(key, json.dumps(asdict(point), indent=2, sort_keys=True).encode() + b"\n")
        return key

    def restore_points(self) -> Iterator[RestorePoint]:
        for info in self.repo.storage.list(RESTORE_POINT_PREFIX):
            name = info.key[len(RESTORE_POINT_PREFIX):]
            if not RESTORE_POINT_KEY_RE.match(name):
                log.warning("ignoring unexpected object %s", info.key)
                continue
            doc = self._get_json(info.key)
            try:
                yield RestorePoint(**doc)
            except TypeError as exc:
                raise WalkeeperError(f"{info.key}: not a valid restore point ({exc})") from None

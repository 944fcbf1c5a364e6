"""What the catalog's metadata objects hold: backups, dumps, restore points, restore-test records.

Plain dataclasses with their JSON form. Reading ignores unknown fields (a newer writer's) and refuses wrong
shapes and other format versions as integrity errors. Catalog (catalog.py) stores and lists them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from walkeeper.core.errors import IntegrityError
from walkeeper.repo.layout import RESTORE_TEST_ID_RE, validate_backup_id


def _load_metadata(cls: Any, doc: dict[str, Any], where: str, what: str, listed: str, item_cls: Any) -> Any:
    """A backup's or dump's metadata from its stored JSON: unknown fields ignored (newer writers), wrong
    shapes and other format versions are integrity errors, the id is validated."""
    try:
        fields = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        fields[listed] = [item_cls(**o) for o in fields.get(listed, [])]
        meta = cls(**fields)
    except TypeError as exc:
        raise IntegrityError(f"{where}: not valid {what} metadata ({exc})") from None
    if meta.format != 1:
        raise IntegrityError(f"{where}: {what} metadata format {meta.format} is not supported")
    validate_backup_id(meta.id)
    return meta


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
    # Incremental backups (walkeeper.repo.chains): "full" or "incremental", and the backup an incremental one
    # was taken against (its backup_manifest); restore needs the whole chain. Other tools (copy) rely on
    # these two names.
    type: str = "full"
    parent: str | None = None
    manifest_key: str | None = None  # backups/<ID>/backup_manifest (None: taken before walkeeper stored it)
    manifest_sha256: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str) -> BackupMeta:
        return _load_metadata(cls, doc, where, "backup", "objects", BackupObject)


@dataclass(frozen=True)
class DumpItem:
    """One stored stream of a dump: a database's pg_dump -Fc output, or the globals script."""

    key: str
    kind: str  # "database" or "globals"
    database: str | None
    plain_size: int
    stored_size: int
    sha256: str


@dataclass(frozen=True)
class DumpMeta:
    id: str
    label: str
    kind: str  # "database" (one pg_dump) or "all" (globals + every connectable database)
    start_time: str  # ISO 8601 UTC
    stop_time: str
    server_version: int  # server_version_num
    pg_dump_version: str
    options: list[str]  # the selection options passed to pg_dump
    items: list[DumpItem]
    plain_size: int
    stored_size: int
    system_identifier: str | None = None
    host: str | None = None
    walkeeper_version: str | None = None
    format: int = 1

    @property
    def databases(self) -> list[str]:
        return [i.database for i in self.items if i.kind == "database" and i.database]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str) -> DumpMeta:
        return _load_metadata(cls, doc, where, "dump", "items", DumpItem)


@dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: str
    time: str  # ISO 8601 with offset, from the server's now()
    timeline: int
    system_identifier: str
    wal_file: str


@dataclass
class RestoreTestRecord:
    """What one restore test proved (or not): kept in the repository as restore-tests/<ID>.json."""

    id: str
    started: str  # ISO 8601 UTC
    finished: str
    ok: bool
    outcome: str  # passed | check-failed | target-not-reached | not-started
    reason: str  # one line; empty when ok
    backup: str | None  # the base backup tested; None when a dump was tested
    target: str
    wal_first: str | None = None
    wal_last: str | None = None
    wal_segments: int = 0
    bytes_restored: int = 0
    restore_seconds: float = 0.0  # fetch, decrypt and unpack the backup
    recovery_seconds: float = 0.0  # server start to consistent and promoted (WAL replay)
    total_seconds: float = 0.0  # the measured recovery time objective
    replay_lsn: str | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)  # {name, ok, detail}
    row_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # database -> schema.table -> rows
    walkeeper_version: str | None = None
    pg_version: int | None = None
    host: str | None = None
    kept_workdir: str | None = None
    dump: str | None = None  # the logical dump tested (restore-test --dump); then backup is None
    format: int = 1

    @property
    def subject(self) -> str:
        """What was tested, for text output: "backup ID" or "dump ID"."""
        return f"dump {self.dump}" if self.dump else f"backup {self.backup}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str) -> RestoreTestRecord:
        try:
            record = cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise IntegrityError(f"{where}: not a valid restore test record ({exc})") from None
        if not RESTORE_TEST_ID_RE.match(record.id):
            raise IntegrityError(f"{where}: not a restore test id: {record.id!r}")
        return record

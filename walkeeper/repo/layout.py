"""The repository's key tree: every key builder and parser, one owner for each name.

    walkeeper.json                                  repository identity (format, system id, key ids)
    wal/TTTTTTTT/<WAL file name>                    one object per segment, history or backup-history file
    received/TTTTTTTT/<segment>.partial.<LLLLLLLL>  wal-receive's growing partial segment, LLLLLLLL = received
                                                    bytes (8 hex digits): the greatest is the newest
    received/receiver.json                          wal-receive's heartbeat (when it last had everything stored)
    backups/<id>/backup.json, base.tar, ...         a base backup; writer.json while one is being written
    backups/<id>/backup_manifest                    its backup_manifest alone (the parent of an incremental)
    dumps/<id>/dump.json, ...; dumps/<id>/reserved  a logical dump (reserved: the id is taken)
    restore-points/<YYYYMMDDTHHMMSSffffffZ>-<LSN>.json   named restore points
    restore-tests/<id>.json                         restore-test records

Backup and dump ids look like 20260101T120000Z (a -N suffix when two start in the same second).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from walkeeper.core.errors import InvalidName

if TYPE_CHECKING:
    from walkeeper.core.wal import WalName

META_KEY = "walkeeper.json"
WAL_PREFIX = "wal/"
RECEIVED_PREFIX = "received/"
RECEIVER_STATE_KEY = "received/receiver.json"
BACKUP_PREFIX = "backups/"
BACKUP_META = "backup.json"
BACKUP_MANIFEST = "backup_manifest"
BACKUP_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z(-[0-9]{1,3})?$")
WRITER_NAME = "writer.json"
DUMP_PREFIX = "dumps/"
DUMP_META = "dump.json"
DUMP_RESERVED = "reserved"
RESTORE_POINT_PREFIX = "restore-points/"
RESTORE_POINT_KEY_RE = re.compile(r"^[0-9]{8}T[0-9]{12}Z-[0-9A-F]{16}\.json$")
RESTORE_TEST_PREFIX = "restore-tests/"
RESTORE_TEST_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")


def wal_key(name: WalName) -> str:
    return f"{WAL_PREFIX}{name.timeline:08X}/{name.name}"


def validate_backup_id(backup_id: str) -> str:
    if not isinstance(backup_id, str) or not BACKUP_ID_RE.match(backup_id):
        raise InvalidName(f"not a backup id: {backup_id!r}",
                          hint="ids look like 20260101T120000Z; see walkeeper backups")
    return backup_id


def backup_key(backup_id: str, name: str) -> str:
    return f"{BACKUP_PREFIX}{validate_backup_id(backup_id)}/{name}"


def dump_key(dump_id: str, name: str) -> str:
    return f"{DUMP_PREFIX}{validate_backup_id(dump_id)}/{name}"


def received_prefix(timeline: int) -> str:
    return f"{RECEIVED_PREFIX}{timeline:08X}/"


def received_partial_key(segment: WalName, length: int) -> str:
    """One upload of wal-receive's partial segment; fixed-width hex so that name order is length order."""
    return f"{received_prefix(segment.timeline)}{segment.segment_name}.partial.{length:08X}"


def parse_received_partial_key(key: str) -> tuple[str, int] | None:
    """(segment name, received bytes) of a received-partial key; None for anything else."""
    base = key.rsplit("/", 1)[-1]
    match = _RECEIVED_RE.match(base)
    if not match or not key.startswith(RECEIVED_PREFIX) or key.count("/") != 2:
        return None
    return match.group(1), int(match.group(2), 16)


_RECEIVED_RE = re.compile(r"^([0-9A-F]{24})\.partial\.([0-9A-F]{8})$")

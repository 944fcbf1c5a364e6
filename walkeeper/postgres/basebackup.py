"""What a base backup says about itself: the streaming tar scanner, backup_label, manifest, pg_control.

The scanner picks backup_label, backup_manifest and global/pg_control out of pg_basebackup's tar as it
streams by; the start LSN, timeline and checkpoint come from backup_label, the stop LSN from the manifest's
WAL-Ranges (pg_basebackup's "write-ahead log end point" line as a fallback), the system identifier from
pg_control itself: all from the backup rather than from a separate connection to maybe another server.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from walkeeper.core.errors import (
    PostgresError,
)
from walkeeper.core.wal import parse_lsn

CHUNK = 1024 * 1024
PG_CONTROL = "global/pg_control"
CAPTURED = {"backup_label", "backup_manifest", PG_CONTROL, "tablespace_map", "PG_VERSION"}
MAX_CAPTURE = 256 * 1024 * 1024


# -- reading a tar as it streams by --------------------------------------------------------------

def member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _tar_number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        value = field[0] & 0x3F
        for byte in field[1:]:
            value = (value << 8) | byte
        return value
    text = field.replace(b"\0", b" ").strip()
    return int(text, 8) if text else 0


class TarScanner:
    """Follows a tar stream chunk by chunk without holding it: only header blocks and the small
    files named in CAPTURED are kept. Memory stays bounded whatever the size of a member (a
    table segment is up to 1 GiB), which Python's tarfile in stream mode does not guarantee here."""

    def __init__(self, captured: dict[str, bytes]) -> None:
        self.captured = captured
        self._header = bytearray()
        self._remaining = 0  # data + padding bytes of the current member still to pass
        self._data_left = 0  # data bytes of the current member still to pass
        self._capture: bytearray | None = None
        self._name = ""
        self.ended = False

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view and not self.ended:
            if self._remaining:
                take = min(len(view), self._remaining)
                if self._capture is not None and self._data_left:
                    self._capture += view[:min(take, self._data_left)]
                self._data_left = max(0, self._data_left - take)
                self._remaining -= take
                view = view[take:]
                if not self._remaining and self._capture is not None:
                    self.captured[self._name] = bytes(self._capture)
                    self._capture = None
                continue
            take = min(len(view), 512 - len(self._header))
            self._header += view[:take]
            view = view[take:]
            if len(self._header) == 512:
                self._parse_header(bytes(self._header))
                self._header.clear()

    def _parse_header(self, block: bytes) -> None:
        if block == bytes(512):
            self.ended = True
            return
        try:
            size = _tar_number(block[124:136])
        except ValueError:
            raise PostgresError("pg_basebackup's output is not a valid tar stream (bad header)") from None
        name = block[0:100].split(b"\0", 1)[0].decode(errors="replace")
        if block[257:262] == b"ustar":
            prefix = block[345:500].split(b"\0", 1)[0].decode(errors="replace")
            if prefix:
                name = f"{prefix}/{name}"
        typeflag = block[156:157]
        self._name = member_name(name)
        self._data_left = size
        self._remaining = (size + 511) // 512 * 512
        regular = typeflag in (b"0", b"\0", b"")
        if regular and self._name in CAPTURED and size <= MAX_CAPTURE:
            self._capture = bytearray()
            if size == 0:
                self.captured[self._name] = b""
                self._capture = None


def scan_tar(read: Callable[[int], bytes], captured: dict[str, bytes]) -> Iterator[bytes]:
    """Yield the bytes of a tar stream unchanged, capturing the small files named in CAPTURED."""
    scanner = TarScanner(captured)
    while True:
        chunk = read(CHUNK)
        if not chunk:
            break
        scanner.feed(chunk)
        yield chunk
    if not scanner.ended:
        raise PostgresError("pg_basebackup's output ended before the end of the tar archive")


# -- parsing what the backup says about itself ---------------------------------------------------

@dataclass
class BackupFacts:
    start_lsn: int = 0
    checkpoint_lsn: int | None = None
    timeline: int = 0
    stop_lsn: int = 0
    stop_timeline: int = 0
    label: str = ""
    system_identifier: int | None = None
    checkpoint_next_xid: int | None = None
    tablespaces: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ControlFacts:
    """What walkeeper reads from a ``global/pg_control``."""

    system_identifier: int
    version: int  # pg_control_version: 1201 (12), 1300 (13-16), 1700 (17), 1800 (18)
    next_xid: int | None  # checkPointCopy.nextXid, 64-bit (epoch << 32 | xid); None when not readable


# ControlFileData (little-endian, natural alignment): system_identifier u64 @0, pg_control_version u32 @8,
# catalog_version_no u32 @12, state enum @16, time int64 @24, checkPoint u64 @32, checkPointCopy @40.
# CheckPoint: redo u64 @0, ThisTimeLineID u32 @8, PrevTimeLineID u32 @12, fullPageWrites bool @16
# (17+: wal_level int @20), nextXid FullTransactionId u64 @24 (PostgreSQL 12+; before: nextXidEpoch u32 @20,
# nextXid u32 @24). Checked against pg_controldata ("Latest checkpoint's NextXID: epoch:xid") on 15 and 18.
_CHECKPOINT_COPY = 40
_NEXT_XID = _CHECKPOINT_COPY + 24
_FULL_XID_VERSION = 1201  # PostgreSQL 12 made nextXid a FullTransactionId


def parse_pg_control(data: bytes) -> ControlFacts:
    """The system identifier and the checkpoint's next transaction id of a ``global/pg_control``.

    The next xid is None when the fields do not look like a checkpoint (an unknown layout): a wrong
    number would make ``pitr --target-xid`` choose a backup that cannot reach the target.
    """
    if len(data) < _NEXT_XID + 8:
        raise PostgresError(f"global/pg_control is too short ({len(data)} bytes)")
    sysid, version = struct.unpack_from("<QI", data)
    checkpoint, redo, tli = struct.unpack_from("<QQI", data, 32)
    if version >= _FULL_XID_VERSION:
        next_xid = struct.unpack_from("<Q", data, _NEXT_XID)[0]
    else:
        epoch, xid = struct.unpack_from("<II", data, _CHECKPOINT_COPY + 20)
        next_xid = epoch << 32 | xid
    plausible = 900 <= version < 10000 and 0 < redo <= checkpoint and tli >= 1 and next_xid & 0xFFFFFFFF >= 3
    return ControlFacts(sysid, version, next_xid if plausible else None)


def parse_backup_label(text: str, facts: BackupFacts) -> None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "START WAL LOCATION":
            facts.start_lsn = parse_lsn(value.split()[0])
        elif key == "CHECKPOINT LOCATION":
            facts.checkpoint_lsn = parse_lsn(value.split()[0])
        elif key == "START TIMELINE":
            facts.timeline = int(value)
        elif key == "LABEL":
            facts.label = value


def parse_manifest_wal_range(text: bytes, facts: BackupFacts) -> bool:
    try:
        ranges = json.loads(text).get("WAL-Ranges") or []
    except (ValueError, AttributeError):
        return False
    if not ranges:
        return False
    last = ranges[-1]
    facts.stop_timeline = int(last["Timeline"])
    facts.stop_lsn = max(parse_lsn(r["End-LSN"]) for r in ranges)
    return True


_END_POINT_RE = re.compile(r"write-ahead log end point: ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")


def collect_facts(captured: dict[str, bytes], stderr: str) -> BackupFacts:
    facts = BackupFacts()
    label = captured.get("backup_label")
    if label is None:
        raise PostgresError("the backup holds no backup_label: not a base backup taken by pg_basebackup")
    parse_backup_label(label.decode(errors="replace"), facts)
    if not facts.start_lsn or not facts.timeline:
        raise PostgresError("backup_label lacks START WAL LOCATION or START TIMELINE")
    manifest = captured.get("backup_manifest")
    if not (manifest and parse_manifest_wal_range(manifest, facts)):
        match = _END_POINT_RE.search(stderr)
        if not match:
            raise PostgresError("cannot tell where the backup ended: no manifest and no end point reported")
        facts.stop_lsn = parse_lsn(match.group(1))
        facts.stop_timeline = facts.timeline
    control = captured.get(PG_CONTROL)
    if control is None:
        raise PostgresError("the backup holds no global/pg_control")
    parsed = parse_pg_control(control)
    facts.system_identifier = parsed.system_identifier
    facts.checkpoint_next_xid = parsed.next_xid
    for line in captured.get("tablespace_map", b"").decode(errors="replace").splitlines():
        oid, _, location = line.partition(" ")
        if oid.isdigit():
            facts.tablespaces.append({"oid": oid, "location": location.replace("\\\n", "\n")})
    return facts

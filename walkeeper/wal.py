"""PostgreSQL WAL file names, segment arithmetic, page headers and timeline history files.

Pure functions on names and bytes: nothing here touches storage. Layouts follow PostgreSQL's
``xlog_internal.h`` (``XLogLongPageHeaderData``) and ``timeline.c`` (history file lines).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import Enum

from walkeeper.errors import InvalidName, InvalidWal

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
MIN_SEGMENT_SIZE = 1024 * 1024
MAX_SEGMENT_SIZE = 1024 * 1024 * 1024

XLP_LONG_HEADER = 0x0002
# xlp_magic of each major version (XLOG_PAGE_MAGIC); a segment with another magic is refused.
KNOWN_PAGE_MAGICS = {
    0xD101: 12, 0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18,
}
# uint16 magic, uint16 info, uint32 tli, uint64 pageaddr, uint32 rem_len, (pad 4),
# uint64 sysid, uint32 seg_size, uint32 xlog_blcksz  -- little-endian on every platform we run.
_LONG_HEADER = struct.Struct("<HHIQI4xQII")
LONG_HEADER_SIZE = _LONG_HEADER.size

_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_PARTIAL_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.partial$")
_BACKUP_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.([0-9A-F]{8})\.backup$")
_HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


class WalKind(Enum):
    SEGMENT = "segment"
    PARTIAL = "partial"
    BACKUP = "backup"
    HISTORY = "history"


@dataclass(frozen=True, order=True)
class WalName:
    """A validated WAL file name. ``log``/``seg`` are the two halves of the segment number."""

    timeline: int
    log: int
    seg: int
    kind: WalKind
    name: str

    @property
    def is_segment_like(self) -> bool:
        """Segments and .partial files hold WAL pages with a page header to check."""
        return self.kind in (WalKind.SEGMENT, WalKind.PARTIAL)

    def segno(self, segment_size: int) -> int:
        return self.log * segments_per_xlogid(segment_size) + self.seg

    @property
    def segment_name(self) -> str:
        """The 24-character segment this file belongs to (history files have none)."""
        return self.name[:24]


def parse_wal_name(name: str) -> WalName:
    """Validate a bare file name as PostgreSQL would archive it; anything else is refused."""
    if not isinstance(name, str) or "/" in name or "\\" in name or "\0" in name:
        raise InvalidName(f"not a WAL file name: {name!r}", hint="expected e.g. 000000010000000000000001")
    for regex, kind in ((_SEGMENT_RE, WalKind.SEGMENT), (_PARTIAL_RE, WalKind.PARTIAL),
                        (_BACKUP_RE, WalKind.BACKUP)):
        match = regex.fullmatch(name)
        if match:
            tli, log, seg = (int(g, 16) for g in match.groups()[:3])
            if tli == 0:
                raise InvalidName(f"not a WAL file name: {name!r} (timeline 0 does not exist)")
            return WalName(tli, log, seg, kind, name)
    match = _HISTORY_RE.fullmatch(name)
    if match:
        tli = int(match.group(1), 16)
        if tli == 0:
            raise InvalidName(f"not a WAL file name: {name!r} (timeline 0 does not exist)")
        # 00000001.history never exists, but PostgreSQL asks for it: it must read as "not found".
        return WalName(tli, 0, 0, WalKind.HISTORY, name)
    raise InvalidName(
        f"not a WAL file name: {name!r}",
        hint="walkeeper archives WAL segments, .partial, .backup and .history files only",
    )


def check_segment_size(size: int) -> int:
    if size < MIN_SEGMENT_SIZE or size > MAX_SEGMENT_SIZE or size & (size - 1):
        raise InvalidWal(f"invalid WAL segment size {size}: must be a power of two from 1 MiB to 1 GiB")
    return size


def segments_per_xlogid(segment_size: int) -> int:
    return 0x100000000 // segment_size


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    per = segments_per_xlogid(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def segno_of(name: WalName, segment_size: int) -> int:
    if name.seg >= segments_per_xlogid(segment_size):
        raise InvalidName(f"{name.name} cannot exist with {segment_size // 1048576} MiB segments")
    return name.segno(segment_size)


def parse_lsn(text: str) -> int:
    match = _LSN_RE.match(text.strip())
    if not match:
        raise ValueError(f"not an LSN: {text!r} (expected e.g. 0/16B3748)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_of_lsn(timeline: int, lsn: int, segment_size: int) -> str:
    return segment_name(timeline, lsn // segment_size, segment_size)


@dataclass(frozen=True)
class PageHeader:
    magic: int
    info: int
    timeline: int
    pageaddr: int
    system_identifier: int
    segment_size: int
    block_size: int

    @property
    def pg_version(self) -> int | None:
        return KNOWN_PAGE_MAGICS.get(self.magic)


def read_page_header(data: bytes) -> PageHeader:
    """Parse the long page header that starts every WAL segment."""
    if len(data) < LONG_HEADER_SIZE:
        raise InvalidWal("file too short to hold a WAL page header")
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(data)
    return PageHeader(magic, info, tli, pageaddr, sysid, seg_size, blcksz)


def check_segment(name: WalName, data: bytes) -> PageHeader:
    """Check that ``data`` is the segment ``name`` says: returns its header, raises InvalidWal.

    The first page's timeline may be *lower* than the name's: the first segment of a new timeline
    is a copy of the parent's segment up to the switch point, page headers included.
    """
    header = read_page_header(data)
    where = f"{name.name}:"
    if header.magic not in KNOWN_PAGE_MAGICS:
        raise InvalidWal(f"{where} unknown WAL page magic 0x{header.magic:04X}; not a WAL segment")
    if not header.info & XLP_LONG_HEADER:
        raise InvalidWal(f"{where} first page lacks the long header flag; not the start of a segment")
    check_segment_size(header.segment_size)
    if name.kind is WalKind.SEGMENT and len(data) != header.segment_size:
        raise InvalidWal(
            f"{where} file is {len(data)} bytes but its header says segments are {header.segment_size}",
            hint="a truncated or still-being-written segment is never archived",
        )
    expected_addr = segno_of(name, header.segment_size) * header.segment_size
    if header.pageaddr != expected_addr:
        raise InvalidWal(
            f"{where} first page is at {format_lsn(header.pageaddr)}, the name says "
            f"{format_lsn(expected_addr)}; the file was renamed or is recycled content"
        )
    if header.timeline == 0 or header.timeline > name.timeline:
        raise InvalidWal(f"{where} page header timeline {header.timeline} does not fit the name's timeline")
    return header


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a timeline history file: ``parent`` ended at ``switch_lsn``."""

    parent: int
    switch_lsn: int
    reason: str


def parse_history(text: str) -> list[HistoryEntry]:
    """Parse a ``.history`` file as PostgreSQL's ``readTimeLineHistory`` does."""
    entries: list[HistoryEntry] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(None, 2)
        if len(fields) < 2:
            raise InvalidWal(f"bad timeline history line: {line!r}")
        try:
            parent = int(fields[0])
            switch = parse_lsn(fields[1])
        except ValueError as exc:
            raise InvalidWal(f"bad timeline history line: {line!r}") from exc
        if entries and parent <= entries[-1].parent:
            raise InvalidWal("timeline history: timeline IDs must be increasing")
        entries.append(HistoryEntry(parent, switch, fields[2] if len(fields) > 2 else ""))
    return entries

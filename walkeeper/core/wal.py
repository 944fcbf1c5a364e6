"""PostgreSQL WAL file names, segment arithmetic, page headers and timeline history files.

Pure functions on names and bytes: nothing here touches storage. Layouts follow PostgreSQL's
``xlog_internal.h`` (``XLogLongPageHeaderData``) and ``timeline.c`` (history file lines). What a
name is and what a segment's first page must say live in walkeeper.core.walformat (standard library only),
which the fast path uses too; this module builds the dataclasses on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from walkeeper.core.errors import InvalidName, InvalidWal
from walkeeper.core.walformat import (  # noqa: F401  (re-exported: the full path's one place for WAL names)
    DEFAULT_SEGMENT_SIZE,
    KNOWN_PAGE_MAGICS,
    LONG_HEADER,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    XLP_LONG_HEADER,
    check_first_page,
    check_segment_size,
    format_lsn,
    segments_per_xlogid,
    wal_name_kind,
)

LONG_HEADER_SIZE = LONG_HEADER.size
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
    kind = wal_name_kind(name)
    if kind is None:
        raise InvalidName(
            f"not a WAL file name: {name!r}",
            hint="walkeeper archives WAL segments, .partial, .backup and .history files only",
        )
    tli = int(name[:8], 16)
    if tli == 0:
        raise InvalidName(f"not a WAL file name: {name!r} (timeline 0 does not exist)")
    if kind == "history":
        # 00000001.history never exists, but PostgreSQL asks for it: it must read as "not found".
        return WalName(tli, 0, 0, WalKind.HISTORY, name)
    return WalName(tli, int(name[8:16], 16), int(name[16:24], 16), WalKind(kind), name)


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
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = LONG_HEADER.unpack_from(data)
    return PageHeader(magic, info, tli, pageaddr, sysid, seg_size, blcksz)


def check_segment(name: WalName, data: bytes) -> PageHeader:
    """Check that ``data`` is the segment ``name`` says: returns its header, raises InvalidWal.

    The checks are walkeeper.core.walformat.check_first_page, which the fast path runs too.
    """
    whole = len(data) if name.kind is WalKind.SEGMENT else None
    return PageHeader(*check_first_page(name.name, data, whole))


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

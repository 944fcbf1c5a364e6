"""WAL file names and the first page header of a segment, with the standard library alone.

The one definition of what a WAL file name is and what the first page of a segment must say, shared
by the full path (walkeeper.core.wal builds its dataclasses on it) and the fast paths (walkeeper.accel,
which may not import re, json, dataclasses or enum: every import is paid by each archive_command
call). Layouts follow PostgreSQL's ``xlog_internal.h`` (``XLogLongPageHeaderData``).
"""

from __future__ import annotations

import struct

from walkeeper.core.errors import InvalidName, InvalidWal  # errors imports nothing

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
LONG_HEADER = struct.Struct("<HHIQI4xQII")

_HEX = frozenset("0123456789ABCDEF")


def wal_name_kind(name: str) -> str | None:
    """"segment", "partial", "backup" or "history" for a name archive_command may be given; else None.

    Upper-case hex only, as PostgreSQL writes them. Timeline 0 passes here (walkeeper.core.wal refuses it).
    """
    if len(name) == 24:
        return "segment" if _HEX.issuperset(name) else None
    if name.endswith(".partial"):
        return "partial" if len(name) == 32 and _HEX.issuperset(name[:24]) else None
    if name.endswith(".history"):
        return "history" if len(name) == 16 and _HEX.issuperset(name[:8]) else None
    if name.endswith(".backup"):
        ok = len(name) == 40 and name[24] == "." and _HEX.issuperset(name[:24]) and _HEX.issuperset(name[25:33])
        return "backup" if ok else None
    return None


def is_segment_name(name: str) -> bool:
    return len(name) == 24 and _HEX.issuperset(name)


def is_wal_name(name: str) -> bool:
    return wal_name_kind(name) is not None


def segments_per_xlogid(segment_size: int) -> int:
    return 0x100000000 // segment_size


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def check_segment_size(size: int) -> int:
    if size < MIN_SEGMENT_SIZE or size > MAX_SEGMENT_SIZE or size & (size - 1):
        raise InvalidWal(f"invalid WAL segment size {size}: must be a power of two from 1 MiB to 1 GiB")
    return size


def check_first_page(name: str, head: bytes, whole_size: int | None) -> tuple[int, int, int, int, int, int, int]:
    """Check that ``head`` (the file's first bytes) starts the segment or .partial file ``name``.

    ``whole_size``: the file's size when it must be a whole segment (None for a .partial file).
    Returns the header fields (magic, info, timeline, pageaddr, system id, segment size, block size);
    raises InvalidWal, or InvalidName when the name cannot exist with the header's segment size.
    The first page's timeline may be *lower* than the name's: the first segment of a new timeline is
    a copy of the parent's segment up to the switch point, page headers included.
    """
    if len(head) < LONG_HEADER.size:
        raise InvalidWal("file too short to hold a WAL page header")
    fields = LONG_HEADER.unpack_from(head)
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = fields
    where = f"{name}:"
    if magic not in KNOWN_PAGE_MAGICS:
        raise InvalidWal(f"{where} unknown WAL page magic 0x{magic:04X}; not a WAL segment")
    if not info & XLP_LONG_HEADER:
        raise InvalidWal(f"{where} first page lacks the long header flag; not the start of a segment")
    check_segment_size(seg_size)
    if whole_size is not None and whole_size != seg_size:
        raise InvalidWal(
            f"{where} file is {whole_size} bytes but its header says segments are {seg_size}",
            hint="a truncated or still-being-written segment is never archived",
        )
    per = segments_per_xlogid(seg_size)
    seg = int(name[16:24], 16)
    if seg >= per:
        raise InvalidName(f"{name} cannot exist with {seg_size // 1048576} MiB segments")
    expected_addr = (int(name[8:16], 16) * per + seg) * seg_size
    if pageaddr != expected_addr:
        raise InvalidWal(
            f"{where} first page is at {format_lsn(pageaddr)}, the name says "
            f"{format_lsn(expected_addr)}; the file was renamed or is recycled content"
        )
    if tli == 0 or tli > int(name[:8], 16):
        raise InvalidWal(f"{where} page header timeline {tli} does not fit the name's timeline")
    return magic, info, tli, pageaddr, sysid, seg_size, blcksz

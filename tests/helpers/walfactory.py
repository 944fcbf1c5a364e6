"""Synthetic WAL files with real page headers, for tests that need many segments quickly."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

from walkeeper.core.wal import segment_name

MiB = 1024 * 1024


def make_segment(timeline: int, segno: int, *, sysid: int = 7300000000000000001, size: int = MiB,
                 header_tli: int | None = None, pageaddr: int | None = None, magic: int = 0xD110,
                 seed: int | None = None) -> tuple[str, bytes]:
    """A segment file: long page header as PostgreSQL writes it, then semi-compressible bytes."""
    header = struct.pack("<HHIQI4xQII", magic, 0x0002, header_tli or timeline,
                         segno * size if pageaddr is None else pageaddr, 0, sysid, size, 8192)
    rng = random.Random(seed if seed is not None else segno * 1000 + timeline)
    words = [rng.randbytes(8) for _ in range(64)]
    body = b"".join(rng.choice(words) for _ in range((size - len(header)) // 8))
    data = header + body
    return segment_name(timeline, segno, size), data + b"\0" * (size - len(data))


def write_segment(pg_wal: Path, timeline: int, segno: int, **kwargs: object) -> Path:
    name, data = make_segment(timeline, segno, **kwargs)  # type: ignore[arg-type]
    path = pg_wal / name
    path.write_bytes(data)
    return path


def fake_datadir(root: Path) -> Path:
    """A directory shaped like a data directory: pg_wal/archive_status inside."""
    (root / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    return root

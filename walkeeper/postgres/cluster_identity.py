"""Which database system a data directory or a server is: system identifier, WAL segment size, major version.

Read (never changed) by ``walkeeper init`` to record the repository's system at once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from walkeeper.core.config import Config
from walkeeper.core.errors import RefusedError, StorageError

PG_CONTROL = "global/pg_control"
FLOAT_FORMAT = struct.pack("<d", 1234567.0)  # ControlFileData.floatFormat, a fixed marker


@dataclass(frozen=True)
class ClusterIdentity:
    """What the repository records about its database system."""

    system_identifier: int
    segment_size: int | None
    pg_version: int | None  # major version
    source: str


def control_segment_size(data: bytes) -> int | None:
    """``xlog_seg_size`` of a ``global/pg_control``, found after the floatFormat marker.

    ControlFileData ends with ``double floatFormat; uint32 blcksz, relseg_size, xlog_blcksz,
    xlog_seg_size``; fields before it changed between major versions, the marker did not. None when
    the values found are not plausible (an unknown layout): the first push records the size then.
    """
    offset = 0
    while (offset := data.find(FLOAT_FORMAT, offset)) >= 0:
        if offset % 8 == 0 and offset + 24 <= len(data):
            blcksz, _relseg, wal_blcksz, seg_size = struct.unpack_from("<IIII", data, offset + 8)
            if all(_power_of_two(v) for v in (blcksz, wal_blcksz, seg_size)) and 1 << 20 <= seg_size <= 1 << 30:
                return seg_size
        offset += 1
    return None


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def identity_from_pgdata(pgdata: str) -> ClusterIdentity:
    """The system identifier, WAL segment size and major version of a data directory (read, never changed)."""
    from walkeeper.postgres.basebackup import parse_pg_control

    directory = Path(pgdata)
    try:
        data = (directory / PG_CONTROL).read_bytes()
    except FileNotFoundError:
        raise RefusedError(f"{directory} is not a PostgreSQL data directory (no {PG_CONTROL})",
                           hint="give the data directory of the cluster that will archive here") from None
    except OSError as exc:
        raise StorageError(f"cannot read {directory / PG_CONTROL}: {exc.strerror or exc}") from None
    version = None
    try:
        text = (directory / "PG_VERSION").read_text().strip()
        version = int(text.split(".")[0])
    except (OSError, ValueError):
        pass
    facts = parse_pg_control(data)
    return ClusterIdentity(facts.system_identifier, control_segment_size(data), version,
                           f"data directory {directory}")


def identity_from_server(config: Config, conn: Any) -> ClusterIdentity:
    """The same facts from a running server (the one psql runner, libpq options and environment)."""
    from walkeeper.postgres.client import server_info

    info = server_info(config, conn)
    return ClusterIdentity(int(info.system_identifier), info.segment_size, info.version_num // 10000, "the server")

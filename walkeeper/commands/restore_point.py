"""Named restore points: pg_create_restore_point, recorded in the repository so they can be listed
(PostgreSQL keeps no list) and so ``pitr --target-name`` can choose a backup that ended before one."""

from __future__ import annotations

from datetime import UTC, datetime

from walkeeper.core.config import Config
from walkeeper.core.errors import ConfigError, ForeignClusterError, PostgresError
from walkeeper.core.wal import parse_lsn, segment_of_lsn
from walkeeper.postgres.client import ConnOptions, psql
from walkeeper.repo.catalog import Catalog, RestorePoint
from walkeeper.repo.repository import open_repository


def create_restore_point(config: Config, name: str, conn: ConnOptions, *, switch_wal: bool = False) -> RestorePoint:
    if not name or len(name) >= 64 or any(ord(c) < 32 for c in name):
        raise ConfigError("a restore point name is 1 to 63 printable characters")
    repo = open_repository(config)
    catalog = Catalog(repo)
    meta = repo.require_meta()
    literal = "'" + name.replace("'", "''") + "'"
    sysid = psql(config, conn, "select system_identifier from pg_control_system()")
    if meta.system_identifier not in (None, sysid):
        raise ForeignClusterError(
            f"the server is database system {sysid}, but repository {repo.storage.url} belongs to "
            f"system {meta.system_identifier}; a restore point there would be useless")
    row = psql(config, conn, (
        f"select pg_create_restore_point({literal}), now(), "
        "(select timeline_id from pg_control_checkpoint()), "
        "(select setting from pg_settings where name = 'wal_segment_size')"
    ))
    try:
        lsn_text, when, tli, segsize = row.split("|")
        lsn = parse_lsn(lsn_text)
    except ValueError:
        raise PostgresError(f"unexpected answer from pg_create_restore_point: {row!r}") from None
    # The checkpoint's timeline can lag right after a promotion; the current one is authoritative.
    current = psql(config, conn, "select pg_walfile_name(pg_current_wal_lsn())")
    timeline = int(current[:8], 16) if len(current) == 24 else int(tli)
    point = RestorePoint(name=name, lsn=lsn_text, time=when, timeline=timeline, system_identifier=sysid,
                         wal_file=segment_of_lsn(timeline, lsn, int(segsize)))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    catalog.save_restore_point(point, stamp, lsn)
    if switch_wal:
        psql(config, conn, "select pg_switch_wal()")
    return point

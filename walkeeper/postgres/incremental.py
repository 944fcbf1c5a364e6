"""What an incremental backup needs from the server and the repository before pg_basebackup runs.

PostgreSQL 17 and later summarize WAL (``summarize_wal = on``) and take a backup of only the blocks
changed since a previous backup whose ``backup_manifest`` is given (``pg_basebackup --incremental``).
Checked before anything is written: the server's major version, the setting, pg_basebackup's own
major version, and no tablespaces (walkeeper restores chains only without them).
"""

from __future__ import annotations

from walkeeper.codec import Decoder
from walkeeper.core.config import Config
from walkeeper.core.errors import IntegrityError, PostgresError, RefusedError
from walkeeper.postgres.basebackup import TarScanner
from walkeeper.postgres.client import ConnOptions, ServerInfo, pg_tool, psql, tool_version
from walkeeper.repo.catalog import BackupMeta, Catalog
from walkeeper.repo.layout import BACKUP_MANIFEST

MIN_VERSION = 170000


def check_incremental_server(config: Config, conn: ConnOptions, info: ServerInfo) -> int:
    """Refuse an incremental backup the server cannot take; returns the server's current timeline."""
    if info.version_num < MIN_VERSION:
        raise RefusedError(
            f"--incremental needs PostgreSQL 17 or later (WAL summaries); the server is PostgreSQL "
            f"{info.version_num // 10000}", hint="take a full backup (walkeeper backup without --incremental)")
    row = psql(config, conn, "select current_setting('summarize_wal'), "
                             "(select timeline_id from pg_control_checkpoint())")
    setting, _sep, timeline = row.partition("|")
    if setting != "on":
        raise RefusedError(
            "--incremental needs WAL summaries, but summarize_wal is off on the server",
            hint="set summarize_wal = on in postgresql.conf, or ALTER SYSTEM SET summarize_wal = on and SELECT "
                 "pg_reload_conf(); then take a full backup: incrementals work against backups begun after that")
    if info.tablespaces:
        raise RefusedError(
            f"--incremental: the server has {info.tablespaces} tablespace(s); walkeeper restores incremental "
            "chains only of clusters without tablespaces", hint="take full backups of this cluster")
    basebackup = pg_tool(config, "pg_basebackup", info.version_num // 10000)
    major = tool_version(basebackup)[0]
    if major < MIN_VERSION // 10000:
        raise RefusedError(f"--incremental: {basebackup} is PostgreSQL {major}'s; --incremental needs 17 or later",
                           hint="point [backup] pg_bin_dir at the server's own PostgreSQL binaries")
    try:
        return int(timeline)
    except ValueError:
        raise PostgresError(f"unexpected answer from the server: {row!r}") from None


def parent_manifest(catalog: Catalog, parent: BackupMeta) -> bytes:
    """The parent's ``backup_manifest``: its own object, or (older backups) read out of its base tar."""
    stored = catalog.manifest(parent)
    if stored is not None:
        return stored
    base = [o for o in parent.objects if o.tablespace_oid is None]
    if not base:
        raise IntegrityError(f"backup {parent.id} has no base tar")
    captured: dict[str, bytes] = {}
    scanner = TarScanner(captured)
    decoder = Decoder(catalog.repo.keyring, expected_name=base[0].key)
    with catalog.repo.storage.open(base[0].key) as handle:
        for chunk in decoder.decode(handle.read):
            scanner.feed(chunk)
            if BACKUP_MANIFEST in captured or scanner.ended:
                break
    if BACKUP_MANIFEST not in captured:
        raise RefusedError(f"backup {parent.id} holds no backup_manifest: no incremental backup can be taken "
                           "against it", hint="take a full backup, or give --from another backup")
    return captured[BACKUP_MANIFEST]


def explain_failure(exc: PostgresError, parent: BackupMeta) -> PostgresError:
    """pg_basebackup's refusals of an incremental backup, with what to do."""
    text = str(exc)
    if "WAL summar" in text:
        return PostgresError(
            f"the server has no WAL summaries from backup {parent.id}'s start on (summarize_wal was off then, or "
            f"the summaries were removed after wal_summary_keep_time): {text}",
            hint="take a full backup; incrementals against it will work")
    if "manifest" in text and "system identifier" in text:
        return PostgresError(f"backup {parent.id} is not a backup of this server: {text}")
    return exc

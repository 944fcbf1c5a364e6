"""Restoring an incremental backup: its chain staged on the target's file system, then pg_combinebackup.

Every member of the chain (the full backup first) is restored, checksums verified, into a staging
directory inside the target data directory (so it is on the target's file system: pg_combinebackup's
``--link``, PostgreSQL 18+, then hard-links unchanged files instead of copying them, and space is not
doubled). pg_combinebackup writes the synthetic full backup into the staging directory too; its
``global/pg_control`` is taken out, the rest moved into place by renames, the staging removed, and
pg_control written last and durably, after the recovery settings: a directory left by a crash at any
point has no pg_control and PostgreSQL refuses to start on it. On an error the target is removed
(or emptied, if it existed before), staging included.

Tablespaces are refused: pg_combinebackup would need every member's tablespaces mapped
(``--tablespace-mapping``) and walkeeper's backups of them are tars outside the base.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from walkeeper.core.config import Config
from walkeeper.core.durable import fsync_dir, write_file
from walkeeper.core.errors import IntegrityError, PostgresError, RefusedError, StorageError, WalkeeperError
from walkeeper.core.units import human_bytes
from walkeeper.postgres.basebackup import PG_CONTROL
from walkeeper.postgres.client import ToolProcess, pg_tool
from walkeeper.postgres.extract import (
    RestoreResult,
    _prepare_target,
    _restore_os_error,
    _undo_restore,
    restore_backup,
)
from walkeeper.repo.catalog import BackupMeta, Catalog
from walkeeper.repo.chains import INCREMENTAL, chain_of
from walkeeper.repo.repository import Repository

STAGING = ".walkeeper-combine"


def has_link_option(tool: str) -> bool:
    """pg_combinebackup --link (hard links instead of copies) exists from PostgreSQL 18 on."""
    try:
        out = subprocess.run([tool, "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--link" in out


def space_needed(chain: list[BackupMeta], link: bool) -> int:
    """An estimate of the bytes a chain restore writes at its peak: every member staged, plus the output.

    With --link, unchanged files of the output are links to staged ones and only reconstructed files take
    space (estimated by the incrementals' own size); without it the output is a full copy.
    """
    staged = sum(b.plain_size for b in chain)
    output = sum(b.plain_size for b in chain[1:]) if link else chain[0].plain_size
    return staged + output


def check_free_space(path: Path, needed: int) -> None:
    free = shutil.disk_usage(path).free
    if free < needed:
        raise RefusedError(
            f"restoring the chain needs about {human_bytes(needed)} in {path} (every member staged, then "
            f"combined) but only {human_bytes(free)} is free; nothing was written",
            hint="free space there or restore into another directory")


def restore_chain(repo: Repository, chain: list[BackupMeta], pgdata: Path, combine_tool: str, *,
                  tablespace_map: Iterable[str] = (), progress: bool | None = None,
                  before_control: Callable[[Path], None] | None = None, workers: int = 1) -> RestoreResult:
    """Restore the newest backup of ``chain`` (oldest first, a full backup then incrementals) into ``pgdata``."""
    began = time.monotonic()
    newest = chain[-1]
    if chain[0].type == INCREMENTAL:
        raise IntegrityError(f"the chain of backup {newest.id} does not start with a full backup")
    spaced = [b.id for b in chain if b.tablespaces]
    if spaced or tuple(tablespace_map):
        raise RefusedError(
            f"backup {newest.id} is incremental and its chain has tablespaces ({', '.join(spaced) or 'mapped'}): "
            "walkeeper restores incremental chains only of clusters without tablespaces",
            hint="restore a full backup of this cluster (walkeeper backups lists them)")
    pgdata = Path(os.path.abspath(pgdata))
    link = has_link_option(combine_tool)
    needed = space_needed(chain, link)
    existed = _prepare_target(pgdata, "target directory")
    prepared = [(pgdata, existed)]
    staging = pgdata / STAGING
    total = 0
    try:
        check_free_space(pgdata, needed)
        staging.mkdir(mode=0o700)
        members = []
        for i, member in enumerate(chain):
            target = staging / f"{i:03d}-{member.id}"
            members.append(str(target))
            # not fsynced here: pg_combinebackup syncs its output (linked files included) itself
            total += restore_backup(repo, member, target, progress=progress, workers=workers, durable=False).bytes
        combined = staging / "combined"
        cmd = [combine_tool, *(["--link"] if link else []), "-o", str(combined), *members]
        proc = ToolProcess(cmd, name="pg_combinebackup", stdout=False)
        try:
            proc.wait()  # it syncs its output itself (no --no-sync)
        finally:
            proc.kill()
        control_path = combined / PG_CONTROL
        control = control_path.read_bytes()
        control_path.unlink()  # written back last, below
        fsync_dir(control_path.parent)
        for entry in sorted(combined.iterdir()):
            os.rename(entry, pgdata / entry.name)
        fsync_dir(pgdata)
        shutil.rmtree(staging)
        fsync_dir(pgdata)
        files = sum(len(names) for _root, _dirs, names in os.walk(pgdata))
        if before_control:
            before_control(pgdata)
        write_file(pgdata / PG_CONTROL, control, replace=False)  # last, durable: now it is startable
    except BaseException as exc:
        undone = _undo_restore(prepared)
        if isinstance(exc, PostgresError):
            raise PostgresError(f"{exc.args[0]}; {undone}", hint=exc.hint) from None
        if isinstance(exc, WalkeeperError | KeyboardInterrupt):
            raise
        if isinstance(exc, OSError):
            raise StorageError(f"{_restore_os_error(exc, pgdata, '--pgdata', needed)}; {undone}") from None
        raise
    return RestoreResult(newest, pgdata, files + 1, total, time.monotonic() - began, tuple(b.id for b in chain))


def restore_any(config: Config, repo: Repository, backup: BackupMeta, pgdata: Path, *,
                backups: list[BackupMeta] | None = None, tablespace_map: Iterable[str] = (),
                progress: bool | None = None,
                before_control: Callable[[Path], None] | None = None) -> RestoreResult:
    """A full backup as before (postgres/extract.py); an incremental one through its chain."""
    if backup.type != INCREMENTAL:
        return restore_backup(repo, backup, pgdata, tablespace_map=tablespace_map, progress=progress,
                              before_control=before_control, workers=config.backup.workers)
    chain = chain_of(backup, backups if backups is not None else Catalog(repo).backups())
    tool = pg_tool(config, "pg_combinebackup", backup.pg_version // 10000)  # the backup's own major
    return restore_chain(repo, chain, pgdata, tool, tablespace_map=tablespace_map,
                         progress=progress, before_control=before_control, workers=config.backup.workers)

"""`walkeeper restore`: the chosen backup into a data directory (the work is in postgres/extract.py)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from walkeeper.core.config import Config
from walkeeper.postgres.extract import RestoreResult, restore_backup
from walkeeper.repo.catalog import Catalog
from walkeeper.repo.repository import open_repository


def restore(config: Config, backup_id: str | None, pgdata: str, tablespace_map: Iterable[str] = (),
            progress: bool | None = None) -> RestoreResult:
    repo = open_repository(config)
    backup = Catalog(repo).resolve(backup_id)
    return restore_backup(repo, backup, Path(pgdata), tablespace_map=tablespace_map, progress=progress,
                          workers=config.backup.workers)

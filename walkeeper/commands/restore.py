"""`walkeeper restore`: the chosen backup into a data directory (the work is in postgres/extract.py, and for
an incremental backup's chain in postgres/combine.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from walkeeper.core.config import Config
from walkeeper.postgres.combine import restore_any
from walkeeper.postgres.extract import RestoreResult
from walkeeper.repo.catalog import BackupMeta, Catalog
from walkeeper.repo.chains import chain_of
from walkeeper.repo.repository import open_repository


@dataclass(frozen=True)
class RestorePlan:
    backup: BackupMeta
    chain: list[BackupMeta]  # what a restore fetches, the full backup first ([backup] for a full one)


def plan_restore(config: Config, backup_id: str | None) -> RestorePlan:
    """The backup and its chain (raises BrokenChain when a member is missing): what --dry-run shows."""
    repo = open_repository(config)
    catalog = Catalog(repo)
    backup = catalog.resolve(backup_id)
    return RestorePlan(backup, chain_of(backup, catalog.backups()))


def restore(config: Config, backup_id: str | None, pgdata: str, tablespace_map: Iterable[str] = (),
            progress: bool | None = None) -> RestoreResult:
    repo = open_repository(config)
    catalog = Catalog(repo)
    backup = catalog.resolve(backup_id)
    return restore_any(config, repo, backup, Path(pgdata), backups=catalog.backups(),
                       tablespace_map=tablespace_map, progress=progress)

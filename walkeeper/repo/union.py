"""Several repositories seen as one archive, for planning a recovery (``pitr`` without ``--repo``).

A backup may be in one repository and the WAL it needs in another (or partly in each): wal-fetch falls
back across all of them (walkeeper/repo/fallback.py), so the plan must judge the same union. The view
offers what the recovery planner reads of a repository and its catalog: the WAL files of all
repositories (each name once), WAL read through the same fallback as wal-fetch, every complete backup
(an id held by several repositories: the first in configured order, the copies being the same backup)
and every restore point. ``holder`` names the repository to restore a chosen backup from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from walkeeper.core.chronology import newest, oldest_first
from walkeeper.core.errors import RefusedError
from walkeeper.core.wal import WalName
from walkeeper.repo.catalog import BackupMeta, Catalog, RestorePoint
from walkeeper.repo.fallback import Source, fetch_first
from walkeeper.repo.repository import RepoMeta, Repository


@dataclass
class UnionView:
    """Duck-types the parts of Repository and Catalog the recovery planner uses."""

    sources: list[Source]
    _holders: dict[str, Source] = field(default_factory=dict)
    _backups: list[BackupMeta] | None = None

    @property
    def first(self) -> Repository:
        return self.sources[0].repo

    @property
    def storage(self) -> Any:  # messages name the first repository's URL
        return self.first.storage

    @property
    def segment_size(self) -> int:
        return self.first.segment_size

    @property
    def keyring(self) -> Any:
        return self.first.keyring

    def meta(self) -> RepoMeta | None:
        return next((m for m in (s.repo.meta() for s in self.sources) if m is not None), None)

    def require_meta(self) -> RepoMeta:
        meta = self.meta()
        return meta if meta is not None else self.first.require_meta()

    def iter_wal(self) -> Iterator[tuple[WalName, int, float]]:
        """Every WAL file of any repository once (the first holder's size and arrival time), in name order."""
        seen: dict[str, tuple[WalName, int, float]] = {}
        for source in self.sources:
            for name, size, mtime in source.repo.iter_wal():
                seen.setdefault(name.name, (name, size, mtime))
        yield from (seen[k] for k in sorted(seen, key=lambda n: (seen[n][0].timeline, n)))

    def fetch_wal(self, name: WalName, *, gap_wait: float = 0.0) -> bytes:
        return fetch_first(self.sources, name, gap_wait=gap_wait).data

    # -- the catalog side ----------------------------------------------------------------------------

    def backups(self) -> list[BackupMeta]:
        if self._backups is None:
            found: dict[str, BackupMeta] = {}
            for source in self.sources:
                for meta in Catalog(source.repo).backups():
                    if meta.id not in found:
                        found[meta.id] = meta
                        self._holders[meta.id] = source
            self._backups = oldest_first(found.values())
        return self._backups

    def backup(self, backup_id: str) -> BackupMeta:
        for meta in self.backups():
            if meta.id == backup_id:
                return meta
        return Catalog(self.first).backup(backup_id)  # its "no backup ..." error

    def resolve(self, backup_id: str | None) -> BackupMeta:
        if backup_id in (None, "latest"):
            latest = newest(self.backups())
            if latest is None:
                raise RefusedError("no backups in any configured repository", hint="take one with walkeeper backup")
            return latest
        return self.backup(backup_id)

    def restore_points(self) -> Iterator[RestorePoint]:
        seen: set[tuple[str, str]] = set()
        for source in self.sources:
            for point in Catalog(source.repo).restore_points():
                if (point.name, point.lsn) not in seen:
                    seen.add((point.name, point.lsn))
                    yield point

    def holder(self, backup_id: str) -> Source:
        """The repository (first in configured order) that holds the backup."""
        self.backups()
        return self._holders[backup_id]

"""expire for logical dumps: grandfather-father-son over complete dumps, plus killed dumps' leftovers.

The decision is walkeeper.core.retention_gfs.decide over each dump's stop time; the newest dump always
stays. A dump's metadata is deleted first (from then on it is not listed), then its data. Objects
of a dump without metadata (killed halfway) go once untouched for an hour: a dump in progress
writes its objects continuously and is never older than that. The same hour applies to what a killed
dump's writer leaves hidden (temporary objects, incomplete S3 uploads, empty directories).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from walkeeper.core.errors import ConfigError
from walkeeper.core.retention_gfs import GfsPolicy, Item, decide
from walkeeper.repo.catalog import Catalog
from walkeeper.repo.layout import DUMP_META, DUMP_PREFIX
from walkeeper.repo.repository import Repository
from walkeeper.storage.base import Leftover

STALE_INCOMPLETE = 3600.0


@dataclass
class DumpPlan:
    kept: dict[str, list[str]] = field(default_factory=dict)  # id -> rules that keep it
    expired: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    removals: list[tuple[str, int]] = field(default_factory=list)  # (key, stored bytes), in deletion order
    leftovers: list[Leftover] = field(default_factory=list)  # of dead writers: temp/upload first, dirs last

    @property
    def bytes_freed(self) -> int:
        return sum(size for _key, size in self.removals) + sum(item.size for item in self.leftovers)

    def to_dict(self) -> dict[str, object]:
        return {"kept_dumps": self.kept, "expired_dumps": self.expired, "incomplete_dumps": self.incomplete,
                "objects": [k for k, _ in self.removals],
                "leftovers": [{"path": i.path, "kind": i.kind, "size": i.size} for i in self.leftovers],
                "bytes_freed": self.bytes_freed}


def plan_dump_expire(repo: Repository, policy: GfsPolicy, zone: tzinfo, now: float | None = None) -> DumpPlan:
    if policy.empty():
        raise ConfigError("expire --dumps needs a retention rule",
                          hint="--keep, --keep-days or --keep-daily/weekly/monthly/yearly, or [retention.dumps]")
    for name, value in (("keep", policy.keep), ("keep-daily", policy.daily), ("keep-weekly", policy.weekly),
                        ("keep-monthly", policy.monthly), ("keep-yearly", policy.yearly)):
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be at least 1 (got {value})")
    now = time.time() if now is None else now
    catalog = Catalog(repo)
    dumps = catalog.dumps()
    plan = DumpPlan()
    objects: dict[str, list[tuple[str, int, float]]] = {}
    for info in repo.storage.list(DUMP_PREFIX):
        parts = info.key.split("/")
        if len(parts) == 3:
            objects.setdefault(parts[1], []).append((info.key, info.size, info.mtime))
    if dumps:
        items = [Item(d.id, datetime.fromisoformat(d.stop_time)) for d in dumps]
        plan.kept = decide(items, policy, datetime.fromtimestamp(now, UTC), zone)
        plan.kept.setdefault(dumps[-1].id, []).insert(0, "newest")
    for dump in dumps:
        if dump.id in plan.kept:
            continue
        plan.expired.append(dump.id)
        keys = sorted(objects.get(dump.id, []), key=lambda o: not o[0].endswith("/" + DUMP_META))
        plan.removals.extend((k, s) for k, s, _m in keys)
    for dump_id in catalog.incomplete_dump_ids():
        found = objects.get(dump_id, [])
        if found and now - max(m for _k, _s, m in found) > STALE_INCOMPLETE:
            plan.incomplete.append(dump_id)
            plan.removals.extend((k, s) for k, s, _m in found)
    stale = [item for item in repo.storage.list_leftovers(DUMP_PREFIX) if now - item.mtime > STALE_INCOMPLETE]
    plan.leftovers = sorted(stale, key=lambda item: item.kind == "dir")
    return plan


def expire_dumps(repo: Repository, policy: GfsPolicy, zone: tzinfo, *, dry_run: bool = False,
                 now: float | None = None) -> DumpPlan:
    repo.require_meta()
    plan = plan_dump_expire(repo, policy, zone, now)
    if dry_run:
        return plan
    batch: list[str] = []
    for key, _size in plan.removals:
        batch.append(key)
        if key.endswith("/" + DUMP_META):  # alone and first: from then on the dump is not listed
            repo.storage.delete(batch)
            batch = []
    if batch:
        repo.storage.delete(batch)
    for item in plan.leftovers:
        repo.storage.remove_leftover(item)
    return plan

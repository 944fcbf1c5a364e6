"""Point-in-time recovery of a data directory: plan (nothing is written before it holds), restore, settings.

The plan validates the target, chooses a backup that ended before it and proves WAL coverage
(repo/pitr_plan.py). Only then is the backup restored and the settings written.

Settings go into ``postgresql.auto.conf`` inside a marked block (replaced on the next run);
``recovery_target*`` lines elsewhere in postgresql.conf / postgresql.auto.conf are commented out,
because PostgreSQL refuses more than one target and would otherwise use a stale one.
Shared by ``walkeeper pitr`` and ``walkeeper restore-test``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from walkeeper.core import chronology
from walkeeper.core.config import Config
from walkeeper.core.errors import ConfigError, InvalidName, RefusedError
from walkeeper.core.units import human_bytes, plural
from walkeeper.core.wal import (
    WalKind,
    format_lsn,
)
from walkeeper.postgres.client import ConnOptions
from walkeeper.postgres.combine import restore_any
from walkeeper.postgres.extract import RestoreResult, stored_pg_control
from walkeeper.postgres.receivewal import create_physical_slot, validate_slot
from walkeeper.postgres.recovery_conf import (
    restore_command,
    settings_block,
    write_settings,
)
from walkeeper.postgres.standby import StreamingSettings, slot_conninfo, streaming_settings
from walkeeper.repo.catalog import BackupMeta, Catalog
from walkeeper.repo.chains import chain_length, chain_of, parent_map
from walkeeper.repo.pitr_plan import (
    Plan,
    check_coverage_settled,
    choose_backup,
    latest_timeline,
    on_path,
    timeline_path,
)
from walkeeper.repo.pitr_target import (
    Target,
    XidChoice,
    XidMark,
    choose_for_xid,
    format_xid,
    full_xid,
    make_target,
)
from walkeeper.repo.repository import Repository, open_repository
from walkeeper.repo.union import UnionView

log = logging.getLogger(__name__)

ACTIONS = ("pause", "promote", "shutdown")


def holding(repo: Any, backup: BackupMeta) -> Repository:
    """The repository to read ``backup`` from: ``repo`` itself, or its holder in a union of several."""
    return repo.holder(backup.id).repo if isinstance(repo, UnionView) else repo


def open_for_planning(config: Config) -> tuple[Any, Any]:
    """(repository, catalog) for a recovery: the one configured or chosen with --repo NAME, else every
    configured repository as one archive (a backup in one, WAL in another: repo/union.py)."""
    if len(config.repository_names()) > 1 and not config.repository_selected:
        from walkeeper.repo.fallback import sources_for

        union = UnionView(sources_for(config))
        union.require_meta()
        return union, union
    repo = open_repository(config)
    repo.require_meta()
    return repo, Catalog(repo)


def describe_sources(union: UnionView, plan: Plan) -> str:
    """"backup from local; WAL from local, offsite": which repositories the recovery will read."""
    needed = (plan.first_wal, plan.last_wal or "\uffff")
    wal = [s.name for s in union.sources
           if any(needed[0] <= n.name[:24] <= needed[1] for n, _s, _m in s.repo.iter_wal() if n.name[:24])]
    return f"backup from {union.holder(plan.backup.id).name}; WAL from {', '.join(wal) or 'none'}"


def xid_choice(repo: Repository, usable: list[BackupMeta], value: int) -> XidChoice:
    """``choose_for_xid`` over backups whose next xids are read lazily: a backup whose metadata predates
    them is read from its stored pg_control (a whole base tar), newest first and only until one qualifies."""
    marks = [XidMark.of(b) for b in sorted(usable, key=chronology.position)]
    for i in range(len(marks) - 1, -1, -1):
        if marks[i].bound is None:
            backup = marks[i].backup
            log.warning("reading backup %s's next transaction id from its stored global/pg_control (its "
                        "metadata predates recording it): decoding %s", backup.id, human_bytes(backup.plain_size))
            marks[i] = XidMark(backup, stored_pg_control(holding(repo, backup), backup).next_xid, None,
                               from_control=True)
        choice = choose_for_xid(marks[i:], value)
        if choice.settled or i == 0:
            return choice
    return choose_for_xid(marks, value)  # no backup: refused there



def build_plan(repo: Repository, catalog: Catalog, target: Target, *, action: str, target_timeline: str | None,
               exclusive: bool, backup_id: str | None, standby: bool, gap_wait: float = 0.0) -> Plan:
    every = catalog.backups()
    # An incremental backup whose chain lacks a member cannot be restored: never chosen (verify reports it).
    parents = parent_map(every)
    broken = {b.id for b in every if chain_length(b.id, parents) is None}
    backups = [b for b in every if b.id not in broken or b.id == backup_id]
    histories = {n.timeline for n, _s, _m in repo.iter_wal() if n.kind is WalKind.HISTORY}
    warnings: list[str] = []
    if target_timeline in (None, "latest"):
        base_tli = min((b.stop_timeline for b in backups), default=1)
        tli = latest_timeline(repo, base_tli, histories)
        explicit = False
    elif target_timeline == "current":
        raise ConfigError("--target-timeline current: give the timeline number (walkeeper wal-list shows them)")
    else:
        try:
            tli = int(target_timeline, 0) if not target_timeline.isdigit() else int(target_timeline)
        except ValueError:
            raise ConfigError(f"--target-timeline {target_timeline!r}: expected a number or 'latest'") from None
        explicit = True
    path = timeline_path(repo, tli)
    if target.kind == "xid" and backup_id is None and target.xid is not None:
        usable = [b for b in backups if on_path(b, path)]
        if not usable and backups:
            raise RefusedError(f"no backup lies on the history of timeline {path[-1].timeline}")
        choice = xid_choice(repo, usable, target.xid)
        backup, reason = choice.backup, choice.reason
        warnings.extend(choice.warnings)
    else:
        backup, reason = choose_backup(backups, target, path, backup_id)
        if target.kind == "xid" and target.xid is not None:
            mark = XidMark.of(backup)  # --backup: warn from the metadata only (reading pg_control costs a backup)
            if mark.bound is not None and full_xid(target.xid, mark.bound) < mark.bound:
                when = "ended" if mark.stop_next_xid is not None else "began (its checkpoint)"
                warnings.append(f"transaction {format_xid(full_xid(target.xid, mark.bound))} began before backup "
                                f"{backup.id} {when}, next xid {format_xid(mark.bound)}: if it had committed by "
                                "the end of the backup, recovery from it cannot stop at it")
    if not explicit:
        # 'latest' as PostgreSQL computes it starts from the backup's own timeline.
        tli = latest_timeline(repo, backup.stop_timeline, histories)
        path = timeline_path(repo, tli)
    if target.kind == "name" and target.point is not None:
        on = [s.timeline for s in path]
        if target.point.timeline not in on:
            raise RefusedError(f"restore point {target.point.name!r} was created on timeline "
                               f"{target.point.timeline}, which is not on the path {on}",
                               hint=f"add --target-timeline {target.point.timeline}")
    if target.kind == "time" and not explicit and len(path) > 1 and target.time is not None:
        branch = path[-2]
        for name, _s, mtime in repo.iter_wal():
            if name.kind is WalKind.HISTORY and name.timeline == path[-1].timeline:
                created = datetime.fromtimestamp(mtime, UTC)
                if target.time < created:
                    warnings.append(
                        f"timeline {path[-1].timeline} was created at {created.isoformat(timespec='seconds')}, "
                        f"after the target time, by branching from timeline {branch.timeline}; recovery follows "
                        f"timeline {path[-1].timeline}. For timeline {branch.timeline}'s own history after the "
                        f"branch point, use --target-timeline {branch.timeline}")
    if broken:
        warnings.append(f"{plural(len(broken), 'incremental backup')} with a missing chain member not considered "
                        f"({', '.join(sorted(broken))}; walkeeper verify explains)")
    chain = chain_of(backup, every)  # raises BrokenChain for --backup of a broken one
    first, last, count = check_coverage_settled(repo, backup, target, path, gap_wait)
    return Plan(target, backup, reason, tli, explicit, path, first, last, count, action, exclusive, standby,
                warnings, chain)


# -- the recovery ----------------------------------------------------------------------------------

@dataclass
class PitrResult:
    plan: Plan
    restored: RestoreResult | None
    notes: list[str]
    pgdata: Path
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        """`pitr --json` (docs/json.md): the plan, and what was written unless --dry-run."""
        plan, target, backup = self.plan, self.plan.target, self.plan.backup
        restored = self.restored
        return {
            "pgdata": str(self.pgdata), "dry_run": self.dry_run,
            "target": {"kind": target.kind,
                       "value": target.time.astimezone(UTC).isoformat(timespec="microseconds") if target.time
                       else target.value or None,
                       "settings": [line for line in settings_block(plan, "").splitlines()
                                    if line.startswith("recovery_target")]},
            "backup": {"id": backup.id, "label": backup.label, "stop_time": backup.stop_time,
                       "stop_lsn": backup.stop_lsn, "stop_timeline": backup.stop_timeline, "type": backup.type,
                       "parent": backup.parent},
            "chain": [b.id for b in plan.chain],
            "reason": plan.reason,
            "timelines": [{"timeline": s.timeline, "begin_lsn": format_lsn(s.begin),
                           "end_lsn": None if s.end is None else format_lsn(s.end)} for s in plan.path],
            "timeline_explicit": plan.timeline_explicit,
            "wal": {"first": plan.first_wal, "last": plan.last_wal, "segments": plan.segments},
            "action": plan.action, "exclusive": plan.exclusive, "standby": plan.standby,
            "warnings": plan.warnings,
            "restored": None if restored is None else {
                "backup": restored.backup.id, "chain": list(restored.chain), "files": restored.files,
                "bytes": restored.bytes,
                "seconds": round(restored.seconds, 3)},
            "notes": self.notes,
        }



def _check_restored_dir(pgdata: Path) -> str:
    if not (pgdata / "PG_VERSION").exists() or not (pgdata / "global" / "pg_control").exists():
        raise RefusedError(f"--no-restore: {pgdata} does not hold a restored backup (no PG_VERSION/pg_control)")
    label = pgdata / "backup_label"
    if not label.exists():
        raise RefusedError(f"--no-restore: {pgdata} has no backup_label: it is not a freshly restored backup "
                           "(a data directory that already ran cannot be recovered to a point in time)")
    for line in label.read_text(errors="replace").splitlines():
        if line.startswith("START WAL LOCATION:"):
            return line.split(":", 1)[1].split()[0]
    raise RefusedError(f"--no-restore: cannot read START WAL LOCATION from {label}")


def recover(config: Config, pgdata: str, *, time: str | None = None, lsn: str | None = None, xid: str | None = None,
         name: str | None = None, immediate: bool = False, action: str = "pause", target_timeline: str | None = None,
         exclusive: bool = False, backup_id: str | None = None, standby: bool = False, no_restore: bool = False,
         dry_run: bool = False, config_path: str | None = None, repo_flag: str | None = None,
         tablespace_map: tuple[str, ...] = (), end_of_archive: bool = False, primary_conninfo: str | None = None,
         primary_slot_name: str | None = None, create_slot: bool = False) -> PitrResult:
    """``end_of_archive``: no target, recover all archived WAL (restore-test --target latest, pitr --target-latest).

    ``primary_conninfo``, ``primary_slot_name``, ``create_slot``: a standby that streams (postgres/standby.py).
    """
    if action not in ACTIONS:
        raise ConfigError(f"--target-action must be one of {', '.join(ACTIONS)}")
    streaming = standby_streaming(standby, primary_conninfo, primary_slot_name, create_slot)
    if backup_id is not None and backup_id != "latest":
        from walkeeper.repo.layout import validate_backup_id

        try:
            validate_backup_id(backup_id)
        except InvalidName as exc:
            raise ConfigError(str(exc)) from None
    repo, catalog = open_for_planning(config)
    target = make_target(catalog, time=time, lsn=lsn, xid=xid, name=name, immediate=immediate,
                         standby=standby or end_of_archive)
    directory = Path(os.path.abspath(pgdata))
    if no_restore:
        start = _check_restored_dir(directory)
        if backup_id is None:
            matches = [b for b in catalog.backups() if b.start_lsn == start]
            if not matches:
                raise RefusedError(f"--no-restore: no backup in the repository starts at {start} (from "
                                   f"{directory}/backup_label)", hint="give --backup ID")
            backup_id = matches[-1].id
    elif directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise RefusedError(f"{directory} exists and is not empty; refusing to restore over it",
                           hint="give a new or empty directory, or --no-restore if it holds a freshly restored "
                                "backup")
    if backup_id == "latest":
        backup_id = catalog.resolve("latest").id
    plan = build_plan(repo, catalog, target, action=action, target_timeline=target_timeline,
                      exclusive=exclusive, backup_id=backup_id, standby=standby, gap_wait=config.restore.gap_wait)
    if isinstance(repo, UnionView):
        plan.sources = describe_sources(repo, plan)
    command = restore_command(config_path or config.source, repo_flag, repository_name=config.repository_selected)
    if not (config_path or config.source):
        plan.warnings.append("no configuration file: restore_command relies on WALKEEPER_* variables being set "
                             "in the server's environment")
    first_notes = [streaming.note] if streaming and streaming.note else []
    if dry_run:
        return PitrResult(plan, None, [*first_notes, f"would write into {directory}/postgresql.auto.conf:",
                                       *("    " + line for line in
                                         settings_block(plan, command, streaming).splitlines())],
                          directory, True)
    if create_slot and streaming is not None and streaming.primary_slot_name:
        first_notes.append(create_standby_slot(config, streaming))
    if no_restore:
        return PitrResult(plan, None, first_notes + write_settings(directory, plan, command, streaming), directory,
                          False)
    notes: list[str] = first_notes
    # The settings are written before pg_control: a directory is never startable without them.
    source = holding(repo, plan.backup)  # several repositories: the one holding the backup (and its chain)
    restored = restore_any(config, source, plan.backup, directory,
                           backups=catalog.backups() if source is repo else Catalog(source).backups(),
                           tablespace_map=tablespace_map,
                           before_control=lambda pgdata: notes.extend(write_settings(pgdata, plan, command,
                                                                                     streaming)))
    return PitrResult(plan, restored, notes, directory, False)


def standby_streaming(standby: bool, conninfo: str | None, slot: str | None,
                      create_slot: bool) -> StreamingSettings | None:
    """The streaming settings of ``pitr --standby``, checked before anything is read or written."""
    if conninfo is None and slot is None:
        if create_slot:
            raise ConfigError("--create-slot needs --primary-slot-name (and --primary-conninfo to reach the primary)")
        return None
    if not standby:
        raise ConfigError("--primary-conninfo and --primary-slot-name are settings of a standby: add --standby")
    if slot is not None:
        validate_slot(slot)
    if create_slot and (slot is None or conninfo is None):
        raise ConfigError("--create-slot needs --primary-slot-name and --primary-conninfo (to reach the primary)")
    return streaming_settings(conninfo, slot)


def create_standby_slot(config: Config, streaming: StreamingSettings) -> str:
    """Create the standby's physical slot on the primary, through its conninfo (database postgres)."""
    assert streaming.primary_conninfo is not None and streaming.primary_slot_name is not None
    conn = ConnOptions(dbname=slot_conninfo(streaming.primary_conninfo))
    slot = streaming.primary_slot_name
    if create_physical_slot(config, conn, slot):
        return f"created physical replication slot {slot} on the primary"
    return f"physical replication slot {slot} already exists on the primary: kept"

"""Base backup commands: backup, backups [show], restore, pitr, restore-point, restore-points.

Parsing only: the work is in walkeeper/commands/ (backup, restore, pitr, restore_point), the output in render.py.
"""

from __future__ import annotations

import click

from walkeeper.cli import render
from walkeeper.cli.context import AppContext, conn_options, handle_errors, pass_app, switch_to_owner


@click.command("backup", context_settings={"help_option_names": ["--help"]})
@conn_options
@click.option("--fast-checkpoint", is_flag=True, help="Start with an immediate checkpoint (pg_basebackup -c fast).")
@click.option("--label", help="Backup label (default: 'walkeeper ID').")
@click.option("--wal", type=click.Choice(["archive", "include"]), default="archive", show_default=True,
              help="archive: WAL comes from the repository (waits for the last segment); "
                   "include: a self-contained backup.")
@click.option("--wal-wait-timeout", type=float, help="Seconds to wait for the last WAL segment "
              "(default [backup] wal_wait_timeout).")
@click.option("--incremental", is_flag=True, help="PostgreSQL 17+ (summarize_wal = on): only what changed since "
              "the parent backup (the newest on the server's timeline, or --from).")
@click.option("--from", "parent", metavar="ID", help="With --incremental: the parent backup.")
@click.option("--json", "as_json", is_flag=True, help="Print the backup's metadata as JSON.")
@pass_app
@handle_errors()
def backup_cmd(app: AppContext, host: str | None, port: str | None, user: str | None, dbname: str | None,
               fast_checkpoint: bool, label: str | None, wal: str, wal_wait_timeout: float | None,
               incremental: bool, parent: str | None, as_json: bool) -> None:
    """Take a base backup with pg_basebackup, streamed into the repository."""
    switch_to_owner(app, "backup")
    from dataclasses import asdict

    from walkeeper.commands.backup import BackupOptions, take_backup
    from walkeeper.postgres.client import ConnOptions

    options = BackupOptions(conn=ConnOptions(host, port, user, dbname), label=label,
                            fast_checkpoint=fast_checkpoint, wal=wal, wal_wait_timeout=wal_wait_timeout,
                            incremental=incremental, parent=parent)
    backup = take_backup(app.config, options)
    if as_json:
        render.echo_json(asdict(backup))
    else:
        render.print_backup_done(backup)


@click.group("backups", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def backups_group(ctx: click.Context, as_json: bool) -> None:
    """List base backups (oldest first); 'backups show ID' for one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(backups_list_cmd, as_json=as_json)


@pass_app
@handle_errors()
def backups_list_cmd(app: AppContext, as_json: bool) -> None:
    from walkeeper.repo.catalog import Catalog
    from walkeeper.repo.layout import BACKUP_PREFIX
    from walkeeper.repo.repository import open_repository
    from walkeeper.repo.writers import writer_states

    repo = open_repository(app.config)
    repo.require_meta()
    catalog = Catalog(repo)
    backups = catalog.backups()
    _complete, states = writer_states(catalog.repo.storage, catalog.repo.storage.list(BACKUP_PREFIX))
    running = [s for s in states.values() if s.alive]
    incomplete = [i for i in catalog.incomplete_backup_ids() if not (i in states and states[i].alive)]
    if as_json:
        render.echo_json(render.backups_json(backups, incomplete, running))
    else:
        render.print_backups(backups, incomplete, running)


@backups_group.command("show")
@click.argument("backup_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@handle_errors()
def backups_show_cmd(app: AppContext, backup_id: str, as_json: bool) -> None:
    """Everything recorded about one backup (ID or 'latest')."""
    from dataclasses import asdict

    from walkeeper.repo.catalog import Catalog
    from walkeeper.repo.repository import open_repository

    repo = open_repository(app.config)
    repo.require_meta()
    backup = Catalog(repo).resolve(backup_id)
    doc = asdict(backup)
    if as_json:
        render.echo_json(doc)
    else:
        render.print_backup(doc)


@click.command("restore")
@click.argument("backup_id", required=False, default="latest")
@click.option("--pgdata", "-D", required=True, type=click.Path(file_okay=False),
              help="Target data directory: new or empty.")
@click.option("--tablespace-map", multiple=True, metavar="OLD=NEW",
              help="Restore the tablespace at OLD (path or oid) into NEW instead.")
@click.option("--dry-run", is_flag=True, help="Show the backup (and an incremental's chain); write nothing.")
@pass_app
@handle_errors()
def restore_cmd(app: AppContext, backup_id: str, pgdata: str, tablespace_map: tuple[str, ...], dry_run: bool) -> None:
    """Restore a base backup (ID or 'latest', the default) into an empty or new directory."""
    from walkeeper.commands.restore import plan_restore, restore

    if dry_run:
        render.print_restore_plan(plan_restore(app.config, backup_id), pgdata)
        return
    switch_to_owner(app, "restore", pgdata=pgdata)

    render.print_restored(restore(app.config, backup_id, pgdata, tablespace_map))


@click.command("pitr")
@click.option("--pgdata", "-D", required=True, type=click.Path(file_okay=False), help="Target data directory.")
@click.option("--target-time", help="Recover up to this time ('2026-01-31 14:05:00+01', zone names allowed).")
@click.option("--target-lsn", help="Recover up to this WAL location (e.g. 0/3000060).")
@click.option("--target-xid", help="Recover up to the commit of this transaction id.")
@click.option("--target-name", help="Recover up to this restore point (walkeeper restore-point).")
@click.option("--target-immediate", is_flag=True, help="Stop as soon as the backup is consistent.")
@click.option("--target-latest", is_flag=True,
              help="Recover all of the archive (after the loss of the primary): no target, end of WAL.")
@click.option("--target-action", type=click.Choice(["pause", "promote", "shutdown"]), default="pause",
              show_default=True, help="What the server does at the target (PostgreSQL's default: pause).")
@click.option("--target-timeline", help="Timeline to follow: a number or 'latest' (default).")
@click.option("--exclusive", is_flag=True, help="Stop just before the target instead of just after it.")
@click.option("--backup", "backup_id", help="Use this backup instead of choosing one.")
@click.option("--standby", is_flag=True, help="Write standby.signal instead of recovery.signal.")
@click.option("--primary-conninfo", metavar="CONNINFO",
              help="--standby: stream from this primary (primary_conninfo; a password is never written).")
@click.option("--primary-slot-name", metavar="NAME", help="--standby: the physical slot to stream from.")
@click.option("--create-slot", is_flag=True, help="Create --primary-slot-name on the primary first.")
@click.option("--no-restore", is_flag=True, help="The directory already holds a restored backup: settings only.")
@click.option("--tablespace-map", multiple=True, metavar="OLD=NEW", help="As for restore.")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="The plan (and what was written) as JSON.")
@pass_app
@handle_errors()
def pitr_cmd(app: AppContext, pgdata: str, target_time: str | None, target_lsn: str | None,
             target_xid: str | None, target_name: str | None, target_immediate: bool, target_latest: bool,
             target_action: str, target_timeline: str | None, exclusive: bool, backup_id: str | None, standby: bool,
             primary_conninfo: str | None, primary_slot_name: str | None, create_slot: bool,
             no_restore: bool, tablespace_map: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Point-in-time recovery: choose a backup, check WAL coverage, restore, write recovery settings."""
    if target_latest and any((target_time, target_lsn, target_xid, target_name, target_immediate)):
        raise click.UsageError("--target-latest recovers all of the archive: give no other target")
    if not dry_run:
        switch_to_owner(app, "pitr", pgdata=pgdata)
    from walkeeper.commands.pitr import pitr

    result = pitr(app.config, pgdata, time=target_time, lsn=target_lsn, xid=target_xid, name=target_name,
                  immediate=target_immediate, action=target_action, target_timeline=target_timeline,
                  exclusive=exclusive, backup_id=backup_id, standby=standby, no_restore=no_restore,
                  dry_run=dry_run, config_path=app.config_path, repo_flag=app.repo, tablespace_map=tablespace_map,
                  end_of_archive=target_latest, primary_conninfo=primary_conninfo,
                  primary_slot_name=primary_slot_name, create_slot=create_slot)
    if as_json:
        render.echo_json(result.to_json())
    else:
        render.print_pitr(result, standby)


@click.command("restore-point", context_settings={"help_option_names": ["--help"]})
@click.argument("name")
@conn_options
@click.option("--switch-wal", is_flag=True, help="Also close the current WAL segment so it is archived now.")
@pass_app
@handle_errors()
def restore_point_cmd(app: AppContext, name: str, host: str | None, port: str | None, user: str | None,
                      dbname: str | None, switch_wal: bool) -> None:
    """Create a named restore point (pg_create_restore_point) and record it in the repository."""
    switch_to_owner(app, "restore-point")
    from walkeeper.commands.restore_point import create_restore_point
    from walkeeper.postgres.client import ConnOptions

    point = create_restore_point(app.config, name, ConnOptions(host, port, user, dbname), switch_wal=switch_wal)
    render.print_restore_point(point)


@click.command("restore-points")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@handle_errors()
def restore_points_cmd(app: AppContext, as_json: bool) -> None:
    """Restore points recorded by walkeeper restore-point (PostgreSQL cannot list them)."""
    from walkeeper.repo.catalog import Catalog
    from walkeeper.repo.repository import open_repository

    repo = open_repository(app.config)
    repo.require_meta()
    points = list(Catalog(repo).restore_points())
    if as_json:
        render.echo_json(render.restore_points_json(points))
    else:
        render.print_restore_points(points)


COMMANDS = (backup_cmd, backups_group, restore_cmd, pitr_cmd, restore_point_cmd, restore_points_cmd)

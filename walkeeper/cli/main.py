"""Command line: parse, build the context, call a command, map errors to exit codes.

The only module that imports click. Errors from the library arrive as WalkeeperError and leave
as one line on stderr and an exit code from ``errors.exit_code``; a traceback only with -v. Bad
command lines get one line too (click's usage block is for --help), and a reader that closes the
pipe early (``walkeeper wal-list | head -1``) ends the command quietly with CLOSED_PIPE_CODE.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from walkeeper import __version__
from walkeeper.core.config import Config, load_config
from walkeeper.core.durable import write_file
from walkeeper.core.errors import CLOSED_PIPE_CODE, NotFound, WalkeeperError, exit_code

log = logging.getLogger("walkeeper")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class AppContext:
    """What every command receives: how to load configuration, and how loud to be."""

    config_path: str | None
    repo: str | None
    verbose: int
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, repo=self.repo)
        return self._config


pass_app = click.make_pass_decorator(AppContext)


class CommandFailed(click.exceptions.Exit):
    """Carries the mapped exit code through click after the message has been printed."""


def _closed_pipe() -> int:
    """The reader of our output went away: stop quietly, like other Unix tools.

    Points stdout and stderr at /dev/null so that the interpreter's final flush of what is still
    buffered cannot fail again ("Exception ignored ... BrokenPipeError").
    """
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)
    return CLOSED_PIPE_CODE


class _CommandFormatter(logging.Formatter):
    """Log lines name the whole command and say what they are: "walkeeper pitr: warning: ..."."""

    command = "walkeeper"

    def format(self, record: logging.LogRecord) -> str:
        kind = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}
        return f"{self.command}: {kind.get(record.levelno, '')}{super().format(record)}"


def _name_command(ctx: click.Context) -> None:
    """From here on, log lines carry the full command path (known only once click has parsed it)."""
    _CommandFormatter.command = ctx.command_path


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CommandFormatter("%(message)s"))
    root = logging.getLogger("walkeeper")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def handle_errors(*, restore_command: bool = False, quiet_not_found: bool = False) -> Callable[[F], F]:
    """Map library errors to one stderr line and an exit code, in this one place."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            _name_command(ctx)
            app = ctx.find_object(AppContext)
            verbose = app.verbose if app else 0
            try:
                return func(*args, **kwargs)
            except (click.exceptions.Exit, click.ClickException, click.Abort):
                raise
            except BrokenPipeError:
                raise CommandFailed(_closed_pipe()) from None
            except NotFound as exc:
                code = exit_code(exc, restore_command=restore_command)
                if quiet_not_found:
                    log.debug("%s", exc)
                else:
                    _report(ctx, exc, verbose)
                    _notify(ctx, app, exc, code)
                raise CommandFailed(code) from None
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                code = exit_code(exc, restore_command=restore_command)
                _report(ctx, exc, verbose)
                _notify(ctx, app, exc, code)
                raise CommandFailed(code) from None

        return wrapper  # type: ignore[return-value]

    return decorate


def _message(exc: BaseException, verbose: int = 0) -> str:
    if isinstance(exc, WalkeeperError):
        return str(exc)
    details = "the traceback is above" if verbose else "rerun with -v for details"
    return f"internal error: {exc.__class__.__name__}: {exc} (please report this; {details})"


def _notify(ctx: click.Context, app: AppContext | None, exc: BaseException, code: int) -> None:
    """Record the failure of a watched command and run [notify] on_failure (walkeeper.commands.notify); never raises."""
    if app is None:
        return
    try:
        from walkeeper.commands.notify import EVENTS, notify_failure

        if ctx.info_name not in EVENTS:
            return
        obj = next((str(ctx.params[k]) for k in ("path", "name", "backup_id") if ctx.params.get(k)), "")
        notify_failure(app.config, ctx.info_name, obj, _message(exc), code)
    except Exception as err:  # e.g. the configuration itself is broken
        log.debug("notify: skipped (%s)", err)


def _report(ctx: click.Context, exc: BaseException, verbose: int) -> None:
    """One line, prefixed with the full command ("walkeeper key generate: error: ...")."""
    # One line even when a tool's own message spans several (psql's "error: ...\n\tIs the server running").
    message = " ".join(part.strip() for part in _message(exc, verbose).splitlines() if part.strip())
    if verbose:
        log.error("traceback follows", exc_info=exc)
    click.echo(f"{ctx.command_path}: error: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="WALKEEPER_CONFIG",  # checked when read: one error line
              help="TOML configuration file (env WALKEEPER_CONFIG).")
@click.option("--repo", envvar="WALKEEPER_REPO", help="Repository URL or path (env WALKEEPER_REPO).")
@click.option("-v", "--verbose", count=True, help="More output and, on an error, its traceback; -vv for debug.")
@click.version_option(__version__, prog_name="walkeeper")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, repo: str | None, verbose: int) -> None:
    """walkeeper: keeps PostgreSQL's WAL safe and brings the database back to any moment."""
    _setup_logging(verbose)
    ctx.obj = AppContext(config_path=config_path, repo=repo, verbose=verbose)


@cli.command("wal-push")
@click.argument("path")
@pass_app
@handle_errors()
def wal_push_cmd(app: AppContext, path: str) -> None:
    """Archive one WAL file (archive_command = 'walkeeper wal-push %p')."""
    from walkeeper.commands.wal_push import wal_push

    result = wal_push(app.config, path)
    if result.stored:
        log.info("archived %s (%d bytes, stored %d)", result.name, result.plain_size, result.stored_size)


@cli.command("wal-fetch")
@click.argument("name")
@click.argument("dest")
@pass_app
@handle_errors(restore_command=True, quiet_not_found=True)
def wal_fetch_cmd(app: AppContext, name: str, dest: str) -> None:
    """Restore one WAL file (restore_command = 'walkeeper wal-fetch %f %p').

    Exit 1: not in the archive. Exit above 200: a real error; PostgreSQL stops recovery.
    """
    from walkeeper.commands.wal_fetch import wal_fetch

    result = wal_fetch(app.config, name, dest)
    log.info("restored %s (%d bytes)", result.name, result.size)


@cli.command("wal-list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@handle_errors()
def wal_list_cmd(app: AppContext, as_json: bool) -> None:
    """What the repository holds, per timeline: first/last segment, count, gaps."""
    from walkeeper.repo.repository import open_repository

    repo = open_repository(app.config, codec=False)
    meta = repo.require_meta()  # a mistyped repository path is an error, as for status, not "empty"
    timelines = repo.timelines()
    if as_json:
        doc = {
            "repository": repo.storage.url,
            "system_identifier": meta.system_identifier,
            "wal_segment_size": meta.wal_segment_size,
            "timelines": [
                {"timeline": t.timeline, "first": t.first, "last": t.last, "segments": t.count,
                 "gaps": [{"from": a, "to": b} for a, b in t.gaps], "partial": t.partial,
                 "backup_labels": t.backup_labels, "history": t.history, "stored_bytes": t.stored_bytes}
                for t in timelines
            ],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"repository {repo.storage.url}")
    if not timelines:
        click.echo("  empty (nothing archived yet)")
        return
    click.echo(f"  system identifier {meta.system_identifier}, segment size {meta.wal_segment_size}")
    for t in timelines:
        span = f"{t.first} .. {t.last}" if t.first else "no segments"
        click.echo(f"  timeline {t.timeline}: {span}, {t.count} segments, {t.stored_bytes} bytes stored"
                   f"{', history file' if t.history else ''}")
        for a, b in t.gaps:
            click.echo(f"    GAP: {a} .. {b} missing")
        for p in t.partial:
            click.echo(f"    partial: {p}")


# -- base backups, restore, point-in-time recovery (commands/backup.py, restore.py, pitr.py) ----------------

def _conn_options(func: F) -> F:
    """libpq connection flags; unset ones come from PGHOST/PGPORT/PGUSER/PGDATABASE and .pgpass."""
    for option in reversed([
        click.option("-h", "--host", help="Server host or socket directory (libpq; env PGHOST)."),
        click.option("-p", "--port", help="Server port (env PGPORT)."),
        click.option("-U", "--username", "user", help="User name (env PGUSER)."),
        click.option("-d", "--dbname", help="Database name or a conninfo string / URI."),
    ]):
        func = option(func)
    return func


def _run_as_owner(app: AppContext, command: str, *, pgdata: str | None = None) -> None:
    """As root: switch to the owner of the local repository / target data directory, or refuse (privileges.py)."""
    from walkeeper.privileges import run_as_owner

    account = run_as_owner(command, app.config.repo, pgdata=pgdata)
    if account is not None:
        log.info("running as %s, the owner of what %s writes", account.describe(), command)


@cli.command("init", context_settings={"help_option_names": ["--help"]})
@click.option("--owner", metavar="USER", help="As root: create everything for USER (default: the owner of --pgdata).")
@click.option("--pgdata", "-D", type=click.Path(file_okay=False, exists=True),
              help="Record this data directory's database system identifier (read from global/pg_control).")
@_conn_options
@click.option("--generate-key", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write a new key to FILE (mode 0600) unless it exists, and use it.")
@click.option("--write-config", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write a configuration file naming the repository and the key, unless it exists.")
@pass_app
@handle_errors()
def init_cmd(app: AppContext, owner: str | None, pgdata: str | None, host: str | None, port: str | None,
             user: str | None, dbname: str | None, generate_key: str | None, write_config: str | None) -> None:
    """Create the repository (with key and configuration if asked) before the first wal-push.

    Idempotent; a repository of another database system is refused (exit 7). Connection options
    (-h/-p/-U/-d) record the system identifier of a running server instead of --pgdata.
    """
    from walkeeper.commands.init import InitOptions, next_steps, run_init
    from walkeeper.postgres.client import ConnOptions

    conn = ConnOptions(host, port, user, dbname) if any((host, port, user, dbname)) else None
    report = run_init(app.config, InitOptions(owner=owner, pgdata=pgdata, conn=conn, generate_key=generate_key,
                                              write_config=write_config, config_path=app.config_path))
    for line in report.lines:
        click.echo(line)
    click.echo("done" if report.changed else "nothing changed: everything was already in place")
    for line in next_steps(report):
        click.echo(line)


@cli.command("backup", context_settings={"help_option_names": ["--help"]})
@_conn_options
@click.option("--fast-checkpoint", is_flag=True, help="Start with an immediate checkpoint (pg_basebackup -c fast).")
@click.option("--label", help="Backup label (default: 'walkeeper ID').")
@click.option("--wal", type=click.Choice(["archive", "include"]), default="archive", show_default=True,
              help="archive: WAL comes from the repository (waits for the last segment); "
                   "include: a self-contained backup.")
@click.option("--wal-wait-timeout", type=float, help="Seconds to wait for the last WAL segment "
              "(default [backup] wal_wait_timeout).")
@click.option("--json", "as_json", is_flag=True, help="Print the backup's metadata as JSON.")
@pass_app
@handle_errors()
def backup_cmd(app: AppContext, host: str | None, port: str | None, user: str | None, dbname: str | None,
               fast_checkpoint: bool, label: str | None, wal: str, wal_wait_timeout: float | None,
               as_json: bool) -> None:
    """Take a base backup with pg_basebackup, streamed into the repository."""
    _run_as_owner(app, "backup")
    from dataclasses import asdict

    from walkeeper.commands.backup import BackupOptions, take_backup
    from walkeeper.core.units import human_bytes as human
    from walkeeper.postgres.client import ConnOptions

    options = BackupOptions(conn=ConnOptions(host, port, user, dbname), label=label,
                            fast_checkpoint=fast_checkpoint, wal=wal, wal_wait_timeout=wal_wait_timeout)
    backup = take_backup(app.config, options)
    if as_json:
        click.echo(json.dumps(asdict(backup), indent=2))
        return
    click.echo(f"backup {backup.id} done: {human(backup.plain_size)} stored as {human(backup.stored_size)}, "
               f"LSN {backup.start_lsn} .. {backup.stop_lsn} (timeline {backup.timeline}), "
               f"WAL {backup.start_wal} .. {backup.stop_wal} ({backup.wal_mode})")


@cli.group("backups", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def backups_group(ctx: click.Context, as_json: bool) -> None:
    """List base backups (oldest first); 'backups show ID' for one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(backups_list_cmd, as_json=as_json)


@pass_app
@handle_errors()
def backups_list_cmd(app: AppContext, as_json: bool) -> None:
    from dataclasses import asdict

    from walkeeper.core.units import human_bytes as human
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
        click.echo(json.dumps({"backups": [asdict(b) for b in backups], "incomplete": incomplete,
                               "running": [{"id": s.backup_id, "writer": s.describe()} for s in running]},
                              indent=2))
        return
    if not backups:
        click.echo("no backups")
    else:
        click.echo(f"{'ID':<18} {'STOP TIME (UTC)':<20} {'TLI':>3} {'START LSN':>12} {'STOP LSN':>12} "
                   f"{'SIZE':>10} {'STORED':>10} WAL     LABEL")
    for b in backups:
        click.echo(f"{b.id:<18} {b.stop_time[:19].replace('T', ' '):<20} {b.timeline:>3} {b.start_lsn:>12} "
                   f"{b.stop_lsn:>12} {human(b.plain_size):>10} {human(b.stored_size):>10} {b.wal_mode:<7} {b.label}")
    for i in incomplete:
        click.echo(f"{i:<18} INCOMPLETE (no metadata: interrupted, not usable)")
    for s in running:
        click.echo(f"{s.backup_id:<18} RUNNING ({s.describe()})")


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
        click.echo(json.dumps(doc, indent=2))
        return
    for key, value in doc.items():
        if key == "objects":
            for obj in value:
                click.echo(f"object: {obj['key']} {obj['plain_size']} bytes -> {obj['stored_size']} stored, "
                           f"sha256 {obj['sha256']}" + (f", tablespace {obj['tablespace_oid']} at {obj['location']}"
                                                       if obj["tablespace_oid"] else ""))
        else:
            click.echo(f"{key}: {value}")


@cli.command("restore")
@click.argument("backup_id", required=False, default="latest")
@click.option("--pgdata", "-D", required=True, type=click.Path(file_okay=False),
              help="Target data directory: new or empty.")
@click.option("--tablespace-map", multiple=True, metavar="OLD=NEW",
              help="Restore the tablespace at OLD (path or oid) into NEW instead.")
@pass_app
@handle_errors()
def restore_cmd(app: AppContext, backup_id: str, pgdata: str, tablespace_map: tuple[str, ...]) -> None:
    """Restore a base backup (ID or 'latest', the default) into an empty or new directory."""
    _run_as_owner(app, "restore", pgdata=pgdata)
    from walkeeper.commands.restore import restore
    from walkeeper.core.units import human_bytes as human

    result = restore(app.config, backup_id, pgdata, tablespace_map)
    click.echo(f"restored backup {result.backup.id} into {result.pgdata}: {result.files} files, "
               f"{human(result.bytes)} in {result.seconds:.1f}s, checksums verified")
    click.echo("it is not started: for recovery settings use 'walkeeper pitr --no-restore', then pg_ctl start")


@cli.command("pitr")
@click.option("--pgdata", "-D", required=True, type=click.Path(file_okay=False), help="Target data directory.")
@click.option("--target-time", help="Recover up to this time ('2026-01-31 14:05:00+01', zone names allowed).")
@click.option("--target-lsn", help="Recover up to this WAL location (e.g. 0/3000060).")
@click.option("--target-xid", help="Recover up to the commit of this transaction id.")
@click.option("--target-name", help="Recover up to this restore point (walkeeper restore-point).")
@click.option("--target-immediate", is_flag=True, help="Stop as soon as the backup is consistent.")
@click.option("--target-action", type=click.Choice(["pause", "promote", "shutdown"]), default="pause",
              show_default=True, help="What the server does at the target (PostgreSQL's default: pause).")
@click.option("--target-timeline", help="Timeline to follow: a number or 'latest' (default).")
@click.option("--exclusive", is_flag=True, help="Stop just before the target instead of just after it.")
@click.option("--backup", "backup_id", help="Use this backup instead of choosing one.")
@click.option("--standby", is_flag=True, help="Write standby.signal instead of recovery.signal.")
@click.option("--no-restore", is_flag=True, help="The directory already holds a restored backup: settings only.")
@click.option("--tablespace-map", multiple=True, metavar="OLD=NEW", help="As for restore.")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="The plan (and what was written) as JSON.")
@pass_app
@handle_errors()
def pitr_cmd(app: AppContext, pgdata: str, target_time: str | None, target_lsn: str | None,
             target_xid: str | None, target_name: str | None, target_immediate: bool, target_action: str,
             target_timeline: str | None, exclusive: bool, backup_id: str | None, standby: bool,
             no_restore: bool, tablespace_map: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Point-in-time recovery: choose a backup, check WAL coverage, restore, write recovery settings."""
    if not dry_run:
        _run_as_owner(app, "pitr", pgdata=pgdata)
    from walkeeper.commands.pitr import pitr

    result = pitr(app.config, pgdata, time=target_time, lsn=target_lsn, xid=target_xid, name=target_name,
                  immediate=target_immediate, action=target_action, target_timeline=target_timeline,
                  exclusive=exclusive, backup_id=backup_id, standby=standby, no_restore=no_restore,
                  dry_run=dry_run, config_path=app.config_path, repo_flag=app.repo, tablespace_map=tablespace_map)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    for line in result.plan.lines():
        click.echo(line)
    if result.dry_run:
        click.echo("dry run: nothing written")
        for line in result.notes:
            click.echo(line)
        return
    if result.restored:
        r = result.restored
        click.echo(f"restored backup {r.backup.id} into {r.pgdata}: {r.files} files in {r.seconds:.1f}s, "
                   "checksums verified")
    for note in result.notes:
        click.echo(note)
    signal = "standby.signal" if standby else "recovery.signal"
    click.echo(f"wrote {signal} and the recovery settings block in {result.pgdata}/postgresql.auto.conf")
    click.echo(f"next: pg_ctl -D {result.pgdata} start   (check archive_command in postgresql.conf first: "
               "after promotion the server archives its new timeline)")


@cli.command("restore-point", context_settings={"help_option_names": ["--help"]})
@click.argument("name")
@_conn_options
@click.option("--switch-wal", is_flag=True, help="Also close the current WAL segment so it is archived now.")
@pass_app
@handle_errors()
def restore_point_cmd(app: AppContext, name: str, host: str | None, port: str | None, user: str | None,
                      dbname: str | None, switch_wal: bool) -> None:
    """Create a named restore point (pg_create_restore_point) and record it in the repository."""
    _run_as_owner(app, "restore-point")
    from walkeeper.commands.restore_point import create_restore_point
    from walkeeper.postgres.client import ConnOptions

    point = create_restore_point(app.config, name, ConnOptions(host, port, user, dbname), switch_wal=switch_wal)
    click.echo(f"restore point {point.name!r} at LSN {point.lsn} (timeline {point.timeline}, {point.time}, "
               f"WAL {point.wal_file})")


@cli.command("restore-points")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@handle_errors()
def restore_points_cmd(app: AppContext, as_json: bool) -> None:
    """Restore points recorded by walkeeper restore-point (PostgreSQL cannot list them)."""
    from dataclasses import asdict

    from walkeeper.repo.catalog import Catalog
    from walkeeper.repo.repository import open_repository

    repo = open_repository(app.config)
    repo.require_meta()
    points = list(Catalog(repo).restore_points())
    if as_json:
        from walkeeper.core.units import utc_text

        click.echo(json.dumps([{**asdict(p), "time": utc_text(p.time)} for p in points], indent=2))
        return
    if not points:
        click.echo("no restore points")
        return
    click.echo(f"{'NAME':<24} {'LSN':>12} {'TLI':>3} {'TIME':<32} WAL")
    for p in points:
        click.echo(f"{p.name:<24} {p.lsn:>12} {p.timeline:>3} {p.time:<32} {p.wal_file}")


# -- operating the archive (verify, status, check, expire) -------------------------------------------


@cli.command("verify")
@click.option("--deep", is_flag=True, help="Also read every object back: decrypt, decompress, checksum, "
              "WAL header (name, timeline, system identifier).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True, help="Objects read in parallel.")
@click.option("--pg-restore-list", is_flag=True, help="With --deep: also have pg_restore --list read each dump.")
@pass_app
@handle_errors()
def verify_cmd(app: AppContext, deep: bool, as_json: bool, jobs: int, pg_restore_list: bool) -> None:
    """Check that the archive is whole from the oldest backup to the newest segment.

    Exit 0 only when it is; 5 when a problem was found (the report says what to do).
    """
    from walkeeper.commands.verify import format_report, verify
    from walkeeper.core.errors import IntegrityError
    from walkeeper.postgres.client import pg_tool
    from walkeeper.repo.repository import open_repository

    lister = pg_tool(app.config, "pg_restore") if deep and pg_restore_list else None
    report = verify(open_repository(app.config), deep=deep, jobs=jobs, pg_restore=lister)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    if not report.ok:
        raise CommandFailed(IntegrityError.code)


@cli.command("status", context_settings={"help_option_names": ["--help"]})
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--cluster/--no-cluster", default=True, show_default=True,
              help="Also ask the server (psql with the connection options) for pg_stat_archiver.")
@_conn_options
@pass_app
@handle_errors()
def status_cmd(app: AppContext, as_json: bool, cluster: bool, host: str | None, port: str | None, user: str | None,
               dbname: str | None) -> None:
    """Repository summary and, when the server can be reached, its archiver's view."""
    from walkeeper.commands.status import cluster_status, local_failures, repository_status, status_json
    from walkeeper.postgres.client import ConnOptions
    from walkeeper.repo.repository import open_repository

    config = app.config
    repo_error: WalkeeperError | None = None
    try:
        repo = open_repository(config)
        doc = repository_status(repo)
        from walkeeper.commands.key_rotate import key_table  # README "Keys": key ids, never keys

        doc["keys"] = key_table(repo) if repo.meta() else []
    except WalkeeperError as exc:  # the server's side is still worth showing: it may say why
        repo_error = exc
        doc = {"repository": config.repo, "error": str(exc)}
    if cluster:
        try:
            doc["cluster"] = cluster_status(config, ConnOptions(host, port, user, dbname))
        except WalkeeperError as exc:
            doc["cluster"] = {"error": str(exc)}
    doc["walkeeper_failures"] = local_failures(config)
    if as_json:
        click.echo(json.dumps(status_json(doc), indent=2))
    else:
        _print_status(doc)
    if repo_error is not None:
        raise repo_error


def _print_status(doc: dict[str, Any]) -> None:
    """`walkeeper status` as text: the repository (or why it cannot be read), the server, local failures."""
    from walkeeper.commands.status import human_age
    from walkeeper.core.units import iso_utc, plural

    if "error" in doc:
        click.echo(f"repository {doc['repository']}: cannot be read ({doc['error']})")
    else:
        _print_repository(doc)
    c = doc.get("cluster")
    if c and "error" in c:
        click.echo(f"  server: not reachable ({c['error']})")
    elif c:
        click.echo(f"  server: current WAL {c['current_wal'] or '(in recovery)'}, last archived "
                   f"{c['last_archived_wal']}, {c['archived_count']} archived, {c['failed_count']} failed"
                   + (f" (last failure {c['last_failed_wal']}, STILL FAILING)" if c["failing"] else ""))
        if c["archive_lag_segments"] is not None:
            click.echo(f"  archive lag: {plural(c['archive_lag_segments'], 'segment')}"
                       + (f", {human_age(c['archive_lag_seconds'])}" if c["archive_lag_seconds"] else ""))
    for event, entry in sorted(doc["walkeeper_failures"].items()):
        click.echo(f"  walkeeper {event} failures on this host: {entry['failures']}"
                   + (f", last at {iso_utc(entry['last_failure'])}" if entry.get("last_failure") else "")
                   + (f": {entry['last_error']}" if entry.get("last_error") else ""))


def _print_repository(doc: dict[str, Any]) -> None:
    from walkeeper.commands.status import human_ago
    from walkeeper.core.units import human_bytes, plural

    click.echo(f"repository {doc['repository']} (system {doc['system_identifier']}), "
               f"{human_bytes(doc['total_bytes'])} stored")
    for b in doc["backups"]:
        click.echo(f"  backup {b['id']}: timeline {b['timeline']}, WAL {b['start_wal']} .. {b['stop_wal']}, "
                   f"{human_bytes(b['stored_bytes'])}, ended {human_ago(b['age_seconds'])}")
    if not doc["backups"]:
        click.echo("  no backups")
    last_test = (doc.get("restore_tests") or {}).get("last")
    if last_test:
        subject = f"dump {last_test['dump']}" if last_test.get("dump") else f"backup {last_test['backup']}"
        click.echo(f"  last restore test {last_test['id']} of {subject}: "
                   + ("passed" if last_test["ok"] else f"FAILED ({last_test['reason']})")
                   + f", {last_test['total_seconds']:.0f}s, {human_ago(last_test['age_seconds'])}")
    for backup_id in doc["incomplete_backups"]:
        click.echo(f"  incomplete backup {backup_id} (not usable)")
    for running in doc["running_backups"]:
        click.echo(f"  running backup {running['id']} ({running['writer']}), "
                   f"{human_bytes(running['in_flight_bytes'])} in flight")
    left = doc["leftovers"]
    if left["objects"] or left["empty_directories"]:
        objects = plural(left["objects"], "temporary object or upload", "temporary objects or uploads")
        dirs = plural(left["empty_directories"], "empty backup directory", "empty backup directories")
        click.echo(f"  leftovers of dead writers: {objects} holding {human_bytes(left['bytes'])}, {dirs} "
                   "(walkeeper expire or the next backup removes them)")
    for d in doc.get("dumps", []):
        click.echo(f"  dump of {d['database']}: {d['id']}, {human_ago(d['age_seconds'])}")
    for t in doc["timelines"]:
        span = f"{t['first']} .. {t['last']}" if t["first"] else "no segments"
        click.echo(f"  timeline {t['timeline']}: {span}, {plural(t['segments'], 'segment')}, "
                   f"{human_bytes(t['stored_bytes'])}{', history file' if t['history'] else ''}")
        for gap in t["gaps"]:
            click.echo(f"    GAP: {gap['from']} .. {gap['to']} missing")
    point = doc["oldest_recovery_point"]
    click.echo(f"  oldest recovery point: {point['lsn']} (end of backup {point['backup']})" if point
               else "  oldest recovery point: none (no backup)")
    newest = doc["newest_segment"]
    if newest:
        click.echo(f"  newest segment: {newest['name']}, archived {human_ago(newest['age_seconds'])}")


@cli.command("check", context_settings={"help_option_names": ["--help"]})
@click.option("--max-wal-age", help="CRITICAL when the newest WAL is older (e.g. 15m, 1h).")
@click.option("--max-backup-age", help="CRITICAL when the newest backup is older (e.g. 26h, 8d).")
@click.option("--warn-wal-age", help="WARNING when the newest WAL is older.")
@click.option("--warn-backup-age", help="WARNING when the newest backup is older.")
@click.option("--max-dump-age", help="CRITICAL when the newest dump of a database is older (e.g. 26h).")
@click.option("--warn-dump-age", help="WARNING when the newest dump of a database is older.")
@click.option("--max-restore-test-age", help="CRITICAL when the last successful restore test is older (e.g. 8d).")
@click.option("--warn-restore-test-age", help="WARNING when the last successful restore test is older.")
@click.option("--cluster", is_flag=True, help="Also check the server's archiver (psql with the connection options).")
@click.option("--archive", is_flag=True, help="Preflight instead: check the server's archive settings, force a WAL "
              "switch and wait until that segment is in this repository and reads back.")
@click.option("--timeout", type=click.FloatRange(min=1), default=60, show_default=True,
              help="--archive: seconds to wait for the segment.")
@_conn_options
@click.option("--prometheus", "prometheus_file", type=click.Path(dir_okay=False),
              help="Also write a node-exporter textfile (atomically) to FILE.")
@click.option("--json", "as_json", is_flag=True, help="The result as JSON (status, reasons, what was read).")
@pass_app
def check_cmd(app: AppContext, max_wal_age: str | None, max_backup_age: str | None, warn_wal_age: str | None,
              warn_backup_age: str | None, max_dump_age: str | None,
              warn_dump_age: str | None, max_restore_test_age: str | None,
              warn_restore_test_age: str | None, cluster: bool, archive: bool, timeout: float, host: str | None,
              port: str | None, user: str | None, dbname: str | None, prometheus_file: str | None,
              as_json: bool) -> None:
    """Monitoring plugin: one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
    from walkeeper.commands.status import (
        UNKNOWN,
        CheckResult,
        Thresholds,
        parse_duration,
        prometheus_text,
        run_check,
    )
    from walkeeper.postgres.client import ConnOptions

    _name_command(click.get_current_context())
    if archive and (cluster or prometheus_file or any((max_wal_age, max_backup_age, warn_wal_age, warn_backup_age,
                                                       max_dump_age, warn_dump_age, max_restore_test_age,
                                                       warn_restore_test_age))):
        raise click.UsageError("--archive runs the preflight alone: without --cluster, --prometheus or ages")
    conn = ConnOptions(host, port, user, dbname)
    doc: dict[str, Any] = {}
    try:
        config = app.config
        repo_url = config.repo
        if archive:
            from walkeeper.commands.check import run_archive_check

            preflight = run_archive_check(config, conn, timeout)
            result, doc = preflight.result, preflight.doc
        else:
            thresholds = Thresholds(*(parse_duration(v) if v else None
                                      for v in (max_wal_age, max_backup_age, warn_wal_age, warn_backup_age,
                                                max_dump_age, warn_dump_age, max_restore_test_age,
                                                warn_restore_test_age)))
            result = run_check(config, thresholds, cluster=cluster, conn=conn)
    except Exception as exc:
        result, repo_url = CheckResult(UNKNOWN, [_message(exc)]), app.repo or ""
    if prometheus_file:
        try:
            # Durable and atomic: the collector never reads half a file (its temp name does not end in .prom).
            write_file(prometheus_file, prometheus_text(result, repo_url).encode(), mode=0o644)
        except OSError as exc:
            result.raise_to(UNKNOWN, f"cannot write {prometheus_file}: {exc.strerror or exc}")
            result.status = UNKNOWN
    try:
        if as_json:
            from walkeeper.commands.status import STATE_NAMES, status_json

            if not archive:
                doc = {"repository": repo_url, **({"repo": status_json(result.repo)} if result.repo else {}),
                       **({"cluster": status_json(result.cluster)} if result.cluster else {})}
            click.echo(json.dumps({"status": STATE_NAMES[result.status], "exit_code": result.status,
                                   "line": result.line(), "reasons": result.messages, "facts": result.facts,
                                   **doc}, indent=2))
        else:
            click.echo(result.line())
    except BrokenPipeError:
        raise CommandFailed(_closed_pipe()) from None
    raise CommandFailed(result.status)


@cli.command("expire")
@click.option("--keep", type=int, help="Keep the newest N complete backups (default [retention] keep).")
@click.option("--keep-days", type=float, help="Keep every moment of the last D days recoverable "
              "(default [retention] keep_days).")
@click.option("--keep-daily", type=int, metavar="N", help="Keep the newest backup of each of the last N days.")
@click.option("--keep-weekly", type=int, metavar="N", help="... of each of the last N ISO weeks.")
@click.option("--keep-monthly", type=int, metavar="N", help="... of each of the last N months.")
@click.option("--keep-yearly", type=int, metavar="N", help="... of each of the last N years.")
@click.option("--dumps", "dumps_only", is_flag=True, help="Apply the rules given to logical dumps instead of "
              "backups (default: [retention] for backups and [retention.dumps] for dumps).")
@click.option("--dry-run", is_flag=True, help="Print exactly what would be removed, remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@handle_errors()
def expire_cmd(app: AppContext, keep: int | None, keep_days: float | None, keep_daily: int | None,
               keep_weekly: int | None, keep_monthly: int | None, keep_yearly: int | None, dumps_only: bool,
               dry_run: bool, as_json: bool) -> None:
    """Remove expired backups and the WAL and restore points no retained backup needs; expired dumps."""
    if not dry_run:
        _run_as_owner(app, "expire")
    from walkeeper.cli.dumps import expire_report
    from walkeeper.commands.expire import time_zone
    from walkeeper.core.retention_gfs import GfsPolicy
    from walkeeper.repo.repository import open_repository

    given = GfsPolicy(keep, keep_days, keep_daily, keep_weekly, keep_monthly, keep_yearly)
    ret = app.config.retention
    zone = time_zone(ret.time_zone)
    repo = open_repository(app.config)
    if dumps_only:
        expire_report(repo, None, given, zone, dry_run, as_json)
        return
    backups = given if not given.empty() else GfsPolicy(ret.keep, ret.keep_days, ret.keep_daily, ret.keep_weekly,
                                                         ret.keep_monthly, ret.keep_yearly)
    d = ret.dumps
    dumps = None if not given.empty() else GfsPolicy(d.keep, d.keep_days, d.keep_daily, d.keep_weekly,
                                                     d.keep_monthly, d.keep_yearly)
    dumps = dumps if dumps is not None and not dumps.empty() else None
    # [retention.dumps] alone expires dumps only; with no rule at all, expire for backups says what to set.
    expire_report(repo, None if backups.empty() and dumps is not None else backups, dumps, zone, dry_run, as_json)


def _usage_error(exc: click.ClickException, args: list[str]) -> int:
    """A bad command line: one line on stderr (what, and where to look) and the code its caller needs."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):  # bare `walkeeper` or `walkeeper key`: the help
        exc.show()
        return exc.exit_code
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "walkeeper"
    message = exc.format_message().rstrip(".")
    click.echo(f"{path}: error: {message} (see '{path} --help')", err=True)
    if ctx is not None and ctx.info_name == "check":
        # A monitoring plugin's caller reads 2 as CRITICAL: a broken check command line is UNKNOWN.
        from walkeeper.commands.status import STATE_NAMES, UNKNOWN

        click.echo(f"WALKEEPER {STATE_NAMES[UNKNOWN]} - bad command line: {message}")
        return UNKNOWN
    # A restore_command with bad arguments must stop recovery, not read as "not found".
    return exit_code(exc, restore_command=True) if "wal-fetch" in args else exc.exit_code


from walkeeper.cli.dumps import register as _register_dumps  # noqa: E402 - needs cli defined

_register_dumps(cli)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (never raises SystemExit to the caller's caller)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        result = cli.main(args=args, prog_name="walkeeper", standalone_mode=False)
        sys.stdout.flush()  # here, not at interpreter exit, so that a closed pipe is handled below
    except click.exceptions.Exit as exc:
        code = exc.exit_code
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return _closed_pipe()
        return code
    except click.ClickException as exc:
        return _usage_error(exc, args)
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except BrokenPipeError:
        return _closed_pipe()
    except SystemExit:
        # click's own answer to a closed pipe while it prints (help, usage): exit 1 after wrapping stdout
        if "PacifyFlushWrapper" in type(sys.stdout).__name__:
            return _closed_pipe()
        raise
    return result if isinstance(result, int) else 0


from walkeeper.cli.restore_test import restore_test_cmd, restore_tests_cmd  # noqa: E402 - they import this module

cli.add_command(restore_test_cmd)
cli.add_command(restore_tests_cmd)

from walkeeper.cli import keys as cli_keys  # noqa: E402 - key, rekey commands register on ``cli`` (import cycle by design)

cli_keys.register(cli)

from walkeeper.cli.receive import wal_receive_cmd  # noqa: E402 - it imports this module

cli.add_command(wal_receive_cmd)

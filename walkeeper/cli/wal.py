"""WAL commands: wal-push (archive_command), wal-fetch (restore_command), wal-list.

The work is in walkeeper/commands/wal_push.py and wal_fetch.py; their fast paths never reach this module
(walkeeper/entry.py answers them first with walkeeper/accel/).
"""

from __future__ import annotations

import click

from walkeeper.cli import render
from walkeeper.cli.context import AppContext, handle_errors, log, pass_app


@click.command("wal-push")
@click.argument("path")
@pass_app
@handle_errors()
def wal_push_cmd(app: AppContext, path: str) -> None:
    """Archive one WAL file (archive_command = 'walkeeper wal-push %p')."""
    from walkeeper.commands.wal_push import wal_push

    result = wal_push(app.config, path)
    if result.stored:
        log.info("archived %s (%d bytes, stored %d)", result.name, result.plain_size, result.stored_size)


@click.command("wal-fetch")
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


@click.command("wal-list")
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
        render.echo_json(render.wal_list_json(repo.storage.url, meta, timelines))
    else:
        render.print_wal_list(repo.storage.url, meta, timelines)


COMMANDS = (wal_push_cmd, wal_fetch_cmd, wal_list_cmd)

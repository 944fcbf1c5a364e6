"""Several repositories: ``copy`` between them. Parsing only: the work is in commands/copy and repo/copier."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from walkeeper.cli.context import AppContext, handle_errors, pass_app
from walkeeper.core.config import Config
from walkeeper.core.errors import WalkeeperError


def targets(config: Config) -> list[Config]:
    """What status, verify, check and expire act on: the repository --repo NAME selected, else each configured
    one in order (one repository: just it, and their output keeps its one-repository shape)."""
    return [config] if config.repository_selected else config.each_repository()


def for_each(configs: list[Config], work: Callable[[Config], Any]) -> tuple[dict[str, Any], WalkeeperError | None]:
    """``work`` on each repository, results keyed by name; a repository that fails does not stop the others
    (its result is ``{"error": ...}``); the first failure is returned for the exit code."""
    results: dict[str, Any] = {}
    first: WalkeeperError | None = None
    for config in configs:
        try:
            results[config.repository_name] = work(config)
        except WalkeeperError as exc:
            if len(configs) == 1:
                raise
            error = type(exc)(f"repository {config.repository_name}: {exc.args[0] if exc.args else exc}",
                              hint=exc.hint)
            first = first or error
            results[config.repository_name] = {"error": str(error)}
    return results, first


@click.command("copy")
@click.option("--from", "source", required=True, metavar="NAME", help="Repository to copy from ([[repository]] name).")
@click.option("--to", "dest", required=True, metavar="NAME", help="Repository to copy into.")
@click.option("--backups", "kinds", flag_value="backups", multiple=True,
              help="Base backups (with the WAL each needs and their parents).")
@click.option("--wal", "kinds", flag_value="wal", multiple=True, help="WAL files (.history, .backup, .partial too).")
@click.option("--dumps", "kinds", flag_value="dumps", multiple=True, help="Logical dumps.")
@click.option("--restore-points", "kinds", flag_value="restore-points", multiple=True, help="Restore points.")
@click.option("--all", "kinds", flag_value="all", multiple=True, help="All of these (the default).")
@click.option("--since", metavar="ID|TIME",
              help="Only this backup and later ones, with the WAL from its start (or a time, ISO 8601, UTC "
                   "without an offset).")
@click.option("--dry-run", is_flag=True, help="Say what would be copied; write nothing.")
@click.option("--progress/--no-progress", default=None, help="A progress line on stderr (default: on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
@handle_errors()
def copy_cmd(app: AppContext, source: str, dest: str, kinds: tuple[str, ...], since: str | None, dry_run: bool,
             progress: bool | None, as_json: bool) -> None:
    """Make repository --to hold what repository --from holds: verified, resumable, never overwriting.

    Objects already there and identical are skipped; a different one is refused (exit 6), as wal-push
    refuses one. A backup is listed in --to only after its data, its WAL and its parent are there.
    """
    from walkeeper.commands.copy import run_copy, selection, unusable_error
    from walkeeper.core.units import human_bytes, plural
    from walkeeper.repo.repository import open_repository

    config = app.config
    chosen = selection([] if "all" in kinds else list(kinds), since)
    if not dry_run:  # as root: become the owner of the repository written, as backup does (core/privileges.py)
        from walkeeper.core.privileges import run_as_owner
        from walkeeper.storage import local_repository_path

        target = config.for_repository(dest).repo
        run_as_owner("copy", target, local_repository_path(target))
    src = open_repository(config.for_repository(source))
    dst = open_repository(config.for_repository(dest))
    report = run_copy(src, dst, chosen, source_name=source, dest_name=dest, dry_run=dry_run, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        head = f"copy {source} -> {dest}"
        if dry_run:
            click.echo(f"{head} (dry run): would copy {plural(report.to_copy, 'object')} "
                       f"({human_bytes(report.to_copy_bytes)} in {source}), "
                       f"{plural(report.to_verify, 'object')} already there and identical")
            if report.backups_listed:
                click.echo(f"would list backups: {', '.join(report.backups_listed)}")
        else:
            recoded = f", {report.reencoded} re-encoded" if report.reencoded else ""
            click.echo(f"{head}: {plural(report.copied, 'object')} copied ({human_bytes(report.copied_bytes)} "
                       f"stored{recoded}), {plural(report.skipped, 'object')} already there and identical, "
                       f"in {report.seconds:.1f} s")
            if report.backups_listed:
                click.echo(f"backups listed in {dest}: {', '.join(report.backups_listed)}")
            if report.backups_present:
                click.echo(f"backups already in {dest}: {', '.join(report.backups_present)}")
            if report.dumps_listed:
                click.echo(f"dumps listed in {dest}: {', '.join(report.dumps_listed)}")
    error = unusable_error(report)
    if error is not None:
        raise error


COMMANDS = [copy_cmd]

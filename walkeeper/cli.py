"""Command line: parse, build the context, call a command, map errors to exit codes.

The only module that imports click. Errors from the library arrive as WalkeeperError and leave
as one line on stderr and an exit code from ``errors.exit_code``; a traceback only with -v.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from walkeeper import __version__
from walkeeper.config import Config, load_config
from walkeeper.errors import NotFound, WalkeeperError, exit_code

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


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("walkeeper: %(message)s"))
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
            app = ctx.find_object(AppContext)
            verbose = app.verbose if app else 0
            try:
                return func(*args, **kwargs)
            except (click.exceptions.Exit, click.ClickException, click.Abort):
                raise
            except NotFound as exc:
                code = exit_code(exc, restore_command=restore_command)
                if quiet_not_found:
                    log.debug("%s", exc)
                else:
                    _report(ctx.info_name, exc, verbose)
                    _notify(ctx, app, exc, code)
                raise CommandFailed(code) from None
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                code = exit_code(exc, restore_command=restore_command)
                _report(ctx.info_name, exc, verbose)
                _notify(ctx, app, exc, code)
                raise CommandFailed(code) from None

        return wrapper  # type: ignore[return-value]

    return decorate


def _message(exc: BaseException) -> str:
    if isinstance(exc, WalkeeperError):
        return str(exc)
    return f"internal error: {exc.__class__.__name__}: {exc} (please report this; rerun with -v for details)"


def _notify(ctx: click.Context, app: AppContext | None, exc: BaseException, code: int) -> None:
    """[notify] on_failure for the commands that must be watched (see walkeeper.notify); never raises."""
    if app is None:
        return
    try:
        from walkeeper.notify import EVENTS, notify_failure

        if ctx.info_name not in EVENTS or not app.config.notify.on_failure:
            return
        obj = next((str(ctx.params[k]) for k in ("path", "name", "backup_id") if ctx.params.get(k)), "")
        notify_failure(app.config, ctx.info_name, obj, _message(exc), code)
    except Exception as err:  # e.g. the configuration itself is broken
        log.debug("notify: skipped (%s)", err)


def _report(command: str | None, exc: BaseException, verbose: int) -> None:
    message = _message(exc)
    if verbose:
        log.error("%s: traceback follows", command, exc_info=exc)
    click.echo(f"walkeeper {command}: error: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="WALKEEPER_CONFIG", type=click.Path(dir_okay=False),
              help="TOML configuration file (env WALKEEPER_CONFIG).")
@click.option("--repo", envvar="WALKEEPER_REPO", help="Repository URL or path (env WALKEEPER_REPO).")
@click.option("-v", "--verbose", count=True, help="More output; -vv for debug and tracebacks.")
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
    from walkeeper.archive import wal_push

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
    from walkeeper.archive import wal_fetch

    result = wal_fetch(app.config, name, dest)
    log.info("restored %s (%d bytes)", result.name, result.size)


@cli.command("wal-list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@handle_errors()
def wal_list_cmd(app: AppContext, as_json: bool) -> None:
    """What the repository holds, per timeline: first/last segment, count, gaps."""
    from walkeeper.repository import open_repository

    repo = open_repository(app.config, codec=False)
    meta = repo.meta()
    timelines = repo.timelines()
    if as_json:
        doc = {
            "repository": repo.storage.url,
            "system_identifier": meta.system_identifier if meta else None,
            "wal_segment_size": meta.wal_segment_size if meta else None,
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
    if meta is None:
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


@cli.group("key")
def key_group() -> None:
    """Encryption keys."""


@key_group.command("generate")
@click.option("--output", type=click.Path(dir_okay=False), help="Write to FILE (mode 0600) instead of stdout.")
@handle_errors()
def key_generate_cmd(output: str | None) -> None:
    """Print a new random 256-bit key for key_file."""
    import os

    from walkeeper.codec import generate_key

    key = generate_key()
    if output is None:
        click.echo(key)
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{output} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    click.echo(f"wrote a new key to {Path(output).resolve()} (mode 0600); keep a copy somewhere safe", err=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (never raises SystemExit to the caller's caller)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        result = cli.main(args=args, prog_name="walkeeper", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        # A restore_command with bad arguments must stop recovery, not read as "not found".
        return exit_code(exc, restore_command=True) if "wal-fetch" in args else exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    return result if isinstance(result, int) else 0

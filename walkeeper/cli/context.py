"""What every command module of the CLI shares: the context, the error mapping, the common options.

Errors from the library arrive as WalkeeperError and leave as one line on stderr and an exit code from
``errors.exit_code``, mapped here in one place (``handle_errors``); a traceback only with -v. The command
modules (wal, backups, operate, dumps, keys, restore_test) import this module, never cli/main.py.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from walkeeper.core.config import Config, load_config
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


def closed_pipe() -> int:
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


class CommandFormatter(logging.Formatter):
    """Log lines name the whole command and say what they are: "walkeeper pitr: warning: ..."."""

    command = "walkeeper"

    def format(self, record: logging.LogRecord) -> str:
        kind = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}
        return f"{self.command}: {kind.get(record.levelno, '')}{super().format(record)}"


def name_command(ctx: click.Context) -> None:
    """From here on, log lines carry the full command path (known only once click has parsed it)."""
    CommandFormatter.command = ctx.command_path


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CommandFormatter("%(message)s"))
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
            name_command(ctx)
            app = ctx.find_object(AppContext)
            verbose = app.verbose if app else 0
            try:
                return func(*args, **kwargs)
            except (click.exceptions.Exit, click.ClickException, click.Abort):
                raise
            except BrokenPipeError:
                raise CommandFailed(closed_pipe()) from None
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


def error_message(exc: BaseException, verbose: int = 0) -> str:
    if isinstance(exc, WalkeeperError):
        return str(exc)
    details = "the traceback is above" if verbose else "rerun with -v for details"
    return f"internal error: {exc.__class__.__name__}: {exc} (please report this; {details})"


def _notify(ctx: click.Context, app: AppContext | None, exc: BaseException, code: int) -> None:
    """Record the failure of a watched command and run [notify] on_failure (walkeeper.core.notify); never raises."""
    if app is None:
        return
    try:
        from walkeeper.core.notify import EVENTS, notify_failure

        if ctx.info_name not in EVENTS:
            return
        obj = next((str(ctx.params[k]) for k in ("path", "name", "backup_id") if ctx.params.get(k)), "")
        notify_failure(app.config, ctx.info_name, obj, error_message(exc), code)
    except Exception as err:  # e.g. the configuration itself is broken
        log.debug("notify: skipped (%s)", err)


def _report(ctx: click.Context, exc: BaseException, verbose: int) -> None:
    """One line, prefixed with the full command ("walkeeper key generate: error: ...")."""
    # One line even when a tool's own message spans several (psql's "error: ...\n\tIs the server running").
    message = " ".join(part.strip() for part in error_message(exc, verbose).splitlines() if part.strip())
    if verbose:
        log.error("traceback follows", exc_info=exc)
    click.echo(f"{ctx.command_path}: error: {message}", err=True)


def conn_options(func: F) -> F:
    """libpq connection flags; unset ones come from PGHOST/PGPORT/PGUSER/PGDATABASE and .pgpass."""
    for option in reversed([
        click.option("-h", "--host", help="Server host or socket directory (libpq; env PGHOST)."),
        click.option("-p", "--port", help="Server port (env PGPORT)."),
        click.option("-U", "--username", "user", help="User name (env PGUSER)."),
        click.option("-d", "--dbname", help="Database name or a conninfo string / URI."),
    ]):
        func = option(func)
    return func


def switch_to_owner(app: AppContext, command: str, *, pgdata: str | None = None) -> None:
    """As root: switch to the owner of the local repository / target data directory, or refuse (core/privileges.py)."""
    from walkeeper.core.privileges import run_as_owner
    from walkeeper.storage import local_repository_path

    account = run_as_owner(command, app.config.repo, local_repository_path(app.config.repo), pgdata=pgdata)
    if account is not None:
        log.info("running as %s, the owner of what %s writes", account.describe(), command)

"""Command line: the ``walkeeper`` group, its global options, and the entry ``main``.

Each command group lives in its own module (wal, backups, operate, dumps, keys, restore_test) and is
registered here; those modules share walkeeper.cli.context and never import this one. Bad command lines
get one line on stderr (click's usage block is for --help), and a reader that closes the pipe early
(``walkeeper wal-list | head -1``) ends the command quietly with CLOSED_PIPE_CODE.
"""

from __future__ import annotations

import sys

import click

from walkeeper import __version__
from walkeeper.cli import backups, dumps, keys, operate, receive, repositories, restore_test, wal
from walkeeper.cli.context import AppContext, closed_pipe, setup_logging
from walkeeper.core.errors import exit_code


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="WALKEEPER_CONFIG",  # checked when read: one error line
              help="TOML configuration file (env WALKEEPER_CONFIG).")
@click.option("--repo", envvar="WALKEEPER_REPO",
              help="A configured repository's name, or a repository URL or path (env WALKEEPER_REPO).")
@click.option("-v", "--verbose", count=True, help="More output and, on an error, its traceback; -vv for debug.")
@click.version_option(__version__, prog_name="walkeeper")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, repo: str | None, verbose: int) -> None:
    """walkeeper: keeps PostgreSQL's WAL safe and brings the database back to any moment."""
    setup_logging(verbose)
    ctx.obj = AppContext(config_path=config_path, repo=repo, verbose=verbose)


for _module in (wal, backups, operate, dumps, keys, restore_test, receive, repositories):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


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
            return closed_pipe()
        return code
    except click.ClickException as exc:
        return _usage_error(exc, args)
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except BrokenPipeError:
        return closed_pipe()
    except SystemExit:
        # click's own answer to a closed pipe while it prints (help, usage): exit 1 after wrapping stdout
        if "PacifyFlushWrapper" in type(sys.stdout).__name__:
            return closed_pipe()
        raise
    return result if isinstance(result, int) else 0


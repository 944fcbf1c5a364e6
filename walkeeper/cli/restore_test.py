"""Click commands restore-test and restore-tests (registered by cli/main.py); the work is in commands/restore_test."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import click

from walkeeper.cli.context import AppContext, handle_errors, log, pass_app


def _become_owner(workdir: str | None) -> None:
    """As root: run as the owner of --workdir, else as postgres (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return
    from walkeeper.core.errors import RefusedError
    from walkeeper.core.privileges import Account, become, owner_of

    account = owner_of(workdir) if workdir else None
    if account is None or account.uid == 0:
        try:
            account = Account.named("postgres")
        except RefusedError:
            raise RefusedError("walkeeper restore-test as root needs a user to run the test cluster as",
                               hint="create the postgres user, or give --workdir owned by the server's user") from None
    become(account)
    log.info("running as %s: PostgreSQL does not run as root", account.describe())


@click.command("restore-test")
@click.option("--backup", "backup_id", help="Backup to test (default: chosen for the target, like pitr).")
@click.option("--target-time", help="Recover up to this time.")
@click.option("--target-lsn", help="Recover up to this WAL location.")
@click.option("--target-name", help="Recover up to this restore point.")
@click.option("--target", type=click.Choice(["latest", "immediate"]),
              help="latest: all archived WAL (the default); immediate: the end of the backup.")
@click.option("--dump", "dump_id", metavar="ID|latest", help="Test a logical dump instead of a base backup.")
@click.option("--check", "checks", multiple=True, metavar="SQL", help="SQL that must return true (repeatable).")
@click.option("--check-file", type=click.Path(dir_okay=False), help="A file of such checks, one per line.")
@click.option("--check-db", default="postgres", show_default=True, help="Database the checks run in.")
@click.option("--amcheck", is_flag=True, help="Also run pg_amcheck (heap and btree) when available.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where the throwaway cluster goes "
              "(default ~/.local/state/walkeeper/restore-tests).")
@click.option("--keep-on-failure", is_flag=True, help="Keep the work directory when the test fails.")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds to wait for recovery.")
@click.option("--json", "as_json", is_flag=True, help="Print the recorded result as JSON.")
@pass_app
@handle_errors()
def restore_test_cmd(app: AppContext, backup_id: str | None, target_time: str | None, target_lsn: str | None,
                     target_name: str | None, target: str | None, dump_id: str | None, checks: tuple[str, ...],
                     check_file: str | None, check_db: str, amcheck: bool, workdir: str | None,
                     keep_on_failure: bool, timeout: float, as_json: bool) -> None:
    """Restore a backup (or --dump a logical dump) into a throwaway cluster, check it, record the result."""
    from walkeeper.commands.restore_test import Options, failure_error, read_check_file, restore_test, text_lines

    all_checks = list(checks) + (read_check_file(check_file) if check_file else [])
    _become_owner(workdir)
    opts = Options(backup_id=backup_id, time=target_time, lsn=target_lsn, name=target_name, target=target,
                   checks=all_checks, check_db=check_db, amcheck=amcheck, workdir=workdir,
                   keep_on_failure=keep_on_failure, timeout=timeout, config_path=app.config_path,
                   repo_flag=app.repo, dump_id=dump_id)
    if dump_id:
        from walkeeper.commands.restore_test_dump import restore_test_dump

        record = restore_test_dump(app.config, opts, progress=lambda m: log.info("%s", m))
    else:
        record = restore_test(app.config, opts, progress=lambda m: log.info("%s", m))
    if as_json:
        click.echo(json.dumps(asdict(record), indent=2, sort_keys=True))
    else:
        for line in text_lines(record):
            click.echo(line)
    error = failure_error(record)
    if error is not None:
        raise error


@click.command("restore-tests")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@handle_errors()
def restore_tests_cmd(app: AppContext, as_json: bool) -> None:
    """The recorded restore test results, oldest first."""
    from walkeeper.repo.catalog import Catalog
    from walkeeper.repo.repository import open_repository

    records = Catalog(open_repository(app.config)).restore_tests()
    if as_json:
        click.echo(json.dumps([asdict(r) for r in records], indent=2, sort_keys=True))
        return
    if not records:
        click.echo("no restore tests recorded (run walkeeper restore-test)")
    for r in records:
        state = "passed" if r.ok else f"FAILED ({r.outcome}: {r.reason})"
        click.echo(f"{r.id}  {r.subject}  {r.target}  total {r.total_seconds:.1f}s  {state}")


COMMANDS = (restore_test_cmd, restore_tests_cmd)

"""Command line of logical backups: dump, dumpall, dumps [show], restore-dump (walkeeper/commands/).

Registered on the main group by cli/main.py (``COMMANDS``). Parsing only: the work is in
walkeeper.commands.dump and walkeeper.commands.restore_dump.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from walkeeper.cli.context import AppContext, conn_options, handle_errors, pass_app, switch_to_owner

_NO_H = {"help_option_names": ["--help"]}  # -h is the host, as in pg_dump


def _selection_options(func: Any) -> Any:
    for option in reversed([
        click.option("-t", "--table", "tables", multiple=True, metavar="PATTERN", help="pg_dump -t (repeatable)."),
        click.option("-T", "--exclude-table", "exclude_tables", multiple=True, metavar="PATTERN",
                     help="pg_dump -T (repeatable)."),
        click.option("-n", "--schema", "schemas", multiple=True, metavar="PATTERN", help="pg_dump -n (repeatable)."),
        click.option("-N", "--exclude-schema", "exclude_schemas", multiple=True, metavar="PATTERN",
                     help="pg_dump -N (repeatable)."),
        click.option("--exclude-table-data", "exclude_data", multiple=True, metavar="PATTERN",
                     help="pg_dump --exclude-table-data (repeatable)."),
        click.option("--schema-only", is_flag=True, help="Definitions only."),
        click.option("--data-only", is_flag=True, help="Data only."),
        click.option("--no-owner", is_flag=True, help="pg_dump --no-owner."),
        click.option("--no-privileges", is_flag=True, help="pg_dump --no-privileges."),
    ]):
        func = option(func)
    return func


def _dump(app: AppContext, conn: Any, label: str | None, all_databases: bool, as_json: bool,
          pairs: list[tuple[str, str | None]]) -> None:
    switch_to_owner(app, "dump")
    from walkeeper.commands.dump import DumpOptions, build_selection, take_dump
    from walkeeper.core.units import human_bytes as human

    meta = take_dump(app.config, DumpOptions(conn=conn, label=label, selection=build_selection(pairs),
                                             all_databases=all_databases))
    if as_json:
        click.echo(json.dumps(asdict(meta), indent=2))
        return
    click.echo(f"dump {meta.id} done: {', '.join(meta.databases)}"
               f"{' + globals' if meta.kind == 'all' else ''}, {human(meta.plain_size)} stored as "
               f"{human(meta.stored_size)} (PostgreSQL {meta.server_version // 10000}, "
               f"pg_dump {_short_version(meta.pg_dump_version)})")


def _short_version(text: str) -> str:
    """'15.18' from 'pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)'."""
    words = text.split(") ", 1)[-1].split()
    return words[0] if words else "?"


@click.command("dump", context_settings=_NO_H)
@conn_options
@click.option("--all", "all_databases", is_flag=True,
              help="Roles and tablespaces (pg_dumpall --globals-only) plus every connectable database, one set.")
@click.option("--label", help="A note recorded with the dump.")
@_selection_options
@click.option("--json", "as_json", is_flag=True, help="Print the dump's metadata as JSON.")
@pass_app
@handle_errors()
def dump_cmd(app: AppContext, host: str | None, port: str | None, user: str | None, dbname: str | None,
             all_databases: bool, label: str | None, tables: tuple[str, ...], exclude_tables: tuple[str, ...],
             schemas: tuple[str, ...], exclude_schemas: tuple[str, ...], exclude_data: tuple[str, ...],
             schema_only: bool, data_only: bool, no_owner: bool, no_privileges: bool, as_json: bool) -> None:
    """Logical backup: pg_dump -Fc of one database, streamed encrypted into dumps/<ID>/."""
    from walkeeper.postgres.client import ConnOptions

    pairs: list[tuple[str, str | None]] = []
    for flag, values in (("--table", tables), ("--exclude-table", exclude_tables), ("--schema", schemas),
                         ("--exclude-schema", exclude_schemas), ("--exclude-table-data", exclude_data)):
        pairs += [(flag, v) for v in values]
    for flag, on in (("--schema-only", schema_only), ("--data-only", data_only), ("--no-owner", no_owner),
                     ("--no-privileges", no_privileges)):
        if on:
            pairs.append((flag, None))
    _dump(app, ConnOptions(host, port, user, dbname), label, all_databases, as_json, pairs)


@click.command("dumpall", context_settings=_NO_H)
@conn_options
@click.option("--label", help="A note recorded with the dump.")
@click.option("--json", "as_json", is_flag=True, help="Print the dump's metadata as JSON.")
@pass_app
@handle_errors()
def dumpall_cmd(app: AppContext, host: str | None, port: str | None, user: str | None, dbname: str | None,
                label: str | None, as_json: bool) -> None:
    """Same as dump --all: globals plus every connectable database as one dump set."""
    from walkeeper.postgres.client import ConnOptions

    _dump(app, ConnOptions(host, port, user, dbname), label, True, as_json, [])


@click.group("dumps", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def dumps_group(ctx: click.Context, as_json: bool) -> None:
    """List logical dumps (oldest first); 'dumps show ID' for one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(dumps_list_cmd, as_json=as_json)


@pass_app
@handle_errors()
def dumps_list_cmd(app: AppContext, as_json: bool) -> None:
    from walkeeper.core.units import human_bytes as human
    from walkeeper.repo.catalog import Catalog
    from walkeeper.repo.repository import open_repository

    repo = open_repository(app.config)
    repo.require_meta()
    catalog = Catalog(repo)
    dumps = catalog.dumps()
    incomplete = catalog.incomplete_dump_ids()
    if as_json:
        click.echo(json.dumps({"dumps": [asdict(d) for d in dumps], "incomplete": incomplete}, indent=2))
        return
    if not dumps:
        click.echo("no dumps")
    else:
        click.echo(f"{'ID':<18} {'STOP TIME (UTC)':<20} {'PG':>3} {'SIZE':>10} {'STORED':>10} DATABASES")
    for d in dumps:
        what = ", ".join(d.databases) + (" + globals" if d.kind == "all" else "")
        click.echo(f"{d.id:<18} {d.stop_time[:19].replace('T', ' '):<20} {d.server_version // 10000:>3} "
                   f"{human(d.plain_size):>10} {human(d.stored_size):>10} {what}"
                   + (f"  ({' '.join(d.options)})" if d.options else ""))
    for i in incomplete:
        click.echo(f"{i:<18} INCOMPLETE (no metadata: in progress or interrupted, not usable)")


@dumps_group.command("show")
@click.argument("dump_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@handle_errors()
def dumps_show_cmd(app: AppContext, dump_id: str, as_json: bool) -> None:
    """Everything recorded about one dump (ID or 'latest')."""
    from walkeeper.repo.catalog import Catalog
    from walkeeper.repo.repository import open_repository

    repo = open_repository(app.config)
    repo.require_meta()
    doc = asdict(Catalog(repo).resolve_dump(dump_id))
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    for key, value in doc.items():
        if key == "items":
            for item in value:
                click.echo(f"item: {item['key']} {item['kind']} {item['database'] or ''} {item['plain_size']} "
                           f"bytes -> {item['stored_size']} stored, sha256 {item['sha256']}")
        else:
            click.echo(f"{key}: {value}")


@click.command("restore-dump", context_settings=_NO_H)
@click.argument("dump_id", required=False, default="latest")
@click.option("-h", "--host", help="Server host or socket directory (libpq; env PGHOST).")
@click.option("-p", "--port", help="Server port (env PGPORT).")
@click.option("-U", "--username", "user", help="User name (env PGUSER).")
@click.option("-d", "--dbname", "target", metavar="NAME",
              help="Restore into database NAME (default: the dumped database's name).")
@click.option("--database", help="Which database of a dump set (dump --all) to restore.")
@click.option("--create", is_flag=True, help="Create the target database first (refused if it exists).")
@click.option("-j", "--jobs", type=int, default=1, show_default=True,
              help="Parallel pg_restore jobs (stages the dump in a temporary file first).")
@click.option("-t", "--table", "tables", multiple=True, help="Restore only this table (repeatable).")
@click.option("-n", "--schema", "schemas", multiple=True, help="Restore only this schema (repeatable).")
@click.option("--schema-only", is_flag=True)
@click.option("--data-only", is_flag=True)
@click.option("--clean", is_flag=True, help="Drop objects before recreating them (allows a non-empty target).")
@click.option("--if-exists", is_flag=True, help="With --clean: DROP ... IF EXISTS.")
@click.option("--no-owner", is_flag=True, help="pg_restore --no-owner.")
@click.option("--globals", "globals_", is_flag=True, help="Run the roles/tablespaces script of a dump --all set.")
@click.option("--to-file", type=click.Path(dir_okay=False),
              help="Write the decrypted pg_dump archive to a new file instead (for pg_restore -l, other tools).")
@click.option("--staging-dir", type=click.Path(file_okay=False, exists=True),
              help="Where -j stages the dump (default TMPDIR).")
@pass_app
@handle_errors()
def restore_dump_cmd(app: AppContext, dump_id: str, host: str | None, port: str | None, user: str | None,
                     target: str | None, database: str | None, create: bool, jobs: int,
                     tables: tuple[str, ...], schemas: tuple[str, ...], schema_only: bool, data_only: bool,
                     clean: bool, if_exists: bool, no_owner: bool, globals_: bool, to_file: str | None,
                     staging_dir: str | None) -> None:
    """Restore a dump (ID or 'latest') with pg_restore, or decrypt it to a file.

    --create connects to the database "postgres" to create the target.
    """
    from walkeeper.commands.restore_dump import RestoreDumpOptions, restore_dump
    from walkeeper.core.units import human_bytes as human
    from walkeeper.postgres.client import ConnOptions

    options = RestoreDumpOptions(
        conn=ConnOptions(host, port, user), database=database, target=target, create=create, jobs=jobs,
        tables=tables, schemas=schemas, schema_only=schema_only, data_only=data_only, clean=clean,
        if_exists=if_exists, no_owner=no_owner, globals=globals_, to_file=to_file, staging_dir=staging_dir)
    result = restore_dump(app.config, dump_id, options)
    if to_file:
        click.echo(f"wrote dump {result.dump.id} ({result.item.database or result.item.kind}, "
                   f"{human(result.bytes)}) to {result.target}")
    else:
        click.echo(f"restored dump {result.dump.id} ({result.item.database or result.item.kind}, "
                   f"{human(result.bytes)}) into {result.target}{' (staged for -j)' if result.staged else ''}")


COMMANDS = (dump_cmd, dumpall_cmd, dumps_group, restore_dump_cmd)

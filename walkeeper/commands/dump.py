"""Logical backups: ``pg_dump -Fc`` streamed through the codec into ``dumps/<ID>/``.

pg_dump's own compression is off (``-Z 0``) so that the codec's zstd is the only one; the stream
goes chunk by chunk from pg_dump's stdout through the encoder into ``Storage.put``, so memory
stays bounded whatever the size of the database. The id is claimed first by a no-clobber marker
(catalog.reserve_dump_id); the metadata object is written last, so a dump killed halfway is never
listed (``dumps`` shows it as incomplete and ``expire`` removes it).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from walkeeper import __version__
from walkeeper.codec import Encoder
from walkeeper.core.config import Config
from walkeeper.core.errors import ConfigError, PostgresError
from walkeeper.core.progress import Progress
from walkeeper.core.units import iso_time, utc_now
from walkeeper.postgres.client import ConnOptions, ToolProcess, psql, tool_version
from walkeeper.postgres.dump_tools import dump_tool
from walkeeper.repo.catalog import Catalog, DumpItem, DumpMeta
from walkeeper.repo.layout import dump_key
from walkeeper.repo.repository import Repository, open_repository

log = logging.getLogger(__name__)

# pg_dump options passed through unchanged: (flag, takes a value)
SELECTION_OPTIONS = {
    "--table": True, "--exclude-table": True, "--schema": True, "--exclude-schema": True,
    "--exclude-table-data": True, "--schema-only": False, "--data-only": False,
    "--no-owner": False, "--no-privileges": False,
}


@dataclass(frozen=True)
class DumpOptions:
    conn: ConnOptions = field(default_factory=ConnOptions)
    label: str | None = None
    selection: tuple[str, ...] = ()  # pg_dump arguments, already validated (build_selection)
    all_databases: bool = False
    progress: bool | None = None


def build_selection(pairs: list[tuple[str, str | None]]) -> tuple[str, ...]:
    """pg_dump arguments from (long option, value) pairs; anything not in SELECTION_OPTIONS is refused."""
    out: list[str] = []
    for flag, value in pairs:
        if flag not in SELECTION_OPTIONS:
            raise ConfigError(f"{flag} is not a pg_dump selection option walkeeper passes on")
        if SELECTION_OPTIONS[flag]:
            if not value:
                raise ConfigError(f"{flag} needs a value")
            out.append(f"{flag}={value}")
        else:
            out.append(flag)
    if "--schema-only" in out and "--data-only" in out:
        raise ConfigError("--schema-only and --data-only cannot be used together")
    return tuple(out)


@dataclass(frozen=True)
class _Server:
    database: str
    version_num: int
    system_identifier: str | None


def _server(config: Config, conn: ConnOptions) -> _Server:
    row = psql(config, conn, "select current_database(), current_setting('server_version_num')")
    try:
        database, version = row.split("|")
        server = _Server(database, int(version), None)
    except ValueError:
        raise PostgresError(f"unexpected answer from the server: {row!r}") from None
    with contextlib.suppress(PostgresError):  # needs pg_control_system(): best effort for a plain user
        sysid = psql(config, conn, "select system_identifier from pg_control_system()")
        server = replace(server, system_identifier=sysid or None)
    return server


def _stream(repo: Repository, key: str, dump_id: str, proc: ToolProcess, meter: Progress) -> DumpItem:
    """Store one tool's stdout under ``key``; a failed tool fails the put (nothing short is kept)."""
    assert proc.proc.stdout is not None
    stdout = proc.proc.stdout
    encoder = Encoder(repo.codec, key, extra={"dump": dump_id})

    def chunks() -> Iterator[bytes]:
        while True:
            chunk = stdout.read(1024 * 1024)
            if not chunk:
                break
            meter.add(len(chunk))
            yield chunk
        proc.wait()

    try:
        repo.storage.put(key, encoder.encode_chunks(chunks()), overwrite=False)
    finally:
        proc.kill()
    return DumpItem(key, "database", None, encoder.plain_size, encoder.stored_size, encoder.sha256)


def _connectable_databases(config: Config, conn: ConnOptions) -> list[str]:
    rows = psql(config, conn, "select datname from pg_database where datallowconn and not datistemplate "
                              "order by datname")
    return [r for r in rows.splitlines() if r]


def take_dump(config: Config, options: DumpOptions) -> DumpMeta:
    repo = open_repository(config)
    repo.require_meta()  # dumps go into an existing repository (walkeeper init), never a stray directory
    catalog = Catalog(repo)
    server = _server(config, options.conn)
    major = server.version_num // 10000
    pg_dump = dump_tool(config, "pg_dump", major)
    dump_version = tool_version(pg_dump)[1]
    started = utc_now()
    dump_id = catalog.reserve_dump_id(started.strftime("%Y%m%dT%H%M%SZ"))
    label = options.label or f"walkeeper dump {dump_id}"
    items: list[DumpItem] = []
    meter = Progress(f"dump {dump_id}", None, enabled=options.progress)
    try:
        if options.all_databases:
            if options.selection:
                raise ConfigError("dump --all takes no selection options (they apply to one database)")
            pg_dumpall = dump_tool(config, "pg_dumpall", major)
            base = replace(options.conn, dbname=None)
            key = dump_key(dump_id, "globals.sql")
            proc = ToolProcess([pg_dumpall, *base.args(), "-l", options.conn.dbname or server.database,
                          "--globals-only"], name="pg_dumpall")
            item = _stream(repo, key, dump_id, proc, meter)
            items.append(replace(item, kind="globals"))
            databases = _connectable_databases(config, options.conn)
        else:
            base = options.conn
            databases = [server.database]
        for n, database in enumerate(databases):
            conn = replace(base, dbname=database) if options.all_databases else base
            key = dump_key(dump_id, f"db-{n:03d}.dump")
            proc = ToolProcess([pg_dump, *conn.args(), "-Fc", "-Z", "0", *options.selection], name="pg_dump")
            items.append(replace(_stream(repo, key, dump_id, proc, meter), database=database))
        meter.finish()
        meta = DumpMeta(
            id=dump_id, label=label, kind="all" if options.all_databases else "database",
            start_time=iso_time(started), stop_time=iso_time(utc_now()), server_version=server.version_num,
            pg_dump_version=dump_version, options=list(options.selection), items=items,
            plain_size=sum(i.plain_size for i in items), stored_size=sum(i.stored_size for i in items),
            system_identifier=server.system_identifier, host=socket.gethostname(), walkeeper_version=__version__,
        )
        catalog.save_dump(meta)  # last: only now is the dump listed
        return meta
    except BaseException:
        with contextlib.suppress(Exception):
            catalog.delete_dump_objects(dump_id)
        raise


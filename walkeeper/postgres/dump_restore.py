"""restore-dump: a stored dump decoded and fed to pg_restore (or written to a file).

Without ``-j`` the decoded stream goes straight into pg_restore's stdin (nothing is staged).
``-j N`` needs a seekable archive: the dump is decoded into a temporary file after checking that
the file system has room for it, and the file is removed afterwards whatever happens. Restoring
into a database that already holds tables is refused unless ``--clean`` is given: a restore that
mixes old and new rows is worse than none. pg_restore runs with ``--exit-on-error``, so a failed
statement fails the command instead of being counted and ignored.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from walkeeper.codec import Decoder
from walkeeper.core.config import Config
from walkeeper.core.errors import ConfigError, IntegrityError, PostgresError, RefusedError, StorageError
from walkeeper.core.progress import Progress
from walkeeper.core.units import human_bytes
from walkeeper.postgres.client import ConnOptions, ToolProcess, pg_tool, psql
from walkeeper.postgres.dump_tools import dump_tool
from walkeeper.repo.catalog import Catalog, DumpItem, DumpMeta
from walkeeper.repo.repository import Repository, open_repository

HEADROOM = 64 * 1024 * 1024  # staging leaves this much free besides the dump itself


@dataclass(frozen=True)
class RestoreDumpOptions:
    conn: ConnOptions = field(default_factory=ConnOptions)
    database: str | None = None  # which database of a dump set (default: the only one)
    target: str | None = None  # --dbname NEW (default: the dumped database's name)
    create: bool = False
    jobs: int = 1
    tables: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ()
    schema_only: bool = False
    data_only: bool = False
    clean: bool = False
    if_exists: bool = False
    no_owner: bool = False
    no_privileges: bool = False
    no_tablespaces: bool = False  # restore-test --dump: never create the dumped host's tablespace paths
    globals: bool = False
    to_file: str | None = None
    staging_dir: str | None = None
    progress: bool | None = None


@dataclass(frozen=True)
class RestoreDumpResult:
    dump: DumpMeta
    item: DumpItem
    target: str  # a database name or a file path
    bytes: int
    staged: bool


def choose_item(dump: DumpMeta, database: str | None, *, globals_only: bool = False) -> DumpItem:
    """The stream to restore: the named database's, the only one, or the globals script."""
    if globals_only:
        for item in dump.items:
            if item.kind == "globals":
                return item
        raise RefusedError(f"dump {dump.id} holds no globals (only dump --all records them)")
    databases = [i for i in dump.items if i.kind == "database"]
    if database is None:
        if len(databases) == 1:
            return databases[0]
        raise RefusedError(f"dump {dump.id} holds {len(databases)} databases "
                           f"({', '.join(i.database or '?' for i in databases)})", hint="choose one with --database")
    for item in databases:
        if item.database == database:
            return item
    raise RefusedError(f"dump {dump.id} holds no database {database!r}",
                       hint=f"it holds {', '.join(i.database or '?' for i in databases)}")


def _decoded(repo: Repository, item: DumpItem, meter: Progress) -> Iterator[bytes]:
    """The plaintext of ``item``, checked against its recorded size and SHA-256 at the end."""
    decoder = Decoder(repo.keyring, expected_name=item.key)
    with repo.storage.open(item.key) as handle:
        for chunk in decoder.decode(handle.read):
            meter.add(len(chunk))
            yield chunk
    if decoder.sha256 != item.sha256 or decoder.size != item.plain_size:
        raise IntegrityError(f"{item.key} decodes to sha256 {decoder.sha256} ({decoder.size} bytes), the dump "
                             f"recorded {item.sha256} ({item.plain_size} bytes)")


def _write_file(chunks: Iterator[bytes], path: Path, size: int, what: str) -> None:
    """Write ``chunks`` to a new file ``path`` (0600, synced); on any failure the file is removed."""
    free = shutil.disk_usage(path.parent).free
    if free < size + HEADROOM:
        raise RefusedError(f"{path.parent} has {human_bytes(free)} free, {what} needs {human_bytes(size)} "
                           "(plus headroom)", hint="free space there or choose another directory (TMPDIR or "
                                                   "--staging-dir)")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise RefusedError(f"{path} exists; refusing to overwrite it") from None
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(f"no space left writing {path} ({what}, {human_bytes(size)}); it was removed",
                               hint="free space there or choose another directory") from None
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}; it was removed") from None
        raise


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def _prepare_database(config: Config, conn: ConnOptions, target: str, options: RestoreDumpOptions) -> None:
    """Create the target when asked; refuse one that does not exist, or holds tables without --clean."""
    maintenance = replace(conn, dbname="postgres")
    exists = psql(config, maintenance, f"select count(*) from pg_database where datname = {_quote_literal(target)}")
    if options.create:
        if exists != "0":
            raise RefusedError(f"database {target!r} exists already; --create makes a new one",
                               hint="drop --create to restore into it (with --clean if it holds tables)")
        psql(config, maintenance, f"create database {_quote_ident(target)}")
        return
    if exists == "0":
        raise RefusedError(f"database {target!r} does not exist", hint="add --create, or name another with --dbname")
    if options.clean or options.data_only:
        return
    tables = psql(config, replace(conn, dbname=target),
                  "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                  "where c.relkind in ('r','p','v','m','S','f') and n.nspname not in ('pg_catalog', "
                  "'information_schema') and n.nspname not like 'pg_toast%'")
    if tables != "0":
        raise RefusedError(f"database {target!r} is not empty ({tables} relations); refusing to restore over it",
                           hint="restore into a new database (--dbname NEW --create) or replace its objects "
                                "with --clean --if-exists")


def restore_args(options: RestoreDumpOptions) -> list[str]:
    """pg_restore's options for ``options`` (besides the connection and the input)."""
    args = ["--exit-on-error"]
    if options.jobs > 1:
        args.append(f"--jobs={options.jobs}")
    args += [f"--table={t}" for t in options.tables] + [f"--schema={s}" for s in options.schemas]
    for flag, on in (("--schema-only", options.schema_only), ("--data-only", options.data_only),
                     ("--clean", options.clean), ("--if-exists", options.if_exists),
                     ("--no-owner", options.no_owner), ("--no-privileges", options.no_privileges),
                     ("--no-tablespaces", options.no_tablespaces)):
        if on:
            args.append(flag)
    return args


def restore_dump(config: Config, dump_id: str | None, options: RestoreDumpOptions) -> RestoreDumpResult:
    if options.schema_only and options.data_only:
        raise ConfigError("--schema-only and --data-only cannot be used together")
    if options.if_exists and not options.clean:
        raise ConfigError("--if-exists goes with --clean")
    if options.jobs < 1:
        raise ConfigError("-j must be at least 1")
    repo = open_repository(config)
    repo.require_meta()
    dump = Catalog(repo).resolve_dump(dump_id)
    item = choose_item(dump, options.database, globals_only=options.globals)
    meter = Progress(f"restore-dump {dump.id}", item.plain_size, enabled=options.progress)
    if options.to_file:
        path = Path(os.path.abspath(options.to_file))
        _write_file(_decoded(repo, item, meter), path, item.plain_size, f"dump {dump.id}")
        meter.finish()
        return RestoreDumpResult(dump, item, str(path), item.plain_size, False)
    server_major = int(psql(config, replace(options.conn, dbname="postgres"),
                            "select current_setting('server_version_num')")) // 10000
    if item.kind == "globals":
        return _restore_globals(config, repo, dump, item, options, meter, server_major)
    target = options.target or item.database or ""
    _prepare_database(config, options.conn, target, options)
    pg_restore = dump_tool(config, "pg_restore", server_major)
    cmd = [pg_restore, *replace(options.conn, dbname=target).args(), *restore_args(options)]
    if options.jobs == 1:
        proc = ToolProcess(cmd, name="pg_restore", stdin=True, stdout=False)
        _feed(proc, _decoded(repo, item, meter))
        meter.finish()
        return RestoreDumpResult(dump, item, target, item.plain_size, False)
    with tempfile.TemporaryDirectory(prefix="walkeeper-dump-", dir=options.staging_dir) as tmp:
        staged = Path(tmp) / "dump.fc"
        _write_file(_decoded(repo, item, meter), staged, item.plain_size, f"staging dump {dump.id} for -j")
        meter.finish()
        proc = ToolProcess([*cmd, str(staged)], name="pg_restore", stdout=False)
        try:
            proc.wait()
        finally:
            proc.kill()
    return RestoreDumpResult(dump, item, target, item.plain_size, True)


def _feed(proc: ToolProcess, chunks: Iterator[bytes]) -> None:
    """Write ``chunks`` into the tool's stdin; its own failure is reported before a broken pipe."""
    stdin = proc.proc.stdin
    assert stdin is not None
    try:
        try:
            for chunk in chunks:
                stdin.write(chunk)
            stdin.close()
        except BrokenPipeError:
            proc.wait()  # raises pg_restore's own message
            raise PostgresError(f"{proc.name} stopped reading its input") from None
        proc.wait()
    finally:
        with contextlib.suppress(OSError):
            stdin.close()
        proc.kill()


def _restore_globals(config: Config, repo: Repository, dump: DumpMeta, item: DumpItem,
                     options: RestoreDumpOptions, meter: Progress, server_major: int) -> RestoreDumpResult:
    """Roles and tablespaces: the globals script through psql (ON_ERROR_STOP off: existing roles are fine)."""
    conn = replace(options.conn, dbname=options.target or "postgres")
    proc = ToolProcess([pg_tool(config, "psql"), "-X", "-q", *conn.args(), "-f", "-"], name="psql", stdin=True,
                 stdout=False)
    chunks = _decoded(repo, item, meter)
    _feed(proc, _without_tablespaces(chunks) if options.no_tablespaces else chunks)
    meter.finish()
    return RestoreDumpResult(dump, item, "globals", item.plain_size, False)


def _without_tablespaces(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The globals script without its CREATE TABLESPACE lines (they name directories of the dumped host)."""
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield b"".join(line + b"\n" for line in lines if not line.startswith(b"CREATE TABLESPACE "))
    if rest and not rest.startswith(b"CREATE TABLESPACE "):
        yield rest

"""restore-test --dump: prove a logical dump restores, into a throwaway cluster initdb'd for it.

The cluster is a fresh ``initdb`` of a server at least as new as the dump's (pg_restore reads older
dumps, not newer ones), with the same never-touch-production settings as the backup case (see
scratch_cluster). The globals (of a ``dump --all`` set) and every database go through the
``restore-dump`` code path (the same decoding and integrity checks a real restore runs), then the
same checks as a recovered backup. The result is recorded as ``restore-tests/<ID>.json`` with
``dump`` set and ``backup`` None.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from walkeeper import __version__
from walkeeper.core.config import Config
from walkeeper.core.errors import ConfigError, IntegrityError, PostgresError, RefusedError, WalkeeperError
from walkeeper.postgres.restore_checks import Checker, Options, finish_run, new_test_id, run_checks
from walkeeper.postgres.scratch_cluster import ScratchCluster, WorkDir, default_base, remove_stale, safety_settings
from walkeeper.repo.catalog import Catalog, DumpMeta, RestoreTestRecord

HEADROOM = 64 * 1024 * 1024


def server_candidates(config: Config) -> list[Path]:
    """Directories that may hold a server: [backup] pg_bin_dir, Debian's layout, the one of PATH's pg_ctl."""
    dirs = []
    if config.backup.pg_bin_dir:
        dirs.append(Path(config.backup.pg_bin_dir))
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    found = shutil.which("pg_ctl")
    if found:
        dirs.append(Path(found).resolve().parent)
    return list(dict.fromkeys(d for d in dirs if os.access(d / "pg_ctl", os.X_OK) and os.access(d / "initdb",
                                                                                                    os.X_OK)))


def choose_server(found: list[tuple[int, Path]], dump_major: int) -> tuple[int, Path] | None:
    """The oldest server that is at least the dump's major (the closest to what was dumped), else None."""
    fitting = sorted((major, path) for major, path in found if major >= dump_major)
    return fitting[0] if fitting else None


def find_server(config: Config, dump_major: int) -> tuple[int, Path]:
    from walkeeper.postgres.client import tool_version

    found = []
    for directory in server_candidates(config):
        try:
            found.append((tool_version(str(directory / "pg_ctl"))[0], directory))
        except PostgresError:
            continue
    chosen = choose_server(found, dump_major)
    if chosen is None:
        have = ", ".join(str(m) for m in sorted({m for m, _ in found})) or "none"
        raise PostgresError(f"no PostgreSQL server of version {dump_major} or newer to restore the dump into "
                            f"(found: {have})", hint=f"install the PostgreSQL {dump_major} server or set "
                                                     "[backup] pg_bin_dir to its bin directory")
    return chosen


def restore_order(dump: DumpMeta) -> list[tuple[str, str | None]]:
    """(kind, database) in restore order: the globals first (roles own the objects), then each database."""
    out: list[tuple[str, str | None]] = [("globals", None) for i in dump.items if i.kind == "globals"][:1]
    out += [("database", i.database) for i in dump.items if i.kind == "database"]
    return out


def dump_contents(dump: DumpMeta) -> str:
    """What the test restores, for the record's ``target``: "globals + databases a, b" or "database a"."""
    dbs = dump.databases
    text = f"database{'s' if len(dbs) != 1 else ''} {', '.join(dbs) or '(none)'}"
    return ("globals + " + text) if any(i.kind == "globals" for i in dump.items) else text


def initdb(bindir: Path, work: WorkDir, user: str) -> None:
    proc = subprocess.run([str(bindir / "initdb"), "-D", str(work.data), "-U", user, "-A", "trust", "-E", "UTF8",
                           "--locale=C", "--no-sync", "--no-instructions"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        raise PostgresError(f"initdb of the throwaway cluster failed: {lines[-1] if lines else proc.returncode}")


def restore_into(config: Config, dump: DumpMeta, checker: Checker, record: RestoreTestRecord,
                 progress: Callable[[str], None]) -> None:
    """Globals, then each database, through restore-dump; a database named postgres goes into the existing one."""
    from walkeeper.postgres.dump_restore import RestoreDumpOptions, restore_dump

    has_globals = any(i.kind == "globals" for i in dump.items)
    for kind, database in restore_order(dump):
        progress(f"restoring the {'globals' if kind == 'globals' else 'database ' + str(database)} of dump "
                 f"{dump.id}")
        options = RestoreDumpOptions(
            conn=checker.conn("postgres"), database=database, globals=kind == "globals",
            create=kind == "database" and database != "postgres", no_tablespaces=True,
            no_owner=not has_globals, no_privileges=not has_globals, progress=False)
        result = restore_dump(config, dump.id, options)
        record.bytes_restored += result.bytes


def restore_test_dump(config: Config, opts: Options, *, progress: Callable[[str], None] = lambda _m: None
                      ) -> RestoreTestRecord:
    """Run one dump restore test and record it (a corrupt dump: outcome integrity-failed); raises only for
    refusals before anything was started."""
    from walkeeper.repo.repository import open_repository

    if any((opts.backup_id, opts.time, opts.lsn, opts.name, opts.target)):
        raise ConfigError("--dump tests a logical dump: --backup and the --target options do not apply")
    repo = open_repository(config)
    repo.require_meta()
    dump = Catalog(repo).resolve_dump(opts.dump_id)
    dump_major = dump.server_version // 10000
    server_major, bindir = find_server(config, dump_major)
    base = Path(opts.workdir) if opts.workdir else default_base()
    pg_ctl = str(bindir / "pg_ctl")
    test_id = new_test_id()
    work = WorkDir.create(base, test_id)
    started = datetime.now(UTC)
    began = time.monotonic()
    try:
        for stale in remove_stale(base, pg_ctl):
            progress(f"removed the work directory of an earlier, interrupted run: {stale}")
        need = 2 * dump.plain_size + HEADROOM  # the restored tables and their indexes: a rough bound
        if work.free_bytes() < need:
            raise RefusedError(f"{work.root} has {work.free_bytes()} bytes free; restoring the dump needs about "
                               f"{need}", hint="give --workdir on a file system with room for the restored dump")
    except BaseException:
        work.remove()
        raise
    user = pwd.getpwuid(os.geteuid()).pw_name
    record = RestoreTestRecord(
        id=test_id, started=started.isoformat(timespec="seconds"), finished="", ok=False, outcome="not-started",
        reason="", backup=None, dump=dump.id,
        target=dump_contents(dump),
        walkeeper_version=__version__, pg_version=server_major, host=socket.gethostname())
    cluster = ScratchCluster(work, pg_ctl, user)
    checker = Checker(config, user, work.sock)
    try:
        progress(f"initdb of a PostgreSQL {server_major} throwaway cluster in {work.data}")
        initdb(bindir, work, user)
        with open(work.data / "postgresql.auto.conf", "a") as fh:
            fh.write(safety_settings(work))
        outcome = cluster.start_and_wait(opts.timeout, checker.ready)
        record.recovery_seconds = round(time.monotonic() - began, 3)
        if not outcome.ready:
            tail = [line for line in outcome.log_tail if line.strip()][-5:]
            record.reason = "the throwaway cluster did not start" + (f": {tail[-1]}" if tail else "")
            record.checks.append({"name": "cluster started", "ok": False, "detail": " | ".join(tail)})
        else:
            record.checks.append({"name": "cluster started", "ok": True,
                                  "detail": f"initdb and start in {record.recovery_seconds:.1f}s"})
            restore_began = time.monotonic()
            try:
                restore_into(config, dump, checker, record, progress)
            except IntegrityError as exc:
                record.outcome, record.reason = "integrity-failed", str(exc).splitlines()[0]
                record.checks.append({"name": "dump restored", "ok": False, "detail": record.reason})
            else:
                record.restore_seconds = round(time.monotonic() - restore_began, 3)
                record.checks.append({"name": "dump restored", "ok": True,
                                      "detail": f"{len(restore_order(dump))} stream(s), {record.bytes_restored} "
                                                f"bytes in {record.restore_seconds:.1f}s"})
                progress("running the checks")
                run_checks(checker, record, opts, "dump", None, recovered=False)
                failed = [c for c in record.checks if not c["ok"]]
                if failed:
                    record.outcome = "check-failed"
                    record.reason = f"{failed[0]['name']}: {failed[0]['detail']}"
                else:
                    record.outcome, record.ok = "passed", True
    except WalkeeperError as exc:
        if record.checks and record.checks[0]["ok"]:  # started; the restore itself failed
            record.outcome = "check-failed"
            record.checks.append({"name": "dump restored", "ok": False, "detail": str(exc).splitlines()[0]})
        record.reason = str(exc).splitlines()[0]
    finally:
        finish_run(cluster, work, record, keep_on_failure=opts.keep_on_failure, began=began)
    Catalog(repo).save_restore_test(record)
    return record

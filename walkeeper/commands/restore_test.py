"""restore-test: prove a backup restores, by recovering it into a throwaway cluster and checking it.

The restore runs through ``recover`` (postgres/recovery.py: the same planning, refusals and restore
``pitr`` uses);
the cluster then gets settings that keep it away from production (see scratch_cluster), recovers
through ``walkeeper wal-fetch``, is checked, stopped and removed. The result is recorded in the
repository (the only object this command writes there) and returned; the caller turns a failed
outcome into its exit code.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from walkeeper import __version__
from walkeeper.core.config import Config
from walkeeper.core.errors import (
    ClusterNotStarted,
    ConfigError,
    IntegrityError,
    PostgresError,
    RefusedError,
    RestoreTestFailed,
    TargetNotReached,
    WalkeeperError,
)
from walkeeper.core.wal import format_lsn, parse_lsn, segno_of
from walkeeper.postgres.combine import space_needed
from walkeeper.postgres.recovery import recover
from walkeeper.postgres.restore_checks import Checker, Options, finish_run, new_test_id, run_checks
from walkeeper.postgres.scratch_cluster import (
    ScratchCluster,
    WorkDir,
    default_base,
    remove_stale,
    safety_settings,
    server_bin,
)
from walkeeper.repo.catalog import Catalog, RestoreTestRecord
from walkeeper.repo.pitr_plan import Plan

OUTCOME_ERRORS: dict[str, type[WalkeeperError]] = {
    "check-failed": RestoreTestFailed,
    "target-not-reached": TargetNotReached,
    "not-started": ClusterNotStarted,
    "integrity-failed": IntegrityError,
}

def read_check_file(path: str) -> list[str]:
    """One SQL check per line; blank lines and lines starting with -- or # are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--check-file {path}: {exc.strerror or exc}") from None
    return [line.strip().rstrip(";") for line in text.splitlines()
            if line.strip() and not line.strip().startswith(("--", "#"))]


def classify_failure(log_lines: list[str]) -> tuple[str, str]:
    """From the server log of a cluster that stopped by itself: (outcome, one-line reason)."""
    fetch = [line for line in log_lines if "wal-fetch: error:" in line]
    if fetch:
        return "target-not-reached", "recovery stopped: " + fetch[-1].split("wal-fetch: error:", 1)[1].strip()
    for line in reversed(log_lines):
        if "recovery ended before configured recovery target was reached" in line:
            return "target-not-reached", "recovery ended before the target was reached (the archive ends earlier)"
        if "before consistent recovery point" in line:
            return "target-not-reached", "the target lies before the backup's consistent point"
    fatal = [line for line in log_lines if "FATAL:" in line or "PANIC:" in line]
    if fatal:
        return "not-started", "the server stopped: " + fatal[-1].split(":", 3)[-1].strip()
    return "not-started", "the server stopped during recovery (see its log)"


def archive_bound(config: Config, plan: Plan) -> int | None:
    """The start of the newest segment archived now on the plan's timeline (not before the backup's end)."""
    from walkeeper.core.wal import WalKind
    from walkeeper.repo.repository import open_repository

    repo = open_repository(config)
    tli = plan.path[-1].timeline
    names = [n for n, _s, _m in repo.iter_wal() if n.kind is WalKind.SEGMENT and n.timeline == tli]
    if not names:
        return None
    size = plan.backup.wal_segment_size
    newest = max(segno_of(n, size) for n in names)
    return max(newest * size, parse_lsn(plan.backup.stop_lsn))


def restore_test(config: Config, opts: Options, *, progress: Callable[[str], None] = lambda _m: None
                 ) -> RestoreTestRecord:
    """Run one restore test and record it; raises only for refusals before anything was restored."""
    given = [v for v in (opts.time, opts.lsn, opts.name, opts.target) if v]
    if len(given) > 1:
        raise ConfigError("give at most one target: --target-time, --target-lsn, --target-name or --target")
    if opts.target not in (None, "latest", "immediate"):
        raise ConfigError(f"--target {opts.target!r}: expected 'latest' or 'immediate'")
    end_of_archive = not given or opts.target == "latest"
    kwargs = dict(time=opts.time, lsn=opts.lsn, name=opts.name, immediate=opts.target == "immediate",
                  action="promote", backup_id=opts.backup_id, config_path=opts.config_path,
                  repo_flag=opts.repo_flag, end_of_archive=end_of_archive)
    base = Path(opts.workdir) if opts.workdir else default_base()
    test_id = new_test_id()
    work = WorkDir.create(base, test_id)
    started = datetime.now(UTC)
    began = time.monotonic()
    try:
        plan = recover(config, str(work.data), dry_run=True, **kwargs).plan  # refuses before anything is written
        bound = archive_bound(config, plan) if end_of_archive else None
        if end_of_archive and bound is not None:
            # A primary that keeps archiving would keep "the end of the archive" moving: recovery could chase
            # it for ever. The test recovers up to the WAL archived when it was planned.
            kwargs.update(lsn=format_lsn(bound), end_of_archive=False)
            plan = recover(config, str(work.data), dry_run=True, **kwargs).plan
        pg_ctl = server_bin(config, "pg_ctl", plan.backup.pg_version // 10000 if plan.backup.pg_version > 1000
                            else plan.backup.pg_version)
        for stale in remove_stale(base, pg_ctl):
            progress(f"removed the work directory of an earlier, interrupted run: {stale}")
        # An incremental backup's chain is staged and combined in the work directory (postgres/combine.py).
        need = (space_needed(plan.chain, link=False) if len(plan.chain) > 1 else plan.backup.plain_size) \
            + 64 * 1024 * 1024
        if work.free_bytes() < need:
            raise RefusedError(f"{work.root} has {work.free_bytes()} bytes free; the backup needs {need}",
                               hint="give --workdir on a file system with room for the backup")
    except BaseException:
        work.remove()
        raise
    major = plan.backup.pg_version // 10000 if plan.backup.pg_version > 1000 else plan.backup.pg_version
    import pwd

    user = pwd.getpwuid(os.geteuid()).pw_name
    record = RestoreTestRecord(
        id=test_id, started=started.isoformat(timespec="seconds"), finished="", ok=False, outcome="not-started",
        reason="", backup=plan.backup.id, target=plan.target.describe() + (
            " (the end of the WAL archived when the test began)" if end_of_archive and bound is not None
            else ""), wal_first=plan.first_wal, wal_last=plan.last_wal,
        wal_segments=plan.segments, walkeeper_version=__version__, pg_version=major, host=socket.gethostname())
    cluster = ScratchCluster(work, pg_ctl, user)
    try:
        progress(f"restoring backup {plan.backup.id} into {work.data}")
        result = recover(config, str(work.data), **kwargs)
        if result.restored:
            record.bytes_restored = result.restored.bytes
            record.restore_seconds = round(result.restored.seconds, 3)
        auto = work.data / "postgresql.auto.conf"
        with open(auto, "a") as fh:
            fh.write(safety_settings(work))
        for signal in ("standby.signal",):
            (work.data / signal).unlink(missing_ok=True)
        checker = Checker(config, user, work.sock)
        progress("starting the throwaway cluster and waiting for recovery")
        started_at = time.monotonic()
        outcome = cluster.start_and_wait(opts.timeout, checker.ready)
        record.recovery_seconds = round(time.monotonic() - started_at, 3)
        if not outcome.ready:
            if outcome.exited:
                record.outcome, record.reason = classify_failure(cluster.log_tail(120) or outcome.log_tail)
            else:
                record.outcome = "not-started"
                record.reason = f"recovery did not finish within {opts.timeout:.0f}s"
            tail = [line for line in outcome.log_tail if line.strip()][-5:]
            record.checks.append({"name": "cluster started", "ok": False, "detail": " | ".join(tail)})
        else:
            record.checks.append({"name": "cluster started", "ok": True,
                                  "detail": f"recovered and promoted in {record.recovery_seconds:.1f}s"})
            progress("running the checks")
            run_checks(checker, record, opts, plan.target.kind, plan.target.lsn if plan.target.kind == "lsn"
                       else None)
            failed = [c for c in record.checks if not c["ok"]]
            if failed:
                first = failed[0]
                record.outcome = "target-not-reached" if first["name"] == "target reached" else "check-failed"
                record.reason = f"{first['name']}: {first['detail']}"
            else:
                record.outcome, record.ok = "passed", True
    except WalkeeperError as exc:
        record.outcome = "not-started"
        record.reason = str(exc).splitlines()[0]
    finally:
        finish_run(cluster, work, record, keep_on_failure=opts.keep_on_failure, began=began)
    from walkeeper.repo.repository import open_repository

    Catalog(open_repository(config)).save_restore_test(record)
    return record


def failure_error(record: RestoreTestRecord) -> WalkeeperError | None:
    if record.ok:
        return None
    cls = OUTCOME_ERRORS.get(record.outcome, PostgresError)
    hint = f"the work directory is kept in {record.kept_workdir}" if record.kept_workdir else None
    return cls(f"restore test {record.id} failed: {record.reason}", hint=hint)


def text_lines(record: RestoreTestRecord) -> list[str]:
    out = [
        f"restore test {record.id}: {'PASSED' if record.ok else 'FAILED (' + record.outcome + ')'}",
        f"  {record.subject}, " + ("restores " if record.dump else "target ") + record.target,
    ]
    if not record.dump:
        out.append(f"  WAL: {record.wal_segments} segment(s) {record.wal_first} .. "
                   f"{record.wal_last or '(end of archive)'}")
    out.append(f"  restored {record.bytes_restored} bytes in {record.restore_seconds:.1f}s, "
               + ("start " if record.dump else "recovery ")
               + f"{record.recovery_seconds:.1f}s, total {record.total_seconds:.1f}s (the measured recovery time)")
    if record.replay_lsn:
        out.append(f"  replayed up to {record.replay_lsn}")
    for check in record.checks:
        out.append(f"  [{'ok' if check['ok'] else 'FAIL'}] {check['name']}: {check['detail']}")
    tables = sum(len(t) for t in record.row_counts.values())
    rows = sum(sum(t.values()) for t in record.row_counts.values())
    if record.row_counts:
        out.append(f"  row counts recorded: {tables} table(s) in {len(record.row_counts)} database(s), {rows} rows")
    if record.kept_workdir:
        out.append(f"  kept for inspection: {record.kept_workdir}")
    return out



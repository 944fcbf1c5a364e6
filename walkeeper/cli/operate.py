"""Operating the archive: init, status, check, verify, expire.

Parsing only: the work is in walkeeper/commands/ (init, status, check, verify, expire, expire_dumps), the
output in render.py. ``check`` maps its own outcome to the monitoring-plugin exit codes (0 to 3).
"""

from __future__ import annotations

from typing import Any

import click

from walkeeper.cli import render
from walkeeper.cli.context import (
    AppContext,
    CommandFailed,
    closed_pipe,
    conn_options,
    error_message,
    handle_errors,
    name_command,
    pass_app,
    switch_to_owner,
)
from walkeeper.core.durable import write_file
from walkeeper.core.errors import WalkeeperError


@click.command("init", context_settings={"help_option_names": ["--help"]})
@click.option("--owner", metavar="USER", help="As root: create everything for USER (default: the owner of --pgdata).")
@click.option("--pgdata", "-D", type=click.Path(file_okay=False, exists=True),
              help="Record this data directory's database system identifier (read from global/pg_control).")
@conn_options
@click.option("--generate-key", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write a new key to FILE (mode 0600) unless it exists, and use it.")
@click.option("--write-config", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write a configuration file naming the repository and the key, unless it exists.")
@pass_app
@handle_errors()
def init_cmd(app: AppContext, owner: str | None, pgdata: str | None, host: str | None, port: str | None,
             user: str | None, dbname: str | None, generate_key: str | None, write_config: str | None) -> None:
    """Create the repository (with key and configuration if asked) before the first wal-push.

    Idempotent; a repository of another database system is refused (exit 7). Connection options
    (-h/-p/-U/-d) record the system identifier of a running server instead of --pgdata.
    """
    from walkeeper.commands.init import InitOptions, next_steps, run_init
    from walkeeper.postgres.client import ConnOptions

    conn = ConnOptions(host, port, user, dbname) if any((host, port, user, dbname)) else None
    report = run_init(app.config, InitOptions(owner=owner, pgdata=pgdata, conn=conn, generate_key=generate_key,
                                              write_config=write_config, config_path=app.config_path))
    render.print_init(report, next_steps(report))


@click.command("verify")
@click.option("--deep", is_flag=True, help="Also read every object back: decrypt, decompress, checksum, "
              "WAL header (name, timeline, system identifier).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True, help="Objects read in parallel.")
@click.option("--pg-restore-list", is_flag=True, help="With --deep: also have pg_restore --list read each dump.")
@pass_app
@handle_errors()
def verify_cmd(app: AppContext, deep: bool, as_json: bool, jobs: int, pg_restore_list: bool) -> None:
    """Check that the archive is whole from the oldest backup to the newest segment.

    Exit 0 only when it is; 5 when a problem was found (the report says what to do).
    """
    from walkeeper.cli.repositories import for_each, targets
    from walkeeper.commands.verify import format_report, verify
    from walkeeper.core.errors import IntegrityError
    from walkeeper.postgres.client import pg_tool
    from walkeeper.repo.repository import open_repository

    configs = targets(app.config)

    def one(config: Any) -> Any:
        lister = pg_tool(config, "pg_restore") if deep and pg_restore_list else None
        return verify(open_repository(config), deep=deep, jobs=jobs, pg_restore=lister)

    reports, failed = for_each(configs, one)
    if as_json:  # several repositories: {"repositories": {NAME: report}, "ok": ...} (README "Several repositories")
        render.echo_json(next(iter(reports.values())).to_dict() if len(configs) == 1 else
                         {"repositories": {n: r if isinstance(r, dict) else r.to_dict() for n, r in reports.items()},
                          "ok": failed is None and all(r.ok for r in reports.values())})
    else:
        for name, report in reports.items():
            if len(configs) > 1:
                click.echo(f"repository {name}:")
            click.echo(report["error"] if isinstance(report, dict) else format_report(report))
    if failed is not None:
        raise failed
    if not all(r.ok for r in reports.values()):
        raise CommandFailed(IntegrityError.code)


@click.command("status", context_settings={"help_option_names": ["--help"]})
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--cluster/--no-cluster", default=True, show_default=True,
              help="Also ask the server (psql with the connection options) for pg_stat_archiver.")
@conn_options
@pass_app
@handle_errors()
def status_cmd(app: AppContext, as_json: bool, cluster: bool, host: str | None, port: str | None, user: str | None,
               dbname: str | None) -> None:
    """Repository summary and, when the server can be reached, its archiver's view."""
    from walkeeper.commands.status import (
        cluster_status,
        local_failures,
        repository_lag_status,
        repository_status,
        status_json,
    )
    from walkeeper.postgres.client import ConnOptions
    from walkeeper.repo.repository import open_repository

    config = app.config
    from walkeeper.cli.repositories import targets

    configs = targets(config)
    docs: dict[str, dict[str, Any]] = {}
    repo_error: WalkeeperError | None = None
    for each in configs:
        try:
            repo = open_repository(each)
            doc = repository_status(repo)
            from walkeeper.commands.key_rotate import key_table  # README "Keys": key ids, never keys

            doc["keys"] = key_table(repo) if repo.meta() else []
        except WalkeeperError as exc:  # the server's side is still worth showing: it may say why
            repo_error = repo_error or exc
            doc = {"repository": each.repo, "error": str(exc)}
        docs[each.repository_name] = doc
    first = next(iter(docs.values()))
    if cluster:
        try:
            first["cluster"] = cluster_status(config, ConnOptions(host, port, user, dbname))
        except WalkeeperError as exc:
            first["cluster"] = {"error": str(exc)}
    first["walkeeper_failures"] = local_failures(config)
    behind = repository_lag_status(config)  # wal-push's backlog per repository (require = "any")
    if behind is not None:
        first["repositories_behind"] = {lag.name: lag.to_json() for lag in behind}
    if len(configs) == 1:
        if as_json:
            render.echo_json(status_json(first))
        else:
            render.print_status(first)
    else:  # README "Several repositories": {"repositories": {NAME: ...}, "cluster", "walkeeper_failures", "copy_lag"}
        from walkeeper.repo.copylisting import copy_lags

        try:
            lags: list[Any] = [f.to_dict() for f in copy_lags(config)]
        except WalkeeperError as exc:
            lags = [{"error": str(exc)}]
        if as_json:
            shared = {k: first.pop(k) for k in ("cluster", "walkeeper_failures", "repositories_behind") if k in first}
            render.echo_json({"repositories": {n: status_json(d) for n, d in docs.items()},
                              **status_json(shared), "copy_lag": lags})
        else:
            for name, doc in docs.items():
                click.echo(f"repository {name}:")
                render.print_status({"walkeeper_failures": {}, **doc})
            render.print_copy_lags(lags)
        if any("error" not in d for d in docs.values()):
            return  # one repository down is a lag that status reports (and check warns about), not a failure
    if repo_error is not None:
        raise repo_error


@click.command("check", context_settings={"help_option_names": ["--help"]})
@click.option("--max-wal-age", help="CRITICAL when the newest WAL is older (e.g. 15m, 1h).")
@click.option("--max-backup-age", help="CRITICAL when the newest backup is older (e.g. 26h, 8d).")
@click.option("--warn-wal-age", help="WARNING when the newest WAL is older.")
@click.option("--warn-backup-age", help="WARNING when the newest backup is older.")
@click.option("--max-dump-age", help="CRITICAL when the newest dump of a database is older (e.g. 26h).")
@click.option("--warn-dump-age", help="WARNING when the newest dump of a database is older.")
@click.option("--max-restore-test-age", help="CRITICAL when the last successful restore test is older (e.g. 8d).")
@click.option("--warn-restore-test-age", help="WARNING when the last successful restore test is older.")
@click.option("--max-receive-lag", help="CRITICAL when the repository is further behind wal-receive (e.g. 1m).")
@click.option("--warn-receive-lag", help="WARNING when the repository is further behind wal-receive.")
@click.option("--max-copy-lag", help="CRITICAL when another repository has lacked something the first one holds "
              "for longer (e.g. 1h; walkeeper copy).")
@click.option("--warn-copy-lag", help="WARNING when another repository lags behind the first for longer.")
@click.option("--cluster", is_flag=True, help="Also check the server's archiver (psql with the connection options).")
@click.option("--archive", is_flag=True, help="Preflight instead: check the server's archive settings, force a WAL "
              "switch and wait until that segment is in this repository and reads back.")
@click.option("--timeout", type=click.FloatRange(min=1), default=60, show_default=True,
              help="--archive: seconds to wait for the segment.")
@conn_options
@click.option("--prometheus", "prometheus_file", type=click.Path(dir_okay=False),
              help="Also write a node-exporter textfile (atomically) to FILE.")
@click.option("--json", "as_json", is_flag=True, help="The result as JSON (status, reasons, what was read).")
@pass_app
def check_cmd(app: AppContext, max_wal_age: str | None, max_backup_age: str | None, warn_wal_age: str | None,
              warn_backup_age: str | None, max_dump_age: str | None,
              warn_dump_age: str | None, max_restore_test_age: str | None,
              warn_restore_test_age: str | None, max_receive_lag: str | None, warn_receive_lag: str | None,
              max_copy_lag: str | None, warn_copy_lag: str | None,
              cluster: bool, archive: bool, timeout: float, host: str | None,
              port: str | None, user: str | None, dbname: str | None, prometheus_file: str | None,
              as_json: bool) -> None:
    """Monitoring plugin: one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
    from walkeeper.commands.status import (
        UNKNOWN,
        CheckResult,
        Thresholds,
        parse_duration,
        prometheus_text,
    )
    from walkeeper.postgres.client import ConnOptions

    name_command(click.get_current_context())
    if archive and (cluster or prometheus_file or any((max_wal_age, max_backup_age, warn_wal_age, warn_backup_age,
                                                       max_dump_age, warn_dump_age, max_restore_test_age,
                                                       warn_restore_test_age, max_receive_lag, warn_receive_lag,
                                                       max_copy_lag, warn_copy_lag))):
        raise click.UsageError("--archive runs the preflight alone: without --cluster, --prometheus or ages")
    conn = ConnOptions(host, port, user, dbname)
    doc: dict[str, Any] = {}
    several: Any = None
    lags: list[Any] = []
    try:
        config = app.config
        repo_url = config.repo
        if archive:
            from walkeeper.commands.check import run_archive_check

            preflight = run_archive_check(config, conn, timeout)
            result, doc = preflight.result, preflight.doc
        else:
            thresholds = Thresholds(*(parse_duration(v) if v else None
                                      for v in (max_wal_age, max_backup_age, warn_wal_age, warn_backup_age,
                                                max_dump_age, warn_dump_age, max_restore_test_age,
                                                warn_restore_test_age, max_receive_lag, warn_receive_lag)))
            result, several, lags = _check_each(config, thresholds, cluster, conn, max_copy_lag, warn_copy_lag,
                                                want_lags=bool(prometheus_file or max_copy_lag or warn_copy_lag))
    except Exception as exc:
        result, repo_url = CheckResult(UNKNOWN, [error_message(exc)]), app.repo or ""
        several, lags = None, []
    if prometheus_file:
        try:
            # Durable and atomic: the collector never reads half a file (its temp name does not end in .prom).
            text = prometheus_text(result, repo_url, several=several, copy_lags=lags)
            write_file(prometheus_file, text.encode(), mode=0o644)
        except OSError as exc:
            result.raise_to(UNKNOWN, f"cannot write {prometheus_file}: {exc.strerror or exc}")
            result.status = UNKNOWN
    try:
        if as_json:
            render.echo_json(render.check_json(result, doc, repo_url, archive, several=several, lags=lags))
        else:
            click.echo(result.line())
    except BrokenPipeError:
        raise CommandFailed(closed_pipe()) from None
    raise CommandFailed(result.status)


def _check_each(config: Any, thresholds: Any, cluster: bool, conn: Any, max_copy_lag: str | None,
                warn_copy_lag: str | None, *, want_lags: bool) -> tuple[Any, Any, list[Any]]:
    """(the verdict, each repository's (name, URL, result) when there are several, the copy lags): every
    repository checked as one is, the server once (with the first), the copy lag behind the first."""
    import contextlib
    import dataclasses

    from walkeeper.cli.repositories import targets
    from walkeeper.commands.status import parse_duration, repository_lag_status, run_check
    from walkeeper.repo.copylisting import copy_lags
    from walkeeper.repo.health import WARNING
    from walkeeper.repo.lag import lag_problems
    from walkeeper.repo.several import judge_copy_lag, merge_checks

    configs = targets(config)
    if len(configs) == 1:
        result = run_check(configs[0], thresholds, cluster=cluster, conn=conn)
        if max_copy_lag or warn_copy_lag:
            result.facts.append("one repository: no copy lag to check")
        return result, None, []
    named = []
    for i, each in enumerate(configs):
        # Each repository judged alone; wal-push's backlog of the set is judged once, below.
        alone = dataclasses.replace(each, repositories=tuple(r for r in each.repositories
                                                             if r.name == each.repository_name))
        result = run_check(alone, thresholds, cluster=cluster and i == 0, conn=conn)
        if i > 0:
            result.failures = {}  # this host's, counted once
        named.append((each.repository_name, each.repo, result))
    result = merge_checks([(n, r) for n, _u, r in named])
    with contextlib.suppress(Exception):
        result.lags = repository_lag_status(config)
    for problem in lag_problems(result.lags or []):
        result.raise_to(WARNING, problem)
    try:
        lags = copy_lags(config) if want_lags else []
    except WalkeeperError as exc:  # a repository down: already a WARNING above, not a reason for UNKNOWN
        lags = []
        if max_copy_lag or warn_copy_lag:
            result.raise_to(WARNING, f"copy lag cannot be measured: {exc}")
    crit, warn = (parse_duration(v) if v else None for v in (max_copy_lag, warn_copy_lag))
    judge_copy_lag(result, lags, crit, warn)
    return result, named, lags


@click.command("expire")
@click.option("--keep", type=int, help="Keep the newest N complete backups (default [retention] keep).")
@click.option("--keep-days", type=float, help="Keep every moment of the last D days recoverable "
              "(default [retention] keep_days).")
@click.option("--keep-daily", type=int, metavar="N", help="Keep the newest backup of each of the last N days.")
@click.option("--keep-weekly", type=int, metavar="N", help="... of each of the last N ISO weeks.")
@click.option("--keep-monthly", type=int, metavar="N", help="... of each of the last N months.")
@click.option("--keep-yearly", type=int, metavar="N", help="... of each of the last N years.")
@click.option("--dumps", "dumps_only", is_flag=True, help="Apply the rules given to logical dumps instead of "
              "backups (default: [retention] for backups and [retention.dumps] for dumps).")
@click.option("--dry-run", is_flag=True, help="Print exactly what would be removed, remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@handle_errors()
def expire_cmd(app: AppContext, keep: int | None, keep_days: float | None, keep_daily: int | None,
               keep_weekly: int | None, keep_monthly: int | None, keep_yearly: int | None, dumps_only: bool,
               dry_run: bool, as_json: bool) -> None:
    """Remove expired backups and the WAL and restore points no retained backup needs; expired dumps."""
    if not dry_run:
        switch_to_owner(app, "expire")
    from walkeeper.cli.repositories import for_each, targets
    from walkeeper.commands.expire import time_zone
    from walkeeper.core.retention_gfs import GfsPolicy
    from walkeeper.repo.repository import open_repository

    given = GfsPolicy(keep, keep_days, keep_daily, keep_weekly, keep_monthly, keep_yearly)
    configs = targets(app.config)
    several = len(configs) > 1
    output = "text" if not as_json else "none" if several else "json"

    def one(config: Any) -> dict[str, Any]:  # each repository with its own [retention] (README "Several ...")
        if several and not as_json:
            click.echo(f"repository {config.repository_name}:")
        ret = config.retention
        zone = time_zone(ret.time_zone)
        repo = open_repository(config)
        if dumps_only:
            return _expire(repo, None, given, zone, dry_run, output)
        backups = given if not given.empty() else GfsPolicy(ret.keep, ret.keep_days, ret.keep_daily,
                                                             ret.keep_weekly, ret.keep_monthly, ret.keep_yearly)
        d = ret.dumps
        dumps = None if not given.empty() else GfsPolicy(d.keep, d.keep_days, d.keep_daily, d.keep_weekly,
                                                         d.keep_monthly, d.keep_yearly)
        dumps = dumps if dumps is not None and not dumps.empty() else None
        # [retention.dumps] alone expires dumps only; with no rule at all, expire for backups says what to set.
        return _expire(repo, None if backups.empty() and dumps is not None else backups, dumps, zone, dry_run,
                       output)

    docs, failed = for_each(configs, one)
    if as_json and several:
        render.echo_json({"repositories": docs, "dry_run": dry_run})
    if failed is not None:
        raise failed


def _expire(repo: Any, backups: Any, dumps: Any, zone: Any, dry_run: bool, output: str) -> dict[str, Any]:
    """Expire backups (``backups``: a GfsPolicy) and/or dumps, printing each part once it is done (``output``:
    text, json or none); the JSON doc."""
    from walkeeper.commands.expire import expire
    from walkeeper.commands.expire_dumps import expire_dumps

    doc: dict[str, Any] = {}
    if backups is not None:
        plan = expire(repo, keep=backups.keep, keep_days=backups.keep_days, dry_run=dry_run, gfs=backups, zone=zone)
        doc = plan.to_dict()
        if output == "text":
            render.print_expire_plan(plan, dry_run)
    if dumps is not None:
        dplan = expire_dumps(repo, dumps, zone, dry_run=dry_run)
        doc["dumps"] = dplan.to_dict()
        if output == "text":
            render.print_expire_dumps(dplan, dry_run)
    doc["dry_run"] = dry_run
    if output == "json":
        render.echo_json(doc)
    return doc


COMMANDS = (init_cmd, status_cmd, check_cmd, verify_cmd, expire_cmd)

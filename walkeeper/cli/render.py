"""What the commands print: the human text and the JSON documents, apart from parsing and running.

Each function takes what a command returned and echoes it; none reads the repository or the server.
The wording here is part of the interface (README, tests/postgres/test_messages.py, test_json.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click


def echo_json(doc: Any, **options: Any) -> None:
    click.echo(json.dumps(doc, indent=2, **options))


# -- wal-list -------------------------------------------------------------------------------------------


def wal_list_json(url: str, meta: Any, timelines: list[Any]) -> dict[str, Any]:
    return {
        "repository": url,
        "system_identifier": meta.system_identifier,
        "wal_segment_size": meta.wal_segment_size,
        "timelines": [
            {"timeline": t.timeline, "first": t.first, "last": t.last, "segments": t.count,
             "gaps": [{"from": a, "to": b} for a, b in t.gaps], "partial": t.partial,
             "backup_labels": t.backup_labels, "history": t.history, "stored_bytes": t.stored_bytes}
            for t in timelines
        ],
    }


def print_wal_list(url: str, meta: Any, timelines: list[Any]) -> None:
    click.echo(f"repository {url}")
    if not timelines:
        click.echo("  empty (nothing archived yet)")
        return
    click.echo(f"  system identifier {meta.system_identifier}, segment size {meta.wal_segment_size}")
    for t in timelines:
        span = f"{t.first} .. {t.last}" if t.first else "no segments"
        click.echo(f"  timeline {t.timeline}: {span}, {t.count} segments, {t.stored_bytes} bytes stored"
                   f"{', history file' if t.history else ''}")
        for a, b in t.gaps:
            click.echo(f"    GAP: {a} .. {b} missing")
        for p in t.partial:
            click.echo(f"    partial: {p}")


# -- backups, restore, pitr, restore points ----------------------------------------------------------------


def print_backup_done(backup: Any) -> None:
    from walkeeper.core.units import human_bytes as human

    click.echo(f"backup {backup.id} done: {human(backup.plain_size)} stored as {human(backup.stored_size)}, "
               f"LSN {backup.start_lsn} .. {backup.stop_lsn} (timeline {backup.timeline}), "
               f"WAL {backup.start_wal} .. {backup.stop_wal} ({backup.wal_mode})"
               + (f", incremental on {backup.parent}" if backup.parent else ""))


def _chain_lengths(backups: list[Any]) -> dict[str, int | None]:
    from walkeeper.repo.chains import chain_length, parent_map

    parents = parent_map(backups)
    return {b.id: chain_length(b.id, parents) for b in backups}


def backups_json(backups: list[Any], incomplete: list[str], running: list[Any]) -> dict[str, Any]:
    lengths = _chain_lengths(backups)
    return {"backups": [{**asdict(b), "chain_length": lengths[b.id]} for b in backups], "incomplete": incomplete,
            "running": [{"id": s.backup_id, "writer": s.describe()} for s in running]}


def print_backups(backups: list[Any], incomplete: list[str], running: list[Any]) -> None:
    """The `backups` table: complete backups, then interrupted ones, then those still being written."""
    from walkeeper.core.units import human_bytes as human

    if not backups:
        click.echo("no backups")
    else:
        click.echo(f"{'ID':<18} {'STOP TIME (UTC)':<20} {'TLI':>3} {'START LSN':>12} {'STOP LSN':>12} "
                   f"{'SIZE':>10} {'STORED':>10} WAL     {'TYPE':<11} {'PARENT':<18} CHAIN LABEL")
    lengths = _chain_lengths(backups)
    for b in backups:
        chain = "BROKEN" if lengths[b.id] is None else str(lengths[b.id])
        click.echo(f"{b.id:<18} {b.stop_time[:19].replace('T', ' '):<20} {b.timeline:>3} {b.start_lsn:>12} "
                   f"{b.stop_lsn:>12} {human(b.plain_size):>10} {human(b.stored_size):>10} {b.wal_mode:<7} "
                   f"{b.type:<11} {b.parent or '-':<18} {chain:>5} {b.label}")
    for i in incomplete:
        click.echo(f"{i:<18} INCOMPLETE (no metadata: interrupted, not usable)")
    for s in running:
        click.echo(f"{s.backup_id:<18} RUNNING ({s.describe()})")


def print_backup(doc: dict[str, Any]) -> None:
    """`backups show`: one ``key: value`` line per field, one line per stored object."""
    for key, value in doc.items():
        if key == "objects":
            for obj in value:
                click.echo(f"object: {obj['key']} {obj['plain_size']} bytes -> {obj['stored_size']} stored, "
                           f"sha256 {obj['sha256']}" + (f", tablespace {obj['tablespace_oid']} at {obj['location']}"
                                                       if obj["tablespace_oid"] else ""))
        else:
            click.echo(f"{key}: {value}")


def print_restored(result: Any) -> None:
    from walkeeper.core.units import human_bytes as human

    combined = f" ({len(result.chain)} backups combined: {', '.join(result.chain)})" if result.chain else ""
    click.echo(f"restored backup {result.backup.id} into {result.pgdata}{combined}: {result.files} files, "
               f"{human(result.bytes)} in {result.seconds:.1f}s, checksums verified")
    click.echo("it is not started: for recovery settings use 'walkeeper pitr --no-restore', then pg_ctl start")


def print_restore_plan(plan: Any, pgdata: str) -> None:
    """`restore --dry-run`: the backup and, for an incremental one, the chain a restore fetches."""
    from walkeeper.repo.chains import describe_chain

    click.echo(f"backup: {plan.backup.id} ({plan.backup.type}), would be restored into {pgdata}")
    if len(plan.chain) > 1:
        click.echo(f"chain: {len(plan.chain)} backups fetched, staged and combined (pg_combinebackup):")
        for line in describe_chain(plan.chain):
            click.echo(line)
    click.echo("dry run: nothing written")


def print_pitr(result: Any, standby: bool) -> None:
    """The plan, what was restored and written, and how to start the server."""
    for line in result.plan.lines():
        click.echo(line)
    if result.dry_run:
        click.echo("dry run: nothing written")
        for line in result.notes:
            click.echo(line)
        return
    if result.restored:
        r = result.restored
        combined = f" ({len(r.chain)} backups combined)" if r.chain else ""
        click.echo(f"restored backup {r.backup.id} into {r.pgdata}{combined}: {r.files} files in {r.seconds:.1f}s, "
                   "checksums verified")
    for note in result.notes:
        click.echo(note)
    signal = "standby.signal" if standby else "recovery.signal"
    click.echo(f"wrote {signal} and the recovery settings block in {result.pgdata}/postgresql.auto.conf")
    click.echo(f"next: pg_ctl -D {result.pgdata} start   (check archive_command in postgresql.conf first: "
               "after promotion the server archives its new timeline)")


def print_restore_point(point: Any) -> None:
    click.echo(f"restore point {point.name!r} at LSN {point.lsn} (timeline {point.timeline}, {point.time}, "
               f"WAL {point.wal_file})")


def restore_points_json(points: list[Any]) -> list[dict[str, Any]]:
    from walkeeper.core.units import utc_text

    return [{**asdict(p), "time": utc_text(p.time)} for p in points]


def print_restore_points(points: list[Any]) -> None:
    if not points:
        click.echo("no restore points")
        return
    click.echo(f"{'NAME':<24} {'LSN':>12} {'TLI':>3} {'TIME':<32} WAL")
    for p in points:
        click.echo(f"{p.name:<24} {p.lsn:>12} {p.timeline:>3} {p.time:<32} {p.wal_file}")


# -- init, status, check, expire ------------------------------------------------------------------------


def print_init(report: Any, next_steps: list[str]) -> None:
    for line in report.lines:
        click.echo(line)
    click.echo("done" if report.changed else "nothing changed: everything was already in place")
    for line in next_steps:
        click.echo(line)


def print_status(doc: dict[str, Any]) -> None:
    """`walkeeper status` as text: the repository (or why it cannot be read), the server, local failures."""
    from walkeeper.commands.status import human_age
    from walkeeper.core.units import iso_utc, plural

    if "error" in doc:
        click.echo(f"repository {doc['repository']}: cannot be read ({doc['error']})")
    else:
        print_repository(doc)
    c = doc.get("cluster")
    if c and "error" in c:
        click.echo(f"  server: not reachable ({c['error']})")
    elif c:
        click.echo(f"  server: current WAL {c['current_wal'] or '(in recovery)'}, last archived "
                   f"{c['last_archived_wal']}, {c['archived_count']} archived, {c['failed_count']} failed"
                   + (f" (last failure {c['last_failed_wal']}, STILL FAILING)" if c["failing"] else ""))
        if c["archive_lag_segments"] is not None:
            click.echo(f"  archive lag: {plural(c['archive_lag_segments'], 'segment')}"
                       + (f", {human_age(c['archive_lag_seconds'])}" if c["archive_lag_seconds"] else ""))
    for name, lag in (doc.get("repositories_behind") or {}).items():
        state = ("lag unknown" if lag["error"] else "up to date") if not lag["segments"] else (
            f"{plural(lag['segments'], 'segment')} behind"
            + (f", missing since {lag['oldest_missing']}" if lag["oldest_missing"] else ""))
        why = f"; cannot be read now: {lag['error']}" if lag["error"] else (
            f"; last error: {lag['last_failure']}" if lag["last_failure"] else "")
        click.echo(f"  repository {name} ({lag['url']}): {state}{why}")
    for event, entry in sorted(doc["walkeeper_failures"].items()):
        click.echo(f"  walkeeper {event} failures on this host: {entry['failures']}"
                   + (f", last at {iso_utc(entry['last_failure'])}" if entry.get("last_failure") else "")
                   + (f": {entry['last_error']}" if entry.get("last_error") else ""))


def print_copy_lags(lags: list[dict[str, Any]]) -> None:
    """How far each repository is behind the first (walkeeper copy), under `status` of several repositories."""
    from walkeeper.commands.status import human_age
    from walkeeper.core.units import plural

    for lag in lags:
        if "error" in lag:
            click.echo(f"copy lag: cannot be measured ({lag['error']})")
        elif lag["seconds"] > 0:
            click.echo(f"copy lag: {lag['to']} is {human_age(lag['seconds'])} behind {lag['from']} (oldest not "
                       f"copied: {lag['oldest_missing']}; {plural(lag['wal_behind'], 'newer segment')}, "
                       f"{plural(len(lag['backups_behind']), 'newer backup')})")
        else:
            click.echo(f"copy lag: none, {lag['to']} holds {lag['from']}'s newest WAL and backup")


def print_repository(doc: dict[str, Any]) -> None:
    from walkeeper.commands.status import human_age, human_ago
    from walkeeper.core.units import human_bytes, plural

    click.echo(f"repository {doc['repository']} (system {doc['system_identifier']}), "
               f"{human_bytes(doc['total_bytes'])} stored")
    for b in doc["backups"]:
        click.echo(f"  backup {b['id']}: timeline {b['timeline']}, WAL {b['start_wal']} .. {b['stop_wal']}, "
                   f"{human_bytes(b['stored_bytes'])}, ended {human_ago(b['age_seconds'])}")
    if not doc["backups"]:
        click.echo("  no backups")
    last_test = (doc.get("restore_tests") or {}).get("last")
    if last_test:
        subject = f"dump {last_test['dump']}" if last_test.get("dump") else f"backup {last_test['backup']}"
        click.echo(f"  last restore test {last_test['id']} of {subject}: "
                   + ("passed" if last_test["ok"] else f"FAILED ({last_test['reason']})")
                   + f", {last_test['total_seconds']:.0f}s, {human_ago(last_test['age_seconds'])}")
    receive = doc.get("receive")
    if receive:
        click.echo(f"  wal-receive (slot {receive['slot']}, {receive['host']}): receive lag "
                   f"{human_age(receive['lag_seconds'])}" + (f", receiving {receive['segment']}"
                                                             if receive.get("segment") else ""))
    for backup_id in doc["incomplete_backups"]:
        click.echo(f"  incomplete backup {backup_id} (not usable)")
    for running in doc["running_backups"]:
        click.echo(f"  running backup {running['id']} ({running['writer']}), "
                   f"{human_bytes(running['in_flight_bytes'])} in flight")
    left = doc["leftovers"]
    if left["objects"] or left["empty_directories"]:
        objects = plural(left["objects"], "temporary object or upload", "temporary objects or uploads")
        dirs = plural(left["empty_directories"], "empty backup directory", "empty backup directories")
        click.echo(f"  leftovers of dead writers: {objects} holding {human_bytes(left['bytes'])}, {dirs} "
                   "(walkeeper expire or the next backup removes them)")
    for d in doc.get("dumps", []):
        click.echo(f"  dump of {d['database']}: {d['id']}, {human_ago(d['age_seconds'])}")
    for t in doc["timelines"]:
        span = f"{t['first']} .. {t['last']}" if t["first"] else "no segments"
        click.echo(f"  timeline {t['timeline']}: {span}, {plural(t['segments'], 'segment')}, "
                   f"{human_bytes(t['stored_bytes'])}{', history file' if t['history'] else ''}")
        for gap in t["gaps"]:
            click.echo(f"    GAP: {gap['from']} .. {gap['to']} missing")
    point = doc["oldest_recovery_point"]
    click.echo(f"  oldest recovery point: {point['lsn']} (end of backup {point['backup']})" if point
               else "  oldest recovery point: none (no backup)")
    newest = doc["newest_segment"]
    if newest:
        click.echo(f"  newest segment: {newest['name']}, archived {human_ago(newest['age_seconds'])}")


def check_json(result: Any, doc: dict[str, Any], repo_url: str, archive: bool, *, several: Any = None,
               lags: Any = ()) -> dict[str, Any]:
    """`check --json`: the verdict, its reasons, and what was read (the preflight's own document with --archive);
    with several repositories each one's own verdict and status under "repositories", and "copy_lag"."""
    from walkeeper.commands.status import STATE_NAMES, status_json

    if not archive:
        doc = {"repository": repo_url, **({"repo": status_json(result.repo)} if result.repo else {}),
               **({"cluster": status_json(result.cluster)} if result.cluster else {})}
    if several:
        doc["repositories"] = {name: {"repository": url, "status": STATE_NAMES[each.status], "reasons": each.messages,
                                      **({"repo": status_json(each.repo)} if each.repo else {})}
                               for name, url, each in several}
        doc.pop("repo", None)
    if lags:
        doc["copy_lag"] = [f.to_dict() for f in lags]
    return {"status": STATE_NAMES[result.status], "exit_code": result.status, "line": result.line(),
            "reasons": result.messages, "facts": result.facts, **doc}


def print_expire_plan(plan: Any, dry_run: bool) -> None:
    """What expire removed (or, with --dry-run, would remove and why each kept backup stays)."""
    from walkeeper.core.units import human_bytes, plural

    verb = "would remove" if dry_run else "removed"
    if plan.note:
        click.echo(plan.note)
    if dry_run:
        for backup_id in plan.kept_backups:
            click.echo(f"keep backup {backup_id}: {', '.join(plan.reasons.get(backup_id, []))}")
    for item in plan.leftovers:
        if item.kind != "dir":
            what = "incomplete upload" if item.kind == "upload" else "temporary object"
            click.echo(f"{verb} {what} {item.path} of a dead writer ({item.size} bytes)")
    for key, size in plan.removals:
        click.echo(f"{verb} {key} ({size} bytes)")
    for backup_id in plan.running_backups:
        click.echo(f"kept running backup {backup_id} (its writer is alive)")
    dirs = sum(item.kind == "dir" for item in plan.leftovers)
    if dirs:
        click.echo(f"{verb} {plural(dirs, 'empty backup directory', 'empty backup directories')}")
    click.echo(f"kept backups: {', '.join(plan.kept_backups) or 'none'}; expired backups: "
               f"{', '.join(plan.expired_backups) or 'none'}; first WAL kept: {plan.cutoff_wal or '-'}")
    click.echo(f"{verb} {plural(len(plan.removals), 'object')}, {human_bytes(plan.bytes_freed)} "
               f"({plan.bytes_freed} bytes){' freed' if not dry_run else ''}")


def print_expire_dumps(dplan: Any, dry_run: bool) -> None:
    from walkeeper.core.units import human_bytes, plural

    verb = "would remove" if dry_run else "removed"
    if dry_run:
        for dump_id, rules in sorted(dplan.kept.items()):
            click.echo(f"keep dump {dump_id}: {', '.join(rules)}")
    for dump_id in dplan.expired:
        click.echo(f"{verb} dump {dump_id}")
    for dump_id in dplan.incomplete:
        click.echo(f"{verb} interrupted dump {dump_id}")
    for item in dplan.leftovers:
        what = {"upload": "incomplete upload", "dir": "empty directory"}.get(item.kind, "temporary object")
        click.echo(f"{verb} {what} {item.path} of a dead dump ({item.size} bytes)")
    click.echo(f"dumps: kept {len(dplan.kept)}, {verb} {len(dplan.expired)} (+{len(dplan.incomplete)} "
               f"interrupted), {plural(len(dplan.removals), 'object')}, {human_bytes(dplan.bytes_freed)}")

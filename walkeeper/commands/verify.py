"""`walkeeper verify`: is the archive whole from the oldest backup to the newest segment?

Checks, on every timeline (following its history file back through its ancestors):

* gaps: segments a recovery would need that are missing, with the recovery (PITR) range each one
  breaks and the backups it affects;
* segments of unknown timelines (no history file), unreadable history files;
* backups whose WAL (start..stop) is incomplete, interrupted backups (no metadata);
* with ``deep``: every object is read back: decrypted, decompressed, checksummed; segments get
  their page header checked (name, timeline, segment size) and their system identifier compared
  with the repository's; history files are parsed; backup data is checksummed against its metadata.
* dumps: interrupted dumps are reported; with ``deep`` every stored dump stream is decoded and
  checksummed against its metadata, and with ``pg_restore`` given also fed to ``pg_restore --list``
  (which reads the archive's table of contents and fails on a damaged one).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from walkeeper.codec import Decoder, decode_bytes
from walkeeper.core.errors import InvalidWal, WalkeeperError
from walkeeper.core.units import human_bytes, iso_utc, plural
from walkeeper.core.wal import WalKind, check_segment, format_lsn, parse_history
from walkeeper.repo import chains
from walkeeper.repo.inventory import BackupInfo, Inventory, WalObject, read_inventory
from walkeeper.repo.repository import Repository

log = logging.getLogger(__name__)


@dataclass
class Problem:
    kind: str  # gap, unknown-timeline, bad-history, backup-wal-incomplete, corrupt, incomplete-backup
    severity: str  # error (verify fails) or warning
    message: str
    action: str
    timeline: int | None = None
    objects: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    repository: str
    system_identifier: str | None
    segment_size: int
    deep: bool
    timelines: list[dict[str, Any]] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)
    dumps: list[str] = field(default_factory=list)
    objects_read: int = 0
    objects_per_key_id: dict[str, int] = field(default_factory=dict)  # --deep only (README "Keys")
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ok"] = self.ok
        return doc


def _ranges(segnos: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted numbers: [3,4,5,9] -> [(3,5),(9,9)]."""
    runs: list[tuple[int, int]] = []
    for s in segnos:
        if runs and s == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], s)
        else:
            runs.append((s, s))
    return runs


def _floor(inv: Inventory, tli: int) -> int:
    """Where checking starts on the lineage of ``tli``: the oldest backup on it, else the first WAL."""
    starts = [b.start_segno for b in inv.backups if inv.descends_from(tli, b.timeline)]
    if starts:
        return min(starts)
    firsts = [min(inv.segments[t]) for t, _b, _e in inv.lineage(tli) if inv.segments.get(t)]
    return min(firsts) if firsts else inv.begin_segno(tli)


def _gap_problem(inv: Inventory, tli: int, first: int, last: int, targets: list[int]) -> Problem:
    size = inv.segment_size
    lo_lsn, hi_lsn = first * size, (last + 1) * size
    before = inv.segments.get(tli, {}).get(first - 1)
    after = inv.segments.get(tli, {}).get(last + 1)
    on_path = [b for b in inv.backups if any(inv.descends_from(t, b.timeline) for t in targets)]
    affected = [b.id for b in on_path if b.start_segno <= last]
    later = [b.id for b in on_path if b.start_segno > last]
    names = (inv.name_of(tli, first), inv.name_of(tli, last))
    span = names[0] if first == last else f"{names[0]} .. {names[1]}"
    message = (f"timeline {tli}: {plural(last - first + 1, 'segment')} missing: {span}; recovery cannot replay "
               f"{format_lsn(lo_lsn)} .. {format_lsn(hi_lsn)}, so no point after {format_lsn(lo_lsn)}"
               f" on {'timeline' if len(targets) == 1 else 'timelines'} {', '.join(map(str, targets))} can be reached")
    if affected:
        message += f" from {'backup' if len(affected) == 1 else 'backups'} {', '.join(affected)}"
    if later:
        message += f"; backup {later[0]} (taken after the gap) still covers later points"
    if before is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(before.mtime))
        message += f"; the last segment before the gap ({before.name.name}) was archived at {when}"
    action = (f"put the missing {'segment' if first == last else 'segments'} back into the repository if a "
              "copy exists (pg_wal of the "
              "server, another archive); otherwise take a new base backup now"
              + ("" if later else " (no backup after the gap can bridge it)"))
    return Problem(
        kind="gap", severity="error", message=message, action=action, timeline=tli, objects=list(names),
        details={"first_missing": names[0], "last_missing": names[1], "count": last - first + 1,
                 "broken_from_lsn": format_lsn(lo_lsn), "broken_to_lsn": format_lsn(hi_lsn),
                 "timelines_affected": targets, "backups_affected": affected, "backups_after_gap": later,
                 "last_good_segment": before.name.name if before else None,
                 "last_good_time": iso_utc(before.mtime) if before else None,
                 "next_good_segment": after.name.name if after else None},
    )


def check_continuity(inv: Inventory, report: Report) -> None:
    """Gaps, unknown timelines, history trouble: everything the listing alone can tell."""
    missing: dict[tuple[int, int], set[int]] = {}  # (tli, segno) -> timelines whose recovery needs it
    for tli in inv.timelines():
        segs = inv.segments.get(tli, {})
        if tli in inv.history_errors:
            report.problems.append(Problem(
                kind="bad-history", severity="error", timeline=tli,
                message=f"history file of timeline {tli} cannot be read: {inv.history_errors[tli]}",
                action="restore the .history file from the server's pg_wal (it never changes)",
                objects=[inv.history_files[tli].name.name]))
        if not inv.known(tli) and tli not in inv.history_errors and (segs or inv.partials.get(tli)):
            report.problems.append(Problem(
                kind="unknown-timeline", severity="error", timeline=tli,
                message=f"segments of timeline {tli} are archived but {tli:08X}.history is not: "
                        "recovery cannot follow this timeline (a lost history file, or WAL of a promoted "
                        "server that never archived it)",
                action=f"copy pg_wal/{tli:08X}.history from the promoted server into the archive "
                       f"(walkeeper wal-push pg_wal/{tli:08X}.history)",
                objects=sorted(o.name.name for o in segs.values())[:1]))
        last = inv.last_segno(tli)
        entry: dict[str, Any] = {
            "timeline": tli, "known": inv.known(tli), "segments": len(segs),
            "first": inv.segments[tli][min(segs)].name.name if segs else None,
            "last": inv.segments[tli][last].name.name if last is not None else None,
            "parents": [t for t, _b, _e in inv.lineage(tli)[:-1]],
            "history": tli in inv.history_files,
        }
        if last is None:
            report.timelines.append(entry)
            continue
        floor = _floor(inv, tli)
        entry["checked_from"] = inv.name_of(tli, max(floor, inv.begin_segno(tli)))
        report.timelines.append(entry)
        for t, s in inv.required_segments(tli, floor, last):
            if s not in inv.segments.get(t, {}):
                missing.setdefault((t, s), set()).add(tli)
    by_tli: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for (t, s), targets in missing.items():
        by_tli.setdefault((t, tuple(sorted(targets))), []).append(s)
    for (t, targets), segnos in sorted(by_tli.items()):
        for first, last in _ranges(sorted(segnos)):
            report.problems.append(_gap_problem(inv, t, first, last, list(targets)))


def check_chains(inv: Inventory, report: Report) -> None:
    """Incremental backups whose parent is gone: they and the backups taken against them cannot be restored."""
    parents = chains.parent_map(inv.backups)
    for backup_id, missing in chains.broken(inv.backups):
        cut = sorted(b.id for b in inv.backups if b.id != backup_id and
                     chains.root_of(b.id, parents) == missing and backup_id in _ancestors(b.id, parents))
        after = f" (nor {', '.join(cut)}, taken against it)" if cut else ""
        report.problems.append(Problem(
            kind="broken-chain", severity="error",
            message=f"backup {backup_id} is incremental on backup {missing}, which is not in the repository: it "
                    f"cannot be restored{after}",
            action=f"take a full backup now (walkeeper backup, without --incremental); then remove the broken chain "
                   f"(walkeeper expire drops it once newer backups are kept), or put backup {missing} back if a "
                   "copy exists (another repository: walkeeper copy)",
            objects=[backup_id, *cut], details={"backup": backup_id, "missing_parent": missing, "affected": cut}))


def _ancestors(backup_id: str, parents: dict[str, str | None]) -> set[str]:
    out: set[str] = set()
    current = parents.get(backup_id)
    while current is not None and current not in out:
        out.add(current)
        current = parents.get(current)
    return out


def check_backups(inv: Inventory, report: Report) -> None:
    for backup in inv.backups:
        report.backups.append(backup.id)
        if backup.self_contained:
            continue
        needed = inv.required_segments(backup.stop_timeline, backup.start_segno, backup.stop_segno)
        if backup.timeline != backup.stop_timeline:
            needed = [(t, s) for t, s in needed if s >= backup.start_segno]
        absent = [inv.name_of(t, s) for t, s in needed if s not in inv.segments.get(t, {})]
        if absent:
            report.problems.append(Problem(
                kind="backup-wal-incomplete", severity="error", timeline=backup.stop_timeline,
                message=f"backup {backup.id} cannot be restored: {len(absent)} of the segments between its "
                        f"start {backup.start_wal} and end {backup.stop_wal} are missing ({', '.join(absent[:3])}"
                        f"{' ...' if len(absent) > 3 else ''})",
                action="put the segments back, or take a new backup and expire this one",
                objects=absent, details={"backup": backup.id}))
    check_chains(inv, report)
    for backup_id in inv.incomplete_backups:
        state = inv.writer_states.get(backup_id)
        why = f"interrupted: its writer ({state.describe()}) is dead" if state else "interrupted (or still running)"
        report.problems.append(Problem(
            kind="incomplete-backup", severity="warning",
            message=f"backup {backup_id} has data but no metadata: {why}; it is not listed and cannot be restored",
            action="walkeeper expire removes it" if state else "if no backup is running, walkeeper expire removes it",
            details={"backup": backup_id}))
    for running in inv.running_backups:
        report.problems.append(Problem(
            kind="running-backup", severity="info",
            message=f"backup {running.backup_id} is being taken ({running.describe()}); not listed until it ends",
            action="nothing: expire leaves it alone", details={"backup": running.backup_id}))
    dead = inv.dead_leftovers(time.time())
    objects = [item for item in dead if item.kind != "dir"]
    if dead:
        size = sum(item.size for item in objects)
        dirs = len(dead) - len(objects)
        what = plural(len(objects), "temporary object or incomplete upload", "temporary objects or incomplete uploads")
        some = ", ".join(item.path for item in objects[:3]) + (" ..." if len(objects) > 3 else "")
        empty = f"; {plural(dirs, 'empty backup directory', 'empty backup directories')}" if dirs else ""
        report.problems.append(Problem(
            kind="leftovers", severity="warning",
            message=f"{what} of dead writers hold {human_bytes(size)} ({some}){empty}",
            action="walkeeper expire (or the next backup) removes them",
            objects=[item.path for item in dead], details={"bytes": size, "empty_directories": dirs}))


def _read_wal(repo: Repository, inv: Inventory, obj: WalObject) -> str | None:
    """Read one WAL object fully; the error text, or None when it is sound."""
    name = obj.name
    try:
        _header, data = decode_bytes(repo.keyring, repo.storage.get(obj.key), expected_name=name.name)
        if name.kind is WalKind.HISTORY:
            parse_history(data.decode("utf-8", errors="strict"))
        elif name.is_segment_like:
            header = check_segment(name, data)
            if name.kind is WalKind.SEGMENT and len(data) != inv.segment_size:
                return f"decodes to {len(data)} bytes, the repository's segments are {inv.segment_size}"
            sysid = inv.meta.system_identifier if inv.meta else None
            if sysid is not None and str(header.system_identifier) != sysid:
                return (f"comes from database system {header.system_identifier}, the repository belongs to "
                        f"system {sysid}")
    except (WalkeeperError, InvalidWal, UnicodeDecodeError) as exc:
        return str(exc)
    return None


def _read_backup_object(repo: Repository, key: str, sha256: str) -> str | None:
    decoder = Decoder(repo.keyring, expected_name=key)
    digest = hashlib.sha256()
    try:
        with repo.storage.open(key) as handle:
            for chunk in decoder.decode(handle.read):
                digest.update(chunk)
    except WalkeeperError as exc:
        return str(exc)
    if digest.hexdigest() != sha256:
        return f"content sha256 {digest.hexdigest()} differs from the backup metadata's {sha256}"
    return None


def _read_dump_item(repo: Repository, key: str, sha256: str, pg_restore: str | None) -> str | None:
    """Decode a dump stream, checksum it and (with ``pg_restore``) have pg_restore --list read it."""
    import subprocess

    decoder = Decoder(repo.keyring, expected_name=key)
    digest = hashlib.sha256()
    proc = None
    if pg_restore:
        proc = subprocess.Popen([pg_restore, "--list"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    try:
        with repo.storage.open(key) as handle:
            for chunk in decoder.decode(handle.read):
                digest.update(chunk)
                if proc is not None and proc.stdin is not None:
                    # pg_restore --list may stop reading after the table of contents
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.write(chunk)
    except WalkeeperError as exc:
        return str(exc)
    finally:
        if proc is not None:
            _out, err = proc.communicate()
    if digest.hexdigest() != sha256:
        return f"content sha256 {digest.hexdigest()} differs from the dump metadata's {sha256}"
    if proc is not None and proc.returncode != 0:
        return f"pg_restore --list cannot read it: {err.decode(errors='replace').strip()}"
    return None


def check_dumps(repo: Repository, report: Report, *, deep: bool, pg_restore: str | None = None,
                jobs: int = 4) -> None:
    from walkeeper.repo.catalog import Catalog

    catalog = Catalog(repo)
    work = []
    for dump_id in catalog.dump_ids():
        try:
            dump = catalog.dump(dump_id)
        except WalkeeperError as exc:
            report.problems.append(Problem(kind="corrupt", severity="error", message=f"dump {dump_id}: {exc}",
                                           action="the dump cannot be restored: take a new one",
                                           objects=[dump_id]))
            continue
        report.dumps.append(dump_id)
        for item in dump.items:
            lister = pg_restore if item.kind == "database" else None
            work.append((item.key, (_read_dump_item, repo, item.key, item.sha256, lister)))
    for dump_id in catalog.incomplete_dump_ids():
        report.problems.append(Problem(
            kind="incomplete-dump", severity="warning",
            message=f"dump {dump_id} has data but no metadata: interrupted (or still running); it is not listed",
            action="if no dump is running, walkeeper expire --dumps removes it (after an hour)",
            details={"dump": dump_id}))
    if not deep:
        return
    _read_back(work, report, jobs, action="this dump cannot be restored: take a new one")


def check_objects(repo: Repository, inv: Inventory, report: Report, *, jobs: int = 4) -> None:
    """--deep: read every WAL object and every backup object back."""
    work: list[tuple[str, Any]] = [(o.key, (_read_wal, repo, inv, o)) for o in inv.wal]
    backups: list[BackupInfo] = inv.backups
    for backup in backups:
        work.extend((key, (_read_backup_object, repo, key, sha)) for key, sha in backup.objects)
        if backup.manifest is not None:  # what an incremental backup against it reads
            work.append((backup.manifest[0], (_read_backup_object, repo, *backup.manifest)))
    _read_back(work, report, jobs, action="restore this object from another copy (for WAL: the server's pg_wal or "
                                          "a second archive); otherwise treat it as missing: take a new base backup")


def _read_back(work: list[tuple[str, Any]], report: Report, jobs: int, *, action: str) -> None:
    """Run each (key, (reader, *args)) on ``jobs`` threads; a reader returns an error text or None."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(fn, *args): key for key, (fn, *args) in work}
        for future in concurrent.futures.as_completed(futures):
            key = futures[future]
            report.objects_read += 1
            error = future.result()
            if error:
                report.problems.append(Problem(kind="corrupt", severity="error", message=f"{key}: {error}",
                                               action=action, objects=[key]))
    report.problems.sort(key=lambda p: (p.kind != "corrupt", p.objects))


def verify(repo: Repository, *, deep: bool = False, jobs: int = 4, pg_restore: str | None = None) -> Report:
    if deep and repo.keyring is not None and repo.keyring.public_only:
        from walkeeper.core.errors import KeyMaterialError

        raise KeyMaterialError(f"this host holds only the public key (key id {repo.keyring.active_id}): "
                               "verify --deep reads every object back",
                               hint="run it on a restore host whose [encryption] key_file is the private key")
    meta = repo.require_meta()
    inv = read_inventory(repo, leftovers=True)
    report = Report(repository=repo.storage.url, system_identifier=meta.system_identifier,
                    segment_size=inv.segment_size, deep=deep)
    check_continuity(inv, report)
    check_backups(inv, report)
    if deep:
        from walkeeper.repo.key_usage import objects_per_key_id

        check_objects(repo, inv, report, jobs=jobs)
        report.objects_per_key_id = objects_per_key_id(repo)
    check_dumps(repo, report, deep=deep, pg_restore=pg_restore, jobs=jobs)
    return report


def format_report(report: Report) -> str:
    lines = [f"repository {report.repository} (system {report.system_identifier})"]
    for t in report.timelines:
        span = f"{t['first']} .. {t['last']}" if t["first"] else "no segments"
        origin = f", from timeline {t['parents'][-1]}" if t["parents"] else ""
        lines.append(f"  timeline {t['timeline']}: {span}, {t['segments']} segments{origin}"
                     f"{'' if t['known'] else ' (UNKNOWN: no history file)'}")
    lines.append(f"  backups: {len(report.backups)}")
    if report.dumps:
        lines.append(f"  dumps: {len(report.dumps)}")
    if report.deep:
        lines.append(f"  objects read back: {report.objects_read}")
        lines.append("  objects per key id: " + ", ".join(f"{k} {n}" for k, n in report.objects_per_key_id.items()))
    for p in report.problems:
        lines.append(f"{p.severity.upper()}: {p.message}")
        lines.append(f"  what to do: {p.action}")
    errors = sum(p.severity == "error" for p in report.problems)
    lines.append("verify: OK, the archive is whole" if report.ok
                 else f"verify: FAILED, {plural(errors, 'problem')}")
    return "\n".join(lines)

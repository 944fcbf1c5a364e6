"""`walkeeper copy --from A --to B`: make repository B hold what repository A holds.

The plan (walkeeper/repo/copyplan.py) orders the work so that a kill at any moment leaves B
consistent (nothing half-listed) and a rerun finishes it; the copier (walkeeper/repo/copier.py)
verifies every object on the way and never overwrites one. How far B lags behind A (``check
--max-copy-lag``, status) is measured in walkeeper/repo/copylisting.py.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from walkeeper.core.errors import ConfigError, RefusedError
from walkeeper.core.progress import Progress
from walkeeper.repo.copier import Copier, CopyReport
from walkeeper.repo.copylisting import read_dest, read_source
from walkeeper.repo.copyplan import KINDS, Selection, plan
from walkeeper.repo.layout import BACKUP_ID_RE
from walkeeper.repo.repository import Repository

log = logging.getLogger(__name__)


def parse_since(text: str | None) -> tuple[str | None, float | None]:
    """--since: a backup id, or a time in ISO 8601 (without an offset: UTC)."""
    if text is None:
        return None, None
    if BACKUP_ID_RE.match(text):
        return text, None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since {text!r} is neither a backup id nor a time",
                          hint="give a backup id (20260101T120000Z) or a time (2026-01-01 12:00:00+00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return None, moment.timestamp()


def selection(kinds: list[str], since: str | None) -> Selection:
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ConfigError(f"unknown kind of object to copy: {', '.join(sorted(unknown))}")
    since_backup, since_time = parse_since(since)
    return Selection(frozenset(kinds or KINDS), since_backup, since_time)


def run_copy(source: Repository, dest: Repository, chosen: Selection, *, source_name: str, dest_name: str,
             dry_run: bool = False, progress: bool | None = None) -> CopyReport:
    """Copy what ``chosen`` selects; the report says what was copied, skipped and left out."""
    if source.storage.url == dest.storage.url:
        raise ConfigError(f"--from and --to name the same repository ({source.storage.url})")
    state = read_source(source)
    if chosen.since_backup is not None and chosen.since_backup not in {b.id for b in state.listing.backups}:
        raise RefusedError(f"no backup {chosen.since_backup} in repository {source_name}",
                           hint=f"walkeeper --repo {source_name} backups lists them")
    meter = Progress(f"copy {source_name} -> {dest_name}", None, enabled=progress)
    copier = Copier(source, dest, backup_docs=state.backup_docs, dump_docs=state.dump_docs,
                    expected=state.expected, count=meter.add)
    copier.ensure_identity(dry_run=dry_run)
    actions = plan(state.listing, read_dest(dest), chosen)
    meter.total = sum(state.sizes.get(a.key, 0) for a in actions if a.op == "copy")
    report = CopyReport(source=source_name, destination=dest_name, dry_run=dry_run)
    try:
        copier.run(actions, report, dry_run=dry_run, sizes=state.sizes)
    finally:
        meter.finish()
    return report


def unusable_error(report: CopyReport) -> RefusedError | None:
    """The failure a copy ends with when backups were left out (everything else was copied)."""
    if not report.unusable:
        return None
    first = report.unusable[0]
    more = f" and {len(report.unusable) - 1} more" if len(report.unusable) > 1 else ""
    return RefusedError(f"backup {first['backup']} was not copied: {first['reason']}{more}; "
                        "everything else was", hint="walkeeper verify shows what the source lacks")

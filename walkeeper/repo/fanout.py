"""Storing one WAL file into several repositories: what wal-push and the pusher share (README "Several
repositories").

``[archive] require = "all"`` (the default): the file counts as archived only once every repository holds
it durably; any failure fails the call (PostgreSQL retries; pg_wal grows and status/check show it).

``require = "any"``: the file counts as archived once one repository holds it; every repository that could
not be reached (a storage error) gets the file in its backlog (repo/lagbook.py), durably, before success is
reported. A repository with a backlog receives new files only through it, in WAL order: each call appends
its file and then catches the repository up for a bounded time (unless it failed less than
``catch_up_interval`` seconds ago, so an outage costs the archive no connection retries). The pusher does
the same in the background. Catch-up reads a file from pg_wal while PostgreSQL keeps it, else from the
repositories that hold it (verified). Errors that are not about reaching a repository (different content
already stored, a repository of another cluster, a key problem) fail the call in both modes.

With one repository, Fanout.push is exactly walfile.push_file.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from walkeeper.core.config import Config
from walkeeper.core.errors import ConflictError, InvalidWal, NotFound, StorageError, WalkeeperError
from walkeeper.core.wal import check_segment, parse_wal_name
from walkeeper.repo.fallback import Source, fetch_first, named
from walkeeper.repo.lagbook import LagBook
from walkeeper.repo.layout import wal_key
from walkeeper.repo.repository import PushResult, Repository, open_repository
from walkeeper.repo.walfile import WalData, read_checked, read_wal_file, store_wal

log = logging.getLogger(__name__)

REQUIRE_ALL, REQUIRE_ANY = "all", "any"
CATCH_UP_BUDGET = 5.0  # seconds of catch-up inside one archive_command call (the pusher has no bound)


@dataclass(frozen=True)
class Target:
    """A repository wal-push stores into; ``lag``: its backlog (require = "any" with several repositories)."""

    name: str
    repo: Repository
    lag: LagBook | None = None


@dataclass
class FanoutResult:
    result: PushResult  # of the first repository that holds the file
    stored: list[str] = field(default_factory=list)  # repositories holding the file now
    behind: dict[str, str] = field(default_factory=dict)  # repository -> why it does not (yet)


class Fanout:
    def __init__(self, targets: Sequence[Target], *, require: str = REQUIRE_ALL, pg_wal: Path | None = None,
                 catch_up_interval: float = 10.0) -> None:
        if not targets:
            raise ValueError("no repository to store into")
        self.targets = list(targets)
        self.require = require if len(self.targets) > 1 else REQUIRE_ALL
        self.pg_wal = pg_wal
        self.catch_up_interval = catch_up_interval

    @property
    def several(self) -> bool:
        return len(self.targets) > 1

    def push(self, path: Path, *, look_first: bool = True, before_store: Callable[[], None] | None = None,
             budget: float | None = CATCH_UP_BUDGET) -> FanoutResult:
        """Store the WAL file at ``path`` as ``require`` says; raise when it does not count as archived."""
        wal = read_checked(path)
        results: dict[str, PushResult] = {}
        behind: dict[str, str] = {}
        errors: list[WalkeeperError] = []
        unreachable: list[WalkeeperError] = []
        added: list[LagBook] = []  # backlog entries this call made: withdrawn if the file does not count as archived
        for target in self.targets:
            if self.require == REQUIRE_ANY and target.lag is not None and (pending := target.lag.pending()):
                # Behind already: the file joins the backlog, so the repository gets every file in order.
                if wal.name.name not in pending:
                    added.append(target.lag)
                target.lag.add(wal.name.name, "queued behind earlier files")
                self._catch_up(target, budget)
                if wal.name.name not in target.lag.pending():
                    results[target.name] = PushResult(wal.name.name, True, hashlib.sha256(wal.data).hexdigest(),
                                                      len(wal.data), 0)
                else:
                    behind[target.name] = target.lag.last_failure() or "catching up"
                continue
            try:
                results[target.name] = store_wal(target.repo, wal, look_first=look_first, before_store=before_store)
            except ConflictError as exc:
                errors.insert(0, named(exc, target.name, self.several))  # the worst: reported first
            except StorageError as exc:
                if self.require == REQUIRE_ANY and target.lag is not None:
                    if wal.name.name not in target.lag.pending():
                        added.append(target.lag)
                    target.lag.add(wal.name.name, str(exc))
                    target.lag.failed(str(exc))
                    behind[target.name] = str(exc)
                    log.warning("repository %s is behind: cannot store %s (%s); recorded for catch-up",
                                target.name, wal.name.name, exc)
                    unreachable.append(named(exc, target.name, self.several))
                else:
                    errors.append(named(exc, target.name, self.several))
            except WalkeeperError as exc:
                errors.append(named(exc, target.name, self.several))
        if errors or not results:
            # PostgreSQL keeps the file and calls again; a backlog holds only files that count as archived
            # (never, after a conflict, a copy of the refused file for the other repositories).
            for book in added:
                book.done(wal.name.name)
        if errors:
            raise errors[0]
        if not results:
            raise unreachable[0] if unreachable else StorageError(
                f"{wal.name.name} could not be stored in any repository (every one is behind)",
                hint="walkeeper status shows each repository's lag and last error")
        return FanoutResult(next(iter(results.values())), list(results), behind)

    # -- catch-up ------------------------------------------------------------------------------------

    def lagging(self) -> list[Target]:
        return [t for t in self.targets if t.lag is not None and t.lag.pending()]

    def catch_up(self, *, budget: float | None = None) -> dict[str, int]:
        """Catch up every repository that is behind and not resting; files stored per repository."""
        return {t.name: self._catch_up(t, budget) for t in self.lagging()}

    def _catch_up(self, target: Target, budget: float | None) -> int:
        """Store ``target``'s backlog in WAL order until it is empty, a store fails or ``budget`` runs out."""
        book = target.lag
        assert book is not None
        if book.resting(self.catch_up_interval):
            return 0
        deadline = None if budget is None else time.monotonic() + budget
        stored = 0
        with book.draining() as mine:
            if not mine:
                return 0  # another process catches it up
            while names := book.pending():
                for name in names:
                    if deadline is not None and time.monotonic() > deadline:
                        return stored
                    try:
                        wal = self._source(name, target)
                        store_wal(target.repo, wal, look_first=True)
                    except WalkeeperError as exc:
                        book.failed(str(exc))
                        log.warning("repository %s: catching up %s failed (%s); %d file(s) still behind",
                                    target.name, name, exc, len(book.pending()))
                        return stored
                    book.done(name)
                    stored += 1
            book.recovered()
        if stored:
            log.info("repository %s caught up (%d file(s) stored)", target.name, stored)
        return stored

    def _source(self, name: str, target: Target) -> WalData:
        """A backlog file: from pg_wal while PostgreSQL keeps it, else verified from a repository that has it."""
        wal_name = parse_wal_name(name)
        if self.pg_wal is not None:
            try:
                data = read_wal_file(self.pg_wal / name)
            except NotFound:
                pass
            else:
                try:
                    header = check_segment(wal_name, data) if wal_name.is_segment_like else None
                except InvalidWal:
                    pass  # not the archived file any more (recycled): take the repositories' copy
                else:
                    return WalData(wal_name, data, header)
        others = [Source(t.name, t.repo) for t in self.targets if t is not target]
        try:
            fetched = fetch_first(others, wal_name)
        except NotFound:
            raise StorageError(f"{name} is neither in pg_wal nor in another repository: it cannot be caught up",
                               hint="copy it from wherever it is kept (walkeeper copy), or accept the gap") from None
        data = fetched.data
        return WalData(wal_name, data, check_segment(wal_name, data) if wal_name.is_segment_like else None)

    # -- for the pusher's ordered publish --------------------------------------------------------------

    def holds(self, name: str) -> bool:
        """True when ``name`` is stored as ``require`` asks (behind repositories counted through their backlog)."""
        key = wal_key(parse_wal_name(name))
        seen = False
        for target in self.targets:
            try:
                has = target.repo.stored_sha256(key) is not None
            except WalkeeperError:
                has = False
            if has:
                seen = True
            elif self.require == REQUIRE_ALL:
                return False
        return seen


def fanout_for(config: Config, *, pg_wal: Path | None, lag_dir: Callable[[str], str] | None) -> Fanout:
    """The repositories wal-push stores into, as ``config`` names them; ``lag_dir(url)``: a backlog's directory."""
    configs = config.push_repositories()
    keep_backlog = len(configs) > 1 and config.archive.require == REQUIRE_ANY and lag_dir is not None
    targets = []
    for each in configs:
        book = None
        if keep_backlog:
            assert lag_dir is not None
            try:
                book = LagBook(lag_dir(each.repo))
            except OSError as exc:  # no backlog: this repository must then store every file, as with "all"
                log.warning("repository %s: no backlog directory (%s); it must store every file", each.repository_name,
                            exc)
        targets.append(Target(each.repository_name, open_repository(each), book))
    return Fanout(targets, require=config.archive.require, pg_wal=pg_wal,
                  catch_up_interval=config.archive.catch_up_interval)

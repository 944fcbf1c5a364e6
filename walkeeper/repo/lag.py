"""How far each configured repository is behind the others: what status, check and the Prometheus textfile
report per repository (``walkeeper_repository_lag_segments{repo="NAME"}``), so that a repository that is down
never lets WAL pile up unnoticed (README "Several repositories").

Two measures, the larger counts:
- the backlog on this host (repo/lagbook.py): files wal-push stored elsewhere with ``require = "any"`` and
  still owes this repository; known even while the repository cannot be reached;
- the listings: segments another repository holds beyond this repository's newest one (names order WAL:
  timeline, then position), which also shows a repository falling behind with ``require = "all"`` (the
  pusher stores ahead into the others while PostgreSQL retries) or from another host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from walkeeper.core.config import Config
from walkeeper.core.errors import WalkeeperError
from walkeeper.core.walformat import is_segment_name
from walkeeper.repo.lagbook import LagBook
from walkeeper.repo.layout import WAL_PREFIX
from walkeeper.repo.repository import open_repository


@dataclass
class RepositoryLag:
    name: str
    url: str
    segments: int  # how many WAL segments it is behind (the larger of the two measures)
    backlog: int  # files owed to it by this host's wal-push (require = "any")
    oldest_missing: str | None  # the first file of the backlog
    newest_segment: str | None  # its newest stored segment (None: none, or unreadable)
    last_failure: str | None  # why the last store or catch-up into it failed (this host)
    error: str | None  # why it could not be listed now

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def segment_names(config: Config) -> set[str]:
    """The segment names a repository holds (raises when it cannot be listed)."""
    repo = open_repository(config, codec=False)
    try:
        repo.require_meta()  # a path that holds no repository (a mistyped one, an unmounted disk) is an error
        return {info.key.rsplit("/", 1)[1] for info in repo.storage.list(WAL_PREFIX)
                if is_segment_name(info.key.rsplit("/", 1)[1])}
    finally:
        repo.storage.close()


def behind_by(mine: set[str], others: list[set[str]]) -> int:
    """Segments the others hold beyond ``mine``'s newest (all of theirs when ``mine`` is empty)."""
    newest = max(mine, default="")
    return len({n for names in others for n in names if n > newest})


def repository_lags(config: Config, lag_dir: Callable[[str], str | None],
                    names_of: Callable[[Config], set[str]] = segment_names) -> list[RepositoryLag]:
    """The lag of every configured repository, in configured order (one repository: lag 0)."""
    configs = config.each_repository()
    listed: dict[str, set[str] | None] = {}
    errors: dict[str, str] = {}
    for each in configs:
        try:
            listed[each.repository_name] = names_of(each) if len(configs) > 1 else set()
        except WalkeeperError as exc:
            listed[each.repository_name] = None
            errors[each.repository_name] = str(exc)
    out = []
    for each in configs:
        book = _book(lag_dir, each.repo)
        pending = book.pending() if book else []
        mine = listed[each.repository_name]
        others = [names for other, names in listed.items() if other != each.repository_name and names is not None]
        derived = behind_by(mine, others) if mine is not None else 0
        out.append(RepositoryLag(
            name=each.repository_name, url=each.repo, segments=max(derived, len(pending)), backlog=len(pending),
            oldest_missing=pending[0] if pending else None,
            newest_segment=max(mine, default=None) if mine else None,
            last_failure=book.last_failure() if book and pending else None,
            error=errors.get(each.repository_name)))
    return out


def _book(lag_dir: Callable[[str], str | None], url: str) -> LagBook | None:
    try:
        directory = lag_dir(url)
    except OSError:
        return None
    return LagBook(directory) if directory else None


def lag_problems(lags: list[RepositoryLag]) -> list[str]:
    """One line per repository that is behind or cannot be listed (check raises each to WARNING)."""
    out = []
    for lag in lags:
        why = f"; cannot be read now: {lag.error}" if lag.error and len(lags) > 1 else (
            f"; last error: {lag.last_failure}" if lag.last_failure else "")
        if lag.segments:
            since = f", missing since {lag.oldest_missing}" if lag.oldest_missing else ""
            out.append(f"repository {lag.name} is {lag.segments} segment{'s' if lag.segments != 1 else ''} "
                       f"behind{since}{why}")
        elif why.startswith("; cannot"):
            out.append(f"repository {lag.name}{why[1:]}")
    return out


def lag_metric(lags: list[RepositoryLag]) -> list[str]:
    """The Prometheus lines of ``walkeeper_repository_lag_segments{repo="NAME"}``."""
    lines = ["# HELP walkeeper_repository_lag_segments WAL segments a repository is behind the others "
             "(its backlog on this host, or what the others hold beyond its newest segment).",
             "# TYPE walkeeper_repository_lag_segments gauge"]
    lines += [f'walkeeper_repository_lag_segments{{repo="{lag.name}"}} {lag.segments}' for lag in lags]
    return lines

"""Reading one WAL file from several repositories: the first that has it, gaps judged across all of them.

wal-fetch and the prefetcher read through ``fetch_first``. The order is the configured one (``--repo NAME``
puts that repository first). A repository that does not hold the file, cannot be reached or holds an object
that fails its checks is skipped for the next one; the file is served by the first that yields a verified
copy. What PostgreSQL then sees (README "Several repositories"):

- some repository has it: the file (exit 0), even when others failed (logged);
- none has it and none failed: "not found" (exit 1) when no repository holds a later segment of its
  timeline; when one does, a bounded wait for a store in flight in any of them, then a gap (exit 208);
- none has it and one failed: that repository's error (exit above 125), never "not found": the file may be
  exactly in the repository that could not be read, and ending recovery there would silently shorten history.

With one repository this is exactly Repository.fetch_wal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from walkeeper.core.config import Config
from walkeeper.core.errors import GapError, NotFound, WalkeeperError
from walkeeper.core.wal import WalKind, WalName
from walkeeper.repo.repository import GAP_POLL, GAP_POLL_MAX, Repository, open_repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A repository to read from, by its configured name (for messages)."""

    name: str
    repo: Repository


@dataclass(frozen=True)
class Fetched:
    data: bytes
    source: str  # the name of the repository that served it


def sources_for(config: Config) -> list[Source]:
    """The repositories wal-fetch reads, in the order it tries them (--repo NAME's first)."""
    return [Source(c.repository_name, open_repository(c)) for c in config.fetch_repositories()]


def named(error: WalkeeperError, name: str, several: bool) -> WalkeeperError:
    """``error`` with its message prefixed by the repository's name (when there are several)."""
    if not several:
        return error
    return type(error)(f"repository {name}: {error.args[0] if error.args else error}", hint=error.hint)


def fetch_first(sources: Sequence[Source], name: WalName, *, gap_wait: float = 0.0) -> Fetched:
    """The verified plaintext of ``name`` from the first source that has it (see the module docstring)."""
    several = len(sources) > 1
    errors: list[tuple[str, WalkeeperError]] = []
    for index, source in enumerate(sources):
        data = _try(source, name, errors, several, warn=index < len(sources) - 1)
        if data is not None:
            if index:
                log.info("%s served by repository %s, after %s", name.name, source.name,
                         ", ".join(s.name for s in sources[:index]))
            return Fetched(data, source.name)
    if errors:
        raise _failed(errors, sources, name)
    later = _later_anywhere(sources, name, several) if name.kind is WalKind.SEGMENT else None
    if later is None:
        raise NotFound(f"{name.name} is not in the archive" + (" (in none of the repositories)" if several else ""))
    return wait_for_store(sources, name, later, gap_wait, several)


def _try(source: Source, name: WalName, errors: list[tuple[str, WalkeeperError]], several: bool, *,
         warn: bool = False) -> bytes | None:
    """The verified file from ``source``; None when it does not hold it or fails (the error goes to ``errors``)."""
    try:
        return source.repo.decode_wal(name, source.repo.wal_object(name))
    except NotFound:
        return None
    except WalkeeperError as exc:
        if warn:  # the next repository is tried; if none has it, this error is the answer
            log.warning("repository %s: cannot read %s (%s); trying the next repository", source.name, name.name,
                        exc)
        errors.append((source.name, named(exc, source.name, several)))
        return None


def _failed(errors: list[tuple[str, WalkeeperError]], sources: Sequence[Source], name: WalName) -> WalkeeperError:
    """The first failure, saying (with several repositories) why it is not "not found"."""
    first = errors[0][1]
    if len(sources) == 1:
        return first
    failed = {source for source, _error in errors}
    clean = [s.name for s in sources if s.name not in failed]
    if not clean:
        return first
    return type(first)(
        f"{first.args[0] if first.args else first}; {name.name} is not in {', '.join(clean)}, so it may be only "
        f"where it cannot be read: stopping rather than reporting it missing",
        hint=f"{first.hint + '; ' if first.hint else ''}to read without {', '.join(sorted(failed))}, give wal-fetch "
             "--repo with the URL of a repository that is up")


def _later_anywhere(sources: Sequence[Source], name: WalName, several: bool) -> str | None:
    """A later stored segment of ``name``'s timeline in any source; an unreadable listing is an error."""
    for source in sources:
        try:
            later = source.repo.later_segment(name)
        except WalkeeperError as exc:
            raise named(exc, source.name, several) from None
        if later is not None:
            return later
    return None


def wait_for_store(sources: Sequence[Source], name: WalName, later: str, gap_wait: float,
                    several: bool) -> Fetched:
    """Wait (bounded) for ``name`` to appear in any source: a parallel pusher may store N+1 before N."""
    log.info("%s is missing while %s is stored: waiting up to %g s for a store in flight", name.name, later,
             gap_wait)
    deadline = time.monotonic() + gap_wait
    poll = GAP_POLL
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(poll, left))
        poll = min(poll * 1.5, GAP_POLL_MAX)
        errors: list[tuple[str, WalkeeperError]] = []
        for source in sources:
            data = _try(source, name, errors, several)
            if data is not None:
                return Fetched(data, source.name)
        if errors:
            raise _failed(errors, sources, name)
    where = " in any repository" if several else ""
    raise GapError(
        f"{name.name} is missing from the archive{where}, but later WAL of timeline {name.timeline} "
        f"exists ({later}) and it did not appear within {gap_wait:g} s; stopping recovery instead of "
        f"ending it early",
        hint="put the missing segment back into the repository, or choose a recovery target before it "
             "(if the primary stores segments more slowly than that, raise [restore] gap_wait)",
    )

"""wal-receive's partial segments in the repository: storing the growing one, serving the newest.

pg_receivewal writes the segment it is receiving as ``<segment>.partial`` (padded with zeros to the
segment size). wal-receive stores a copy of it every ``[receive] partial_interval`` seconds under
``received/TTTTTTTT/<segment>.partial.<LLLLLLLL>`` (layout.received_partial_key; LLLLLLLL = bytes
received, up to the last non-zero byte). Every upload is a new object, stored without overwriting
anything; once it is durable the smaller uploads of that segment are deleted, and all of them once
the complete segment is in ``wal/``. A reader takes the greatest length: a crash between the store
and the deletes leaves two, never none, and never loses the newer data. The object's own name (in the
envelope) is ``<segment>.partial``, like the partial segment PostgreSQL archives at a promotion,
which stays under ``wal/`` and is never touched by wal-receive.

wal-fetch asked for a segment that is not stored serves the newest received partial of it under the
segment's name only when nothing later of its timeline is stored (PostgreSQL's convention for the
end of a lost primary's WAL: restore ``X.partial`` as ``X``); recovery replays it to its last
complete record and ends there. With several repositories this is judged across all of them (a later
segment or partial in any one means no partial is served; the greatest upload anywhere is served). The
decisions are ``missing_segment_choice`` and ``partial_holders`` (table-tested).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from walkeeper.codec import encode_bytes
from walkeeper.core.errors import AlreadyExists, IntegrityError, InvalidWal, NotFound, WalkeeperError
from walkeeper.core.wal import WalKind, WalName, check_segment, parse_wal_name, segno_of
from walkeeper.repo.fallback import Source, fetch_first, named, wait_for_store
from walkeeper.repo.layout import (
    RECEIVED_PREFIX,
    RECEIVER_STATE_KEY,
    parse_received_partial_key,
    received_partial_key,
    received_prefix,
)
from walkeeper.repo.repository import Repository
from walkeeper.repo.walfile import FetchResult, write_file_atomically

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedPartial:
    key: str
    segment: str  # the 24-character segment name
    segno: int
    length: int  # bytes received (up to the last non-zero byte)
    mtime: float


def received_length(data: bytes) -> int:
    """Bytes of ``data`` up to its last non-zero byte: what pg_receivewal has written so far."""
    return len(data.rstrip(b"\0"))


def list_received(repo: Repository, timeline: int | None = None) -> list[ReceivedPartial]:
    """Every stored received partial (of one timeline), in segment then length order."""
    size = repo.segment_size
    out = []
    for info in repo.storage.list(received_prefix(timeline) if timeline is not None else RECEIVED_PREFIX):
        parsed = parse_received_partial_key(info.key)
        if parsed is None:
            continue
        segment, length = parsed
        try:
            segno = segno_of(parse_wal_name(segment), size)
        except Exception:  # an impossible name for this segment size: not ours to serve
            continue
        out.append(ReceivedPartial(info.key, segment, segno, length, info.mtime))
    return sorted(out, key=lambda p: (p.segment, p.length))


def received_ends(repo: Repository) -> dict[int, dict[int, tuple[float, int]]]:
    """timeline -> segment number -> (stored at, bytes received) of the newest received partial of each segment."""
    out: dict[int, dict[int, tuple[float, int]]] = {}
    for p in list_received(repo):
        per = out.setdefault(int(p.segment[:8], 16), {})
        if p.segno not in per or p.length > per[p.segno][1]:
            per[p.segno] = (p.mtime, p.length)
    return out


# -- the reader's decision ------------------------------------------------------------------------------


class MissingChoice(enum.Enum):
    NOT_FOUND = "not found"  # nothing at or after the segment: the end of the archive
    WAIT_FOR_GAP = "gap rules"  # something later is stored: a store in flight or a gap (never "not found")
    SERVE_PARTIAL = "serve partial"  # the newest received partial of the segment is the end of the archive


def missing_segment_choice(wanted: int, later_segment: bool,
                           partials: Sequence[tuple[int, int]]) -> tuple[MissingChoice, int | None]:
    """What wal-fetch does for segment number ``wanted`` that is not stored as a complete segment.

    ``later_segment``: a complete segment after it is stored on its timeline; ``partials``: (segment
    number, length) of the received partials on that timeline. Returns the choice and, to serve, the
    length of the upload to serve (the greatest).
    """
    if later_segment or any(segno > wanted for segno, _ in partials):
        return MissingChoice.WAIT_FOR_GAP, None
    lengths = [length for segno, length in partials if segno == wanted and length > 0]
    if lengths:
        return MissingChoice.SERVE_PARTIAL, max(lengths)
    return MissingChoice.NOT_FOUND, None


def partial_holders(wanted: int, listings: Sequence[Sequence[tuple[int, int]]]) -> tuple[MissingChoice, int | None,
                                                                                        list[int]]:
    """``missing_segment_choice`` judged across repositories: ``listings[i]`` are the (segment number, length)
    of repository i's received partials on the timeline. A later partial in any repository means no partial is
    served (as a later segment anywhere makes a gap); else the greatest length anywhere is served, by the
    repositories that hold an upload of that length (their indexes, in order)."""
    choice, length = missing_segment_choice(wanted, False, [p for listing in listings for p in listing])
    if choice is not MissingChoice.SERVE_PARTIAL:
        return choice, None, []
    return choice, length, [i for i, listing in enumerate(listings) if (wanted, length) in listing]


def fetch_received_partial(sources: Sequence[Source], name_text: str, dest: Path, *,
                           gap_wait: float = 0.0) -> FetchResult:
    """wal-fetch's last resort after "not found" in every repository: the newest received partial of the
    segment in any of them, placed at ``dest``.

    Raises NotFound when there is none (or for anything but a segment), and follows the gap rules when a
    later segment was received into any repository. A repository whose partials cannot be listed is an
    error, never "not found" (its partial may be the newest). Never used by the prefetcher: a partial must
    not be kept ahead.
    """
    name = parse_wal_name(name_text)
    if name.kind is not WalKind.SEGMENT:
        raise NotFound(f"{name.name} is not in the archive")
    data = _partial_or_segment(list(sources), name, gap_wait)
    write_file_atomically(dest, data)
    return FetchResult(name.name, len(data))


def _partial_or_segment(sources: list[Source], name: WalName, gap_wait: float) -> bytes:
    several = len(sources) > 1
    for attempt in range(3):  # the receiver may replace or complete the partial between our list and get
        if attempt:
            try:
                return fetch_first(sources, name, gap_wait=gap_wait).data
            except NotFound:
                pass
        listings: list[list[ReceivedPartial]] = []
        for source in sources:
            try:
                listings.append(list_received(source.repo, name.timeline))
            except WalkeeperError as exc:
                raise named(exc, source.name, several) from None
        wanted = segno_of(name, sources[0].repo.segment_size)
        choice, length, holders = partial_holders(wanted, [[(p.segno, p.length) for p in each]
                                                           for each in listings])
        if choice is MissingChoice.NOT_FOUND:
            raise NotFound(f"{name.name} is not in the archive")
        if choice is MissingChoice.WAIT_FOR_GAP:
            later = min(p.segment for each in listings for p in each if p.segno > wanted) + ".partial"
            return wait_for_store(sources, name, later, gap_wait, several).data
        errors: list[WalkeeperError] = []
        for index in holders:
            source = sources[index]
            try:
                blob = source.repo.storage.get(received_partial_key(name, length or 0))
                data = source.repo.decode_wal(name, blob, stored_as=f"{name.name}.partial")
            except NotFound:
                continue
            except WalkeeperError as exc:  # another repository may hold the same upload intact
                errors.append(named(exc, source.name, several))
                continue
            log.info("%s: serving the partial segment received by wal-receive (%d bytes received%s, the end of "
                     "the archive)", name.name, length, f", from repository {source.name}" if several else "")
            return data
        if errors:
            raise errors[0]
    raise NotFound(f"{name.name} is not in the archive")


# -- the writer (wal-receive) ------------------------------------------------------------------------------


def store_partial(repo: Repository, segment: WalName, data: bytes) -> int | None:
    """Store ``data`` (the spool's ``<segment>.partial``) if it holds more than the newest stored upload.

    Returns the length the repository now holds for the segment (this upload's, or a stored one at least
    as long), or None when nothing could be stored this time (the read caught a page being written: the
    next interval stores it). Never overwrites: a new length is a new key.
    """
    length = received_length(data)
    if length == 0:
        return 0
    try:
        header = check_segment(segment, data)
    except InvalidWal as exc:
        log.debug("%s.partial not stored this time: %s", segment.name, exc)
        return None
    if len(data) != header.segment_size:
        log.debug("%s.partial is %d bytes, not yet the padded segment size", segment.name, len(data))
        return None
    repo.ensure_identity(header.system_identifier, header.segment_size, header.pg_version)
    stored = [p for p in list_received(repo, segment.timeline) if p.segment == segment.name]
    if stored and stored[-1].length >= length:
        return stored[-1].length
    key = received_partial_key(segment, length)
    sha = hashlib.sha256(data).hexdigest()
    blob, _ = encode_bytes(repo.codec, f"{segment.name}.partial", data, sha256=sha)
    try:
        repo.storage.put(key, blob, overwrite=False, metadata={"sha256": sha, "size": str(len(data))})
    except AlreadyExists:
        if repo.stored_sha256(key) != sha:  # the same length read twice, torn once: keep what is there
            log.warning("%s: a different upload of the same length is stored; kept it", key)
            return None
    repo.storage.delete([p.key for p in stored])  # only after the newer one is durable
    return length


def drop_partials(repo: Repository, segment: str, partials: Sequence[ReceivedPartial] | None = None) -> int:
    """Delete the received partials of ``segment`` (its complete segment is stored); returns how many."""
    name = parse_wal_name(segment)
    if partials is None:
        partials = list_received(repo, name.timeline)
    keys = [p.key for p in partials if p.segment == segment]
    if keys:
        repo.storage.delete(keys)
    return len(keys)


# -- the heartbeat -----------------------------------------------------------------------------------------


def write_receiver_state(repo: Repository, doc: dict[str, Any]) -> None:
    """Record that everything wal-receive had received at ``doc['updated']`` is stored (status, check)."""
    body = dict(doc, updated=doc.get("updated", time.time()))
    repo.storage.put(RECEIVER_STATE_KEY, json.dumps(body, sort_keys=True).encode() + b"\n", overwrite=True)


def read_receiver_state(repo: Repository) -> dict[str, Any] | None:
    """wal-receive's last heartbeat, or None when wal-receive never ran against this repository."""
    try:
        data = repo.storage.get(RECEIVER_STATE_KEY)
    except NotFound:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        raise IntegrityError(f"{RECEIVER_STATE_KEY} is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("updated"), int | float):
        raise IntegrityError(f"{RECEIVER_STATE_KEY} is not a wal-receive heartbeat")
    return doc


def receive_lag(state: dict[str, Any] | None, now: float) -> float | None:
    """Seconds since the repository last held everything wal-receive had received; None: never ran."""
    if state is None:
        return None
    return max(0.0, now - float(state["updated"]))

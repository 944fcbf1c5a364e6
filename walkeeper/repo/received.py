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
complete record and ends there. The decision is ``missing_segment_choice`` (table-tested).
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

from walkeeper.codec import decode_bytes, encode_bytes
from walkeeper.core.errors import AlreadyExists, IntegrityError, InvalidWal, NotFound
from walkeeper.core.wal import DEFAULT_SEGMENT_SIZE, WalKind, WalName, check_segment, parse_wal_name, segno_of
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


def fetch_received_partial(repo: Repository, name_text: str, dest: Path, *, gap_wait: float = 0.0) -> FetchResult:
    """wal-fetch's last resort after "not found": the newest received partial of the segment, placed at ``dest``.

    Raises NotFound when there is none (or for anything but a segment), and follows the gap rules when a
    later segment was received. Never used by the prefetcher: a partial must not be kept ahead.
    """
    name = parse_wal_name(name_text)
    if name.kind is not WalKind.SEGMENT:
        raise NotFound(f"{name.name} is not in the archive")
    data = _partial_or_segment(repo, name, gap_wait)
    write_file_atomically(dest, data)
    return FetchResult(name.name, len(data))


def _partial_or_segment(repo: Repository, name: WalName, gap_wait: float) -> bytes:
    for attempt in range(3):  # the receiver may replace or complete the partial between our list and get
        if attempt:
            try:
                return repo.fetch_wal(name, gap_wait=gap_wait)
            except NotFound:
                pass
        wanted = segno_of(name, repo.segment_size)
        partials = list_received(repo, name.timeline)
        choice, length = missing_segment_choice(wanted, False, [(p.segno, p.length) for p in partials])
        if choice is MissingChoice.NOT_FOUND:
            raise NotFound(f"{name.name} is not in the archive")
        if choice is MissingChoice.WAIT_FOR_GAP:
            later = next(p.segment + ".partial" for p in partials if p.segno > wanted)
            return repo.wait_for_missing(name, later, gap_wait)
        try:
            blob = repo.storage.get(received_partial_key(name, length or 0))
        except NotFound:
            continue
        data = _decode_partial(repo, name, blob)
        log.info("%s: serving the partial segment received by wal-receive (%d bytes received, the end of the "
                 "archive)", name.name, length)
        return data
    raise NotFound(f"{name.name} is not in the archive")


def _decode_partial(repo: Repository, name: WalName, blob: bytes) -> bytes:
    _header, data = decode_bytes(repo.keyring, blob, expected_name=f"{name.name}.partial")
    size = repo.require_meta().wal_segment_size or DEFAULT_SEGMENT_SIZE
    if len(data) != size:
        raise IntegrityError(f"received {name.name}.partial decodes to {len(data)} bytes, expected {size}")
    try:
        check_segment(name, data)
    except InvalidWal as exc:
        raise IntegrityError(f"received {name.name}.partial is not the segment its name says: {exc}") from None
    return data


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

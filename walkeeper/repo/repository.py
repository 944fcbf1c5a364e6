"""The repository layout on top of one Storage and the codec.

Layout (keys)::

    walkeeper.json                      repository identity: format, system identifier, segment size
    wal/<TLI>/<WAL file name>           every archived WAL file (segments, .partial, .backup, .history)

``walkeeper.json`` is plain JSON: it holds nothing secret and lets a person (or a second cluster
about to push into the wrong repository) see at once whose archive this is.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from walkeeper.codec import CodecSettings, Keyring, check_round_trip, decode_bytes, encode_bytes, read_header
from walkeeper.codec.compress import Compression
from walkeeper.core.config import Config
from walkeeper.core.errors import (
    AlreadyExists,
    ConfigError,
    ConflictError,
    ForeignClusterError,
    GapError,
    IntegrityError,
    InvalidName,
    InvalidWal,
    KeyMaterialError,
    NotFound,
    StorageError,
)
from walkeeper.core.wal import (
    DEFAULT_SEGMENT_SIZE,
    WalKind,
    WalName,
    check_segment,
    parse_wal_name,
    segment_name,
    segno_of,
)
from walkeeper.repo.layout import (
    META_KEY,
    WAL_PREFIX,
    wal_key,
)
from walkeeper.repo.repo_meta import FORMAT, RepoMeta  # noqa: F401 - FORMAT is part of this module's names
from walkeeper.storage import Storage, open_storage

log = logging.getLogger(__name__)

GAP_POLL = 0.1  # first wait between looks for a segment stored out of order (one request each on S3)
GAP_POLL_MAX = 1.0  # the waits grow to this: a store in flight is seen quickly, a real gap costs few requests


@dataclass(frozen=True)
class PushResult:
    name: str
    stored: bool  # False: an identical object was already there
    sha256: str
    plain_size: int
    stored_size: int


@dataclass
class TimelineSummary:
    timeline: int
    first: str | None = None
    last: str | None = None
    count: int = 0
    gaps: list[tuple[str, str]] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    backup_labels: list[str] = field(default_factory=list)
    history: bool = False
    stored_bytes: int = 0
    newest_mtime: float | None = None


def build_codec(config: Config) -> CodecSettings:
    """Codec settings from configuration; reads the key file (cheap: HKDF, no slow KDF)."""
    enc = config.encryption
    keyring = None
    if enc.key_file or enc.key_files or enc.key_command:
        keyring = Keyring.from_sources(key_file=enc.key_file, key_files=enc.key_files,
                                       key_command=enc.key_command, timeout=enc.key_command_timeout)
    elif enc.method != "none":
        raise ConfigError(
            f"encryption method {enc.method} needs a key",
            hint="set [encryption] key_file (walkeeper key generate --output FILE), key_files or key_command, "
                 "or method = \"none\"",
        )
    comp = Compression(config.compression.method, config.compression.level, config.compression.threads)
    return CodecSettings(compression=comp, cipher=enc.method, keyring=keyring)


class Repository:
    """WAL objects, repository identity and (later) backups, over one Storage."""

    def __init__(self, storage: Storage, codec: CodecSettings | None = None, *, self_check: bool = False) -> None:
        self.storage = storage
        self._codec = codec
        self.self_check = self_check
        self._meta: RepoMeta | None = None

    @property
    def codec(self) -> CodecSettings:
        if self._codec is None:
            raise ConfigError("this operation needs the codec settings (compression, encryption)")
        return self._codec

    @property
    def keyring(self) -> Keyring | None:
        return self._codec.keyring if self._codec else None

    # -- identity -------------------------------------------------------------------------

    def meta(self) -> RepoMeta | None:
        """The repository's identity, or None if nothing was ever pushed."""
        if self._meta is None:
            try:
                data = self.storage.get(META_KEY)
            except NotFound:
                return None
            self._meta = RepoMeta.from_json(data, f"{self.storage.url}/{META_KEY}")
        return self._meta

    def require_meta(self) -> RepoMeta:
        """Identity of an existing repository; its absence is an error, never "not found"."""
        meta = self.meta()
        if meta is None:
            raise StorageError(
                f"no walkeeper repository at {self.storage.url} ({META_KEY} is missing)",
                hint="check repo in the configuration; a new repository is created by walkeeper init "
                     "(or the first wal-push)",
            )
        return meta

    @property
    def segment_size(self) -> int:
        meta = self.meta()
        return (meta.wal_segment_size if meta else None) or DEFAULT_SEGMENT_SIZE

    def ensure_identity(self, system_identifier: int | None, segment_size: int | None,
                        pg_version: int | None) -> RepoMeta:
        """Record the cluster on first use; refuse WAL of any other cluster afterwards.

        A repository initialised without a cluster (``walkeeper init`` with no data directory) or
        first written by a history file gets the missing facts from the first segment or backup.
        """
        key_id = self._codec.keyring.active_id if self._codec and self._codec.cipher != "none" and \
            self._codec.keyring else None
        meta = self.meta()
        if meta is not None and key_id and meta.key_id and key_id != meta.key_id:
            # Writing with an older key (the window after `key rotate`): re-read the repository
            # file each time, so a long-running pusher notices `rekey --retire` at its next push.
            self._meta = None
            meta = self.meta()
        if meta is None:
            fresh = RepoMeta(
                system_identifier=str(system_identifier) if system_identifier is not None else None,
                wal_segment_size=segment_size, pg_version=pg_version, key_id=key_id,
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            try:
                self.storage.put(META_KEY, fresh.to_json(), overwrite=False)
                self._meta = fresh
            except AlreadyExists:
                self._meta = None  # another process initialised it first: check against theirs
            meta = self.require_meta()
        self._check_identity(meta, system_identifier, segment_size, key_id)
        missing = {
            "system_identifier": str(system_identifier) if meta.system_identifier is None and
            system_identifier is not None else None,
            "wal_segment_size": segment_size if meta.wal_segment_size is None else None,
            "pg_version": pg_version if meta.pg_version is None else None,
            "key_id": key_id if meta.key_id is None else None,
        }
        missing = {k: v for k, v in missing.items() if v is not None}
        if missing:
            self.storage.put(META_KEY, replace(meta, **missing).to_json(), overwrite=True)
            self._meta = None  # read back: a concurrent writer of another cluster loses here, not silently
            meta = self.require_meta()
            self._check_identity(meta, system_identifier, segment_size, key_id)
        return meta

    def _check_identity(self, meta: RepoMeta, system_identifier: int | None, segment_size: int | None,
                        key_id: str | None) -> None:
        if system_identifier is not None and meta.system_identifier not in (None, str(system_identifier)):
            raise ForeignClusterError(
                f"this WAL comes from database system {system_identifier}, but repository "
                f"{self.storage.url} belongs to system {meta.system_identifier}; refusing to mix two clusters' WAL",
                hint="give each cluster its own repository (a new primary after pg_upgrade or initdb needs a new one)",
            )
        if segment_size is not None and meta.wal_segment_size not in (None, segment_size):
            raise ForeignClusterError(
                f"WAL segment size {segment_size} differs from the repository's {meta.wal_segment_size}"
            )
        if key_id and meta.key_id and not meta.writable_key(key_id):
            retired = any(k.get("key_id") == key_id and k.get("retired") for k in meta.key_history())
            raise KeyMaterialError(
                f"the configured key has id {key_id}, but repository {self.storage.url} is written with key "
                f"id {meta.key_id}" + (f" (key id {key_id} was retired)" if retired else ""),
                hint="configure the repository's key first in [encryption] key_files "
                     "(a new key is made active with walkeeper key rotate)",
            )

    # -- WAL --------------------------------------------------------------------------------

    def stored_sha256(self, key: str) -> str | None:
        """The plaintext checksum of a stored object without downloading it; None if absent."""
        try:
            info = self.storage.stat(key)
        except NotFound:
            return None
        if info.metadata.get("sha256"):
            return info.metadata["sha256"]
        with self.storage.open(key) as handle:
            header = read_header(handle.read)
        if header.sha256 is None:
            raise IntegrityError(f"stored object {key} records no checksum")
        return header.sha256

    def push_wal(self, name: WalName, data: bytes, *, look_first: bool = True,
                 before_store: Callable[[], None] | None = None) -> PushResult:
        """Store one WAL file durably; identical re-push is a no-op, different content is refused.

        ``look_first`` checks for a stored object before encoding (cheap re-pushes after a crash);
        without it the no-clobber store finds out (one request less per object on S3). Either way
        nothing stored is ever overwritten. ``before_store`` runs after encoding, just before the
        object becomes visible (the pusher waits there for earlier segments; raising stores nothing).
        """
        key = wal_key(name)
        new_sha = hashlib.sha256(data).hexdigest()
        existing = self.stored_sha256(key) if look_first else None
        if existing is not None:
            return self._duplicate(name, existing, new_sha, len(data))
        blob, sha = encode_bytes(self.codec, name.name, data, sha256=new_sha)
        if self.self_check:  # check what we wrote before claiming success: it must decode back to ``data``
            check_round_trip(self.keyring, blob, name=name.name, plain=data, sha256=new_sha)
        if before_store is not None:
            before_store()
        try:
            self.storage.put(key, blob, overwrite=False, metadata={"sha256": sha, "size": str(len(data))})
        except AlreadyExists:
            # A concurrent push (or a retried one) got there first: same rules as above.
            existing = self.stored_sha256(key)
            if existing is None:
                raise
            return self._duplicate(name, existing, new_sha, len(data))
        log.debug("archived %s: %d bytes stored as %d", name.name, len(data), len(blob))
        return PushResult(name.name, True, sha, len(data), len(blob))

    def _duplicate(self, name: WalName, existing: str, new_sha: str, size: int) -> PushResult:
        if existing != new_sha:
            raise ConflictError(
                f"{name.name} is already archived with different content (stored sha256 {existing}, "
                f"this file sha256 {new_sha}); the stored object was not touched",
                hint="two servers archiving into one repository, or a reused data directory? "
                     "check archive_command on every server",
            )
        log.info("%s is already archived with identical content", name.name)
        return PushResult(name.name, False, existing, size, 0)

    def fetch_wal(self, name: WalName, *, gap_wait: float = 0.0) -> bytes:
        """The verified plaintext of a WAL file; NotFound only when it is really not there.

        A missing segment while a later one of its timeline is stored is either a store still in
        flight (parallel pushes finish out of order) or a gap: see ``_missing_segment``.
        """
        try:
            blob = self.wal_object(name)
        except NotFound:
            blob = self._missing_segment(name, gap_wait)
        return self.decode_wal(name, blob)

    def wal_object(self, name: WalName) -> bytes:
        """The stored (encoded) object of a WAL file; NotFound when this repository does not hold it."""
        self.require_meta()
        return self.storage.get(wal_key(name))

    def decode_wal(self, name: WalName, blob: bytes, *, stored_as: str | None = None) -> bytes:
        """The verified plaintext of ``blob``, the stored object of ``name``; ``stored_as``: the name it was
        stored under when that is not ``name`` (a received partial: ``<segment>.partial``)."""
        meta = self.require_meta()
        stored = stored_as or name.name
        _header, data = decode_bytes(self.keyring, blob, expected_name=stored)
        if name.kind is WalKind.SEGMENT:
            size = meta.wal_segment_size or DEFAULT_SEGMENT_SIZE
            if len(data) != size:
                raise IntegrityError(f"{stored} decodes to {len(data)} bytes, expected a {size}-byte segment")
            try:
                check_segment(name, data)
            except InvalidWal as exc:
                raise IntegrityError(f"stored {stored} is not the segment its name says: {exc}") from None
        return data

    def _missing_segment(self, name: WalName, gap_wait: float) -> bytes:
        """The object of segment ``name`` if it turns up within ``gap_wait`` s; NotFound or GapError if not.

        Nothing later stored: "not found" at once (PostgreSQL asks for the next segment all the time).
        A later segment stored: a parallel pusher may have finished it before ``name``, so always wait
        (bounded) for ``name`` rather than judge "recently stored" by mtimes, which come from another
        clock (S3's, in whole seconds). Only a real gap pays the wait; it is never "not found".
        """
        later = self.later_segment(name) if name.kind is WalKind.SEGMENT else None
        if later is None:
            raise NotFound(f"{name.name} is not in the archive")
        return self.wait_for_missing(name, later, gap_wait)

    def wait_for_missing(self, name: WalName, later: str, gap_wait: float) -> bytes:
        """The object of ``name`` if it turns up within ``gap_wait`` s while ``later`` is stored; else GapError."""
        key = wal_key(name)
        log.info("%s is missing while %s is stored: waiting up to %g s for a store in flight",
                 name.name, later, gap_wait)
        deadline = time.monotonic() + gap_wait
        poll = GAP_POLL
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(poll, left))
            poll = min(poll * 1.5, GAP_POLL_MAX)  # a real gap on S3: ~15 requests in 10 s, not 100
            try:
                return self.storage.get(key)
            except NotFound:
                continue
        raise GapError(
            f"{name.name} is missing from the archive, but later WAL of timeline {name.timeline} "
            f"exists ({later}) and it did not appear within {gap_wait:g} s; stopping recovery instead of "
            f"ending it early",
            hint="put the missing segment back into the repository, or choose a recovery target before it "
                 "(if the primary stores segments more slowly than that, raise [restore] gap_wait)",
        )

    def later_segment(self, name: WalName) -> str | None:
        """The first archived segment of the same timeline after ``name``, if any."""
        prefix = f"{WAL_PREFIX}{name.timeline:08X}/"
        size = self.segment_size
        wanted = segno_of(name, size)
        for info in self.storage.list(prefix, start_after=wal_key(name)):
            try:
                other = parse_wal_name(info.key.rsplit("/", 1)[1])
            except InvalidName:
                continue
            if other.is_segment_like and other.segno(size) > wanted:
                return other.name
        return None

    def iter_wal(self) -> Iterator[tuple[WalName, int, float]]:
        """Every archived WAL file with its stored size and mtime, in name order."""
        for info in self.storage.list(WAL_PREFIX):
            try:
                name = parse_wal_name(info.key.rsplit("/", 1)[1])
            except InvalidName:
                log.warning("ignoring unexpected object %s", info.key)
                continue
            yield name, info.size, info.mtime

    def timelines(self) -> list[TimelineSummary]:
        """Per-timeline summary: first/last segment, count, gaps."""
        size = self.segment_size
        summaries: dict[int, TimelineSummary] = {}
        segnos: dict[int, list[tuple[int, str]]] = {}
        for name, stored, mtime in self.iter_wal():
            summary = summaries.setdefault(name.timeline, TimelineSummary(name.timeline))
            summary.stored_bytes += stored
            summary.newest_mtime = max(summary.newest_mtime or mtime, mtime)
            if name.kind is WalKind.SEGMENT:
                segnos.setdefault(name.timeline, []).append((name.segno(size), name.name))
            elif name.kind is WalKind.PARTIAL:
                summary.partial.append(name.name)
            elif name.kind is WalKind.BACKUP:
                summary.backup_labels.append(name.name)
            else:
                summary.history = True
        for tli, items in segnos.items():
            items.sort()
            summary = summaries[tli]
            summary.first, summary.last, summary.count = items[0][1], items[-1][1], len(items)
            for (prev, _), (cur, _) in itertools.pairwise(items):
                if cur > prev + 1:
                    summary.gaps.append((segment_name(tli, prev + 1, size), segment_name(tli, cur - 1, size)))
        return [summaries[t] for t in sorted(summaries)]


def open_repository(config: Config, *, codec: bool = True) -> Repository:
    """The repository named by ``config``; ``codec=False`` for commands that only list names."""
    storage = open_storage(config.repo, config)
    return Repository(storage, build_codec(config) if codec else None, self_check=config.archive.self_check)

"""Copy objects from one repository into another, verified, streaming, never overwriting.

Each object is read once as a stream and decoded as it passes (authentication, decompression,
plaintext SHA-256 against what the source records), so nothing unverified is ever published: the
destination's put consumes the stream to its end before the object becomes visible, and the check
runs before the last bytes are handed over. When the destination would write the object exactly as
it is stored (same cipher, same key id, same compression) the stored bytes are copied as they are;
otherwise the plaintext is encoded again with the destination's settings. Memory stays bounded by
a few frames whatever the object's size.

An object already in the destination is compared by plaintext SHA-256 (the storage's metadata, the
header, or else a full decode): identical is skipped, different is refused as wal-push refuses it.
Backups and dumps are listed last, their metadata rewritten with the destination's stored sizes
(every other field, including ones this walkeeper does not know, carried over unchanged).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from walkeeper.codec import CodecSettings, Decoder, Encoder, decode_bytes, encode_bytes, read_header
from walkeeper.core.errors import (
    AlreadyExists,
    ConflictError,
    ForeignClusterError,
    IntegrityError,
    LockedError,
    NotFound,
)
from walkeeper.repo.catalog import BackupMeta, DumpMeta
from walkeeper.repo.copyplan import (
    COPY,
    LIST_BACKUP,
    LIST_DUMP,
    SAME_BACKUP,
    SAME_DUMP,
    UNUSABLE,
    VERIFY,
    Action,
)
from walkeeper.repo.layout import BACKUP_META, DUMP_META, WAL_PREFIX, backup_key, dump_key
from walkeeper.repo.repository import RepoMeta, Repository
from walkeeper.repo.writers import Reservation, Writer, here, judge, marker_key, process_start, read_writer

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


def object_name(key: str) -> str:
    """The name an object's header carries: the file name for WAL, the key for everything else."""
    return key.rsplit("/", 1)[1] if key.startswith(WAL_PREFIX) else key


def same_encoding(stored: tuple[str, str | None, str], wanted: tuple[str, str | None, str]) -> bool:
    """Whether the destination would store an object as it is stored, each given as (cipher, key id,
    compression): then its bytes are copied unchanged. Unencrypted objects have no key id to compare."""
    if stored[0] != wanted[0] or stored[2] != wanted[2]:
        return False
    return stored[0] == "none" or (wanted[1] is not None and stored[1] == wanted[1])


def encoding_of(settings: CodecSettings) -> tuple[str, str | None, str]:
    key_id = settings.keyring.active_id if settings.keyring is not None and settings.cipher != "none" else None
    return settings.cipher, key_id, settings.compression.method


def check_identity(source: RepoMeta, dest: RepoMeta | None, source_url: str, dest_url: str) -> None:
    """Refuse to mix two clusters' archives: system identifier and segment size must agree."""
    if dest is None:
        return
    if None not in (source.system_identifier, dest.system_identifier) and \
            source.system_identifier != dest.system_identifier:
        raise ForeignClusterError(
            f"{source_url} belongs to database system {source.system_identifier}, {dest_url} to database "
            f"system {dest.system_identifier}; refusing to copy one cluster's archive into another's",
            hint="copy into an empty repository or one of the same cluster")
    if None not in (source.wal_segment_size, dest.wal_segment_size) and \
            source.wal_segment_size != dest.wal_segment_size:
        raise ForeignClusterError(
            f"{source_url} holds {source.wal_segment_size}-byte WAL segments, {dest_url} "
            f"{dest.wal_segment_size}-byte ones; refusing to copy", hint="copy into an empty repository")


class _Tap:
    """A reader that replays ``prefix`` first, counts what it reads, and keeps it when ``keep`` is set."""

    def __init__(self, read: Callable[[int], bytes], prefix: bytes, count: Callable[[int], None]) -> None:
        self._read = read
        self._prefix = prefix
        self._count = count
        self.keep = False
        self.passed = bytearray()

    def read(self, size: int) -> bytes:
        if self._prefix:
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
        else:
            chunk = self._read(size)
            self._count(len(chunk))
        if self.keep:
            self.passed += chunk
        return chunk


def _normal(doc: dict[str, Any], listed: str) -> dict[str, Any]:
    """A backup's or dump's metadata without what depends on how the destination stores it."""
    out = {k: v for k, v in doc.items() if k != "stored_size"}
    out[listed] = [{k: v for k, v in o.items() if k != "stored_size"} for o in doc.get(listed, [])
                   if isinstance(o, dict)]
    return out


@dataclass
class CopyReport:
    source: str
    destination: str
    dry_run: bool
    copied: int = 0
    copied_bytes: int = 0  # bytes stored in the destination
    reencoded: int = 0  # of the copied, how many were encoded again (other key or compression)
    skipped: int = 0  # present and identical
    backups_listed: list[str] = field(default_factory=list)
    backups_present: list[str] = field(default_factory=list)
    dumps_listed: list[str] = field(default_factory=list)
    dumps_present: list[str] = field(default_factory=list)
    unusable: list[dict[str, str]] = field(default_factory=list)  # {"backup", "reason"}
    to_copy: int = 0  # planned (dry run: what would be copied)
    to_copy_bytes: int = 0
    to_verify: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class Copier:
    """Carries out a plan (walkeeper/repo/copyplan.py) from ``source`` into ``dest``."""

    def __init__(self, source: Repository, dest: Repository, *, backup_docs: dict[str, dict[str, Any]],
                 dump_docs: dict[str, dict[str, Any]], expected: dict[str, str],
                 count: Callable[[int], None] = lambda n: None) -> None:
        self.source = source
        self.dest = dest
        self.backup_docs = backup_docs  # id -> the source's backup.json as stored (every field)
        self.dump_docs = dump_docs
        self.expected = expected  # key -> plaintext sha256 the source's metadata records (tars, dump streams)
        self.count = count
        self.written: dict[str, int] = {}  # key -> stored size in the destination
        self.reencoded: set[str] = set()
        self._reservation: Reservation | None = None

    # -- identity --------------------------------------------------------------------------------

    def ensure_identity(self, *, dry_run: bool) -> RepoMeta:
        source = self.source.require_meta()
        dest = self.dest.meta()
        check_identity(source, dest, self.source.storage.url, self.dest.storage.url)
        if not dry_run:
            sysid = int(source.system_identifier) if source.system_identifier else None
            self.dest.ensure_identity(sysid, source.wal_segment_size, source.pg_version)
        return source

    # -- plaintext checksums ---------------------------------------------------------------------

    def plain_sha256(self, repo: Repository, key: str) -> str:
        """The plaintext SHA-256 of a stored object: from the storage's metadata, its header, or a decode."""
        info = repo.storage.stat(key)
        if info.metadata.get("sha256"):
            return info.metadata["sha256"]
        with repo.storage.open(key) as handle:
            header = read_header(handle.read)
        if header.sha256:
            return header.sha256
        decoder = Decoder(repo.keyring, expected_name=object_name(key))
        with repo.storage.open(key) as handle:
            for _plain in decoder.decode(handle.read):
                pass
        assert decoder.sha256 is not None
        return decoder.sha256

    def _compare(self, key: str) -> None:
        """A destination object is skipped when it holds the same plaintext; refused when not."""
        want = self.expected.get(key) or self.plain_sha256(self.source, key)
        have = self.plain_sha256(self.dest, key)
        if have != want:
            raise ConflictError(
                f"{key} is already in {self.dest.storage.url} with different content (sha256 {have}, "
                f"the source's {want}); nothing was overwritten",
                hint="two clusters or two histories in one repository? compare both with walkeeper verify")

    # -- one object ------------------------------------------------------------------------------

    def _settings(self, key: str) -> CodecSettings:
        """Data (WAL, backup tars, dump streams) as the destination writes data; the rest as metadata."""
        data = key.startswith((WAL_PREFIX, "backups/")) or (key.startswith("dumps/") and not key.endswith("/reserved"))
        return self.dest.codec if data else self.dest.codec.for_metadata()

    def _stream(self, key: str, handle: Any) -> tuple[Iterator[bytes], dict[str, str] | None, bool]:
        """(the destination's bytes, the put's metadata, re-encoded?) for one source object."""
        header = read_header(handle.read)
        tap = _Tap(handle.read, header.raw, self.count)
        want = self.expected.get(key)
        if want and header.sha256 and want != header.sha256:
            raise IntegrityError(f"{key}: its header records sha256 {header.sha256}, its metadata {want}")
        want = want or header.sha256
        decoder = Decoder(self.source.keyring, expected_name=object_name(key))
        metadata = {"sha256": want, **({"size": str(header.size)} if header.size is not None else {})} \
            if want else None

        def verified(plain: Iterator[bytes]) -> Iterator[bytes]:
            yield from plain
            if want and decoder.sha256 != want:
                raise IntegrityError(f"{key} in {self.source.storage.url} decodes to sha256 {decoder.sha256}, "
                                     f"{want} is recorded")

        settings = self._settings(key)
        if same_encoding((header.cipher, header.key_id, header.compression), encoding_of(settings)):
            def raw() -> Iterator[bytes]:
                tap.keep = True
                for _plain in verified(decoder.decode(tap.read)):
                    if len(tap.passed) >= CHUNK:
                        yield bytes(tap.passed)
                        tap.passed.clear()
                yield bytes(tap.passed)  # the trailer: only after the whole object verified

            return raw(), metadata, False
        encoder = Encoder(settings, header.name, sha256=want, size=header.size, extra=header.extra or None)
        return encoder.encode_chunks(verified(decoder.decode(tap.read))), metadata, True

    def copy_object(self, key: str) -> bool:
        """Copy one object; False when an identical one was already there."""
        log.debug("copying %s", key)
        with self.source.storage.open(key) as handle:
            chunks, metadata, reencoded = self._stream(key, handle)
            size = 0

            def counted() -> Iterator[bytes]:
                nonlocal size
                for chunk in chunks:
                    size += len(chunk)
                    yield chunk

            try:
                if self._reservation is not None and key.startswith(f"backups/{self._reservation.backup_id}/"):
                    self._reservation.check()
                self.dest.storage.put(key, counted(), overwrite=False, metadata=metadata)
            except AlreadyExists:  # stored meanwhile (a pusher archiving into both): same rules
                self._compare(key)
                return False
        self.written[key] = size
        if reencoded:
            self.reencoded.add(key)
        log.info("copied %s (%d bytes%s)", key, size, ", re-encoded" if reencoded else "")
        return True

    # -- backups and dumps -----------------------------------------------------------------------

    def reserve(self, backup_id: str) -> None:
        """Hold the backup's id in the destination while copying it (a writer marker, as backup does),
        taking over the marker of an earlier copy that was killed; a living writer's is refused."""
        if self._reservation is not None and self._reservation.backup_id == backup_id:
            return
        self.release()
        storage = self.dest.storage
        machine = here()
        writer = Writer(backup_id, machine.host, os.getpid(), datetime.now(UTC).isoformat(timespec="seconds"),
                        machine.boot_id, process_start(os.getpid()) or None, secrets.token_hex(8))
        try:
            storage.put(marker_key(backup_id), writer.to_json(), overwrite=False)
        except AlreadyExists:
            with contextlib.suppress(NotFound):
                existing = read_writer(storage, backup_id)
                alive, why = judge(existing, storage.stat(marker_key(backup_id)).mtime, time.time(), machine)
                if alive:
                    raise LockedError(f"backup {backup_id} in {storage.url} is being written by "
                                      f"{existing.describe()} ({why})",
                                      hint="wait for that copy or backup to end, then copy again") from None
                log.info("taking over backup %s in %s from a writer that is gone (%s)", backup_id, storage.url, why)
            storage.put(marker_key(backup_id), writer.to_json(), overwrite=True)
        if read_writer(storage, backup_id) != writer:
            raise LockedError(f"backup {backup_id} in {storage.url} was reserved by another writer meanwhile")
        self._reservation = Reservation(storage, writer)
        self._reservation.start_heartbeat()

    def release(self) -> None:
        if self._reservation is not None:
            self._reservation.stop_heartbeat()
            self._reservation = None

    def _stored_size(self, key: str) -> int:
        return self.written[key] if key in self.written else self.dest.storage.stat(key).size

    def _publish(self, key: str, doc: dict[str, Any], listed: str) -> dict[str, Any]:
        items = [{**o, "stored_size": self._stored_size(o["key"])} for o in doc.get(listed, [])]
        new = {**doc, listed: items, "stored_size": sum(o["stored_size"] for o in items)}
        data = json.dumps(new, indent=2, sort_keys=True).encode() + b"\n"
        blob, _sha = encode_bytes(self.dest.codec.for_metadata(), key, data)
        self.dest.storage.put(key, blob, overwrite=False)
        return new

    def _read_doc(self, repo: Repository, key: str) -> dict[str, Any]:
        _header, data = decode_bytes(repo.keyring, repo.storage.get(key), expected_name=key)
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise IntegrityError(f"{key} in {repo.storage.url} is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise IntegrityError(f"{key} in {repo.storage.url} is not a JSON object")
        return doc

    def same_listed(self, kind: str, item_id: str) -> None:
        """A backup or dump the destination lists already must describe the same data."""
        key, listed, docs = (backup_key(item_id, BACKUP_META), "objects", self.backup_docs) if kind == "backup" \
            else (dump_key(item_id, DUMP_META), "items", self.dump_docs)
        if _normal(self._read_doc(self.dest, key), listed) != _normal(docs[item_id], listed):
            raise ConflictError(f"{kind} {item_id} in {self.dest.storage.url} differs from the one in "
                                f"{self.source.storage.url}; nothing was overwritten",
                                hint="two clusters in one repository? compare them with walkeeper backups --json")

    def list_backup(self, backup_id: str) -> None:
        self.reserve(backup_id)
        assert self._reservation is not None
        self._reservation.check()
        key = backup_key(backup_id, BACKUP_META)
        written = self._publish(key, self.backup_docs[backup_id], "objects")
        readback = self._read_doc(self.dest, key)
        BackupMeta.from_dict(readback, key)
        if readback != written:
            raise IntegrityError(f"backup {backup_id} in {self.dest.storage.url}: its metadata reads back "
                                 "differently from what was written")
        self.release()
        log.info("listed backup %s in %s", backup_id, self.dest.storage.url)

    def list_dump(self, dump_id: str) -> None:
        key = dump_key(dump_id, DUMP_META)
        written = self._publish(key, self.dump_docs[dump_id], "items")
        DumpMeta.from_dict(self._read_doc(self.dest, key), key)
        if self._read_doc(self.dest, key) != written:
            raise IntegrityError(f"dump {dump_id} in {self.dest.storage.url}: its metadata reads back differently")
        log.info("listed dump %s in %s", dump_id, self.dest.storage.url)

    # -- the plan --------------------------------------------------------------------------------

    def run(self, actions: list[Action], report: CopyReport, *, dry_run: bool,
            sizes: dict[str, int]) -> CopyReport:
        start = time.monotonic()
        try:
            for action in actions:
                self._step(action, report, dry_run=dry_run, sizes=sizes)
        finally:
            self.release()
            report.seconds = round(time.monotonic() - start, 3)
        return report

    def _step(self, action: Action, report: CopyReport, *, dry_run: bool, sizes: dict[str, int]) -> None:
        op = action.op
        if op == UNUSABLE:
            report.unusable.append({"backup": action.key, "reason": action.detail})
            log.info("backup %s is not copied: %s", action.key, action.detail)  # the command ends naming it
        elif op == SAME_BACKUP:
            self.same_listed("backup", action.key)
            report.backups_present.append(action.key)
        elif op == SAME_DUMP:
            self.same_listed("dump", action.key)
            report.dumps_present.append(action.key)
        elif op == VERIFY:
            report.to_verify += 1
            self._compare(action.key)
            report.skipped += 1
        elif op == COPY:
            report.to_copy += 1
            report.to_copy_bytes += sizes.get(action.key, 0)
            if dry_run:
                return
            if action.kind == "backup" and action.owner is not None:
                self.reserve(action.owner)
            if self.copy_object(action.key):
                report.copied += 1
                report.copied_bytes += self.written[action.key]
                report.reencoded += action.key in self.reencoded
            else:
                report.skipped += 1
        elif op == LIST_BACKUP:
            if not dry_run:
                self.list_backup(action.key)
            report.backups_listed.append(action.key)
        elif op == LIST_DUMP:
            if not dry_run:
                self.list_dump(action.key)
            report.dumps_listed.append(action.key)

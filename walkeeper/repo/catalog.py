"""Backups and restore points in the repository, on top of Repository (WAL layout untouched).

Layout (keys)::

    backups/<ID>/<TAR NAME>.tar         one object per tar of a base backup (base.tar, <oid>.tar)
    backups/<ID>/backup_manifest        the backup's backup_manifest, stored alone so that an incremental
                                        backup against it does not read the whole backup
    backups/<ID>/backup.json            the backup's metadata, written LAST: a backup without it
                                        is not listed and cannot be restored (an interrupted one)
    backups/<ID>/writer.json            written FIRST, plain JSON: reserves the id and names the
                                        writer (walkeeper/repo/writers.py)
    restore-points/<TIME>-<LSN>.json    one object per restore point
    dumps/<ID>/reserved                 written first with no-clobber: two dumps started in the same
                                        second cannot take the same id
    dumps/<ID>/db-<N>.dump              one pg_dump -Fc stream per database of the dump (set)
    dumps/<ID>/globals.sql              pg_dumpall --globals-only (dump --all only)
    dumps/<ID>/dump.json                the dump's metadata, written LAST: a dump without it is not
                                        listed (a killed dump leaves only objects expire removes)
    restore-tests/<ID>.json             one result of walkeeper restore-test (the evidence a backup restores)

Every object here goes through the codec like WAL does (compressed, encrypted, authenticated,
its key bound into the header), so metadata cannot be edited or swapped unnoticed either.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from typing import Any

from walkeeper.codec import decode_bytes, encode_bytes
from walkeeper.core.chronology import newest, oldest_first
from walkeeper.core.errors import IntegrityError, InvalidName, NotFound, RefusedError, WalkeeperError
from walkeeper.repo.layout import (
    BACKUP_ID_RE,
    BACKUP_MANIFEST,
    BACKUP_META,
    BACKUP_PREFIX,
    DUMP_META,
    DUMP_PREFIX,
    DUMP_RESERVED,
    RESTORE_POINT_KEY_RE,
    RESTORE_POINT_PREFIX,
    RESTORE_TEST_ID_RE,
    RESTORE_TEST_PREFIX,
    backup_key,
    dump_key,
    validate_backup_id,
)
from walkeeper.repo.records import (  # noqa: F401 - the records are part of the catalog's names
    BackupMeta,
    BackupObject,
    DumpItem,
    DumpMeta,
    RestorePoint,
    RestoreTestRecord,
)
from walkeeper.repo.repository import Repository

log = logging.getLogger(__name__)



class Catalog:
    """Backup and restore point objects of one repository."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    # -- encoded JSON objects ----------------------------------------------------------------

    def _put_json(self, key: str, doc: bytes, *, overwrite: bool = False) -> None:
        blob, _sha = encode_bytes(self.repo.codec.for_metadata(), key, doc)
        self.repo.storage.put(key, blob, overwrite=overwrite)

    def document(self, key: str) -> dict[str, Any]:
        """A stored JSON object (backup.json, dump.json ...), decoded and verified, with every field."""
        blob = self.repo.storage.get(key)
        _header, data = decode_bytes(self.repo.keyring, blob, expected_name=key)
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(f"{key} in {self.repo.storage.url} is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise IntegrityError(f"{key} in {self.repo.storage.url} is not a JSON object")
        return doc

    # -- backups -------------------------------------------------------------------------------

    def save_backup(self, meta: BackupMeta) -> None:
        """Publish a backup: its metadata is the last object written."""
        self._put_json(backup_key(meta.id, BACKUP_META), meta.to_json())

    def save_manifest(self, backup_id: str, data: bytes, put: Callable[[str, bytes], None]) -> tuple[str, str]:
        """Encode a backup's ``backup_manifest`` and store it with ``put`` (the reservation's); (key, sha256)."""
        key = backup_key(backup_id, BACKUP_MANIFEST)
        blob, sha = encode_bytes(self.repo.codec, key, data)
        put(key, blob)
        return key, sha

    def manifest(self, meta: BackupMeta) -> bytes | None:
        """The separately stored ``backup_manifest`` of a backup, checked against its recorded checksum;
        None for backups taken before walkeeper stored it alone, or without that object (postgres/incremental.py
        then reads the base tar)."""
        if meta.manifest_key is None:
            return None
        try:
            blob = self.repo.storage.get(meta.manifest_key)
        except NotFound:  # e.g. a copy that took only the tars: the base tar holds it too
            log.warning("%s is missing: reading backup %s's base tar for its backup_manifest", meta.manifest_key,
                        meta.id)
            return None
        _header, data = decode_bytes(self.repo.keyring, blob, expected_name=meta.manifest_key)
        if meta.manifest_sha256 is not None and hashlib.sha256(data).hexdigest() != meta.manifest_sha256:
            raise IntegrityError(f"{meta.manifest_key} does not match the checksum backup {meta.id} recorded")
        return data

    def backup_ids(self) -> list[str]:
        """Ids with a metadata object (complete backups), by id: the host clock's order, not an age order."""
        ids = []
        for info in self.repo.storage.list(BACKUP_PREFIX):
            parts = info.key.split("/")
            if len(parts) == 3 and parts[2] == BACKUP_META and BACKUP_ID_RE.match(parts[1]):
                ids.append(parts[1])
        return sorted(ids)

    def incomplete_backup_ids(self) -> list[str]:
        """Ids with data objects but no metadata: interrupted backups (not usable)."""
        seen: dict[str, bool] = {}
        for info in self.repo.storage.list(BACKUP_PREFIX):
            parts = info.key.split("/")
            if len(parts) == 3 and BACKUP_ID_RE.match(parts[1]):
                seen[parts[1]] = seen.get(parts[1], False) or parts[2] == BACKUP_META
        return sorted(i for i, complete in seen.items() if not complete)

    def _metadata(self, cls: Any, key: str, what: str, wanted: str) -> Any:
        """A backup's or dump's metadata object, which must describe ``wanted`` (a swapped object is refused)."""
        try:
            doc = self.document(key)
        except NotFound:
            raise NotFound(f"no {what} {wanted} in {self.repo.storage.url}",
                           hint=f"walkeeper {what}s lists them") from None
        meta = cls.from_dict(doc, key)
        if meta.id != wanted:
            raise IntegrityError(f"{key} describes {what} {meta.id}: swapped metadata")
        return meta

    def backup(self, backup_id: str) -> BackupMeta:
        return self._metadata(BackupMeta, backup_key(backup_id, BACKUP_META), "backup", backup_id)

    def backups(self) -> list[BackupMeta]:
        """Every complete backup, oldest first by WAL position (walkeeper.core.chronology); unreadable
        metadata is an error, never skipped."""
        return oldest_first(self.backup(i) for i in self.backup_ids())

    def resolve(self, backup_id: str | None) -> BackupMeta:
        """``None`` or "latest": the newest backup by WAL position, whatever the clocks said."""
        if backup_id in (None, "latest"):
            latest = newest(self.backups())
            if latest is None:
                raise RefusedError(f"no backups in {self.repo.storage.url}", hint="take one with walkeeper backup")
            return latest
        return self.backup(backup_id)

    def new_backup_id(self, stamp: str, skip: Iterable[str] = ()) -> str:
        """An id no listed backup uses for a backup started at ``stamp`` (YYYYMMDDTHHMMSSZ).

        A candidate only: walkeeper/repo/writers.py reserves it atomically (and asks again, with the
        ids it lost to another backup in ``skip``).
        """
        taken = {info.key.split("/")[1] for info in self.repo.storage.list(BACKUP_PREFIX)
                 if info.key.count("/") >= 2} | set(skip)
        candidate = stamp
        n = 1
        while candidate in taken:
            candidate = f"{stamp}-{n}"
            n += 1
        return validate_backup_id(candidate)

    def delete_backup_objects(self, backup_id: str) -> None:
        keys = [info.key for info in self.repo.storage.list(f"{BACKUP_PREFIX}{validate_backup_id(backup_id)}/")]
        self.repo.storage.delete(keys)

    # -- dumps -----------------------------------------------------------------------------------

    def reserve_dump_id(self, stamp: str) -> str:
        """A dump id for ``stamp`` (YYYYMMDDTHHMMSSZ), claimed by a no-clobber marker object, so that
        concurrent dumps (several hosts, one repository) never share an id."""
        from walkeeper.core.errors import AlreadyExists

        n = 0
        while True:
            candidate = validate_backup_id(stamp if n == 0 else f"{stamp}-{n}")
            try:
                self._put_json(dump_key(candidate, DUMP_RESERVED), b"{}\n", overwrite=False)
                return candidate
            except AlreadyExists:
                n += 1

    def save_dump(self, meta: DumpMeta) -> None:
        """Publish a dump: its metadata is the last object written."""
        self._put_json(dump_key(meta.id, DUMP_META), meta.to_json(), overwrite=False)

    def _dump_keys(self) -> dict[str, bool]:
        seen: dict[str, bool] = {}
        for info in self.repo.storage.list(DUMP_PREFIX):
            parts = info.key.split("/")
            if len(parts) == 3 and BACKUP_ID_RE.match(parts[1]):
                seen[parts[1]] = seen.get(parts[1], False) or parts[2] == DUMP_META
        return seen

    def dump_ids(self) -> list[str]:
        """Ids of complete dumps (with metadata), oldest first."""
        return sorted(i for i, complete in self._dump_keys().items() if complete)

    def incomplete_dump_ids(self) -> list[str]:
        """Ids with objects but no metadata: dumps in progress or killed (never listed as dumps)."""
        return sorted(i for i, complete in self._dump_keys().items() if not complete)

    def dump(self, dump_id: str) -> DumpMeta:
        return self._metadata(DumpMeta, dump_key(dump_id, DUMP_META), "dump", dump_id)

    def dumps(self) -> list[DumpMeta]:
        """Every complete dump, oldest first (by id: the time it started)."""
        return [self.dump(i) for i in self.dump_ids()]

    def resolve_dump(self, dump_id: str | None) -> DumpMeta:
        if dump_id in (None, "latest"):
            ids = self.dump_ids()
            if not ids:
                raise RefusedError(f"no dumps in {self.repo.storage.url}", hint="take one with walkeeper dump")
            return self.dump(ids[-1])
        return self.dump(validate_backup_id(dump_id))

    def newest_dumps(self) -> dict[str, DumpMeta]:
        """The newest complete dump holding each database (for status, check and metrics)."""
        newest: dict[str, DumpMeta] = {}
        for dump in self.dumps():  # oldest first: later ones replace earlier ones
            for database in dump.databases:
                newest[database] = dump
        return newest

    def delete_dump_objects(self, dump_id: str) -> list[str]:
        """Remove a dump's objects, its metadata first (so that it is never listed half-deleted)."""
        keys = [info.key for info in self.repo.storage.list(f"{DUMP_PREFIX}{validate_backup_id(dump_id)}/")]
        keys.sort(key=lambda k: not k.endswith("/" + DUMP_META))
        for key in keys[:1]:
            self.repo.storage.delete([key])
        self.repo.storage.delete(keys[1:])
        return keys

    # -- restore points ---------------------------------------------------------------------------

    def save_restore_point(self, point: RestorePoint, stamp: str, lsn: int) -> str:
        key = f"{RESTORE_POINT_PREFIX}{stamp}-{lsn:016X}.json"
        self._put_json(key, json.dumps(asdict(point), indent=2, sort_keys=True).encode() + b"\n")
        return key

    def restore_points(self) -> Iterator[RestorePoint]:
        for info in self.repo.storage.list(RESTORE_POINT_PREFIX):
            name = info.key[len(RESTORE_POINT_PREFIX):]
            if not RESTORE_POINT_KEY_RE.match(name):
                log.warning("ignoring unexpected object %s", info.key)
                continue
            doc = self.document(info.key)
            try:
                yield RestorePoint(**doc)
            except TypeError as exc:
                raise WalkeeperError(f"{info.key}: not a valid restore point ({exc})") from None

    # -- restore tests ----------------------------------------------------------------------------

    def save_restore_test(self, record: RestoreTestRecord) -> str:
        """The only object restore-test writes; a new id each run, never overwritten."""
        if not RESTORE_TEST_ID_RE.match(record.id):
            raise InvalidName(f"not a restore test id: {record.id!r}")
        key = f"{RESTORE_TEST_PREFIX}{record.id}.json"
        self._put_json(key, record.to_json())
        return key

    def restore_test_ids(self) -> list[str]:
        """Oldest first (ids start with the UTC time of the run)."""
        ids = []
        for info in self.repo.storage.list(RESTORE_TEST_PREFIX):
            name = info.key[len(RESTORE_TEST_PREFIX):]
            if name.endswith(".json") and RESTORE_TEST_ID_RE.match(name[:-5]):
                ids.append(name[:-5])
        return sorted(ids)

    def restore_test(self, test_id: str) -> RestoreTestRecord:
        key = f"{RESTORE_TEST_PREFIX}{test_id}.json"
        record = RestoreTestRecord.from_dict(self.document(key), key)
        if record.id != test_id:
            raise IntegrityError(f"{key} describes restore test {record.id}: swapped record")
        return record

    def restore_tests(self) -> list[RestoreTestRecord]:
        return [self.restore_test(i) for i in self.restore_test_ids()]

    def last_restore_tests(self) -> tuple[RestoreTestRecord | None, RestoreTestRecord | None]:
        """The newest restore test and the newest successful one (reads from the newest backwards)."""
        last = last_ok = None
        for test_id in reversed(self.restore_test_ids()):
            record = self.restore_test(test_id)
            last = last or record
            if record.ok:
                last_ok = record
                break
        return last, last_ok

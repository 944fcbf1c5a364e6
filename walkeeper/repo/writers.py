"""Who writes a backup: its reservation marker, its heartbeat, and whether that writer still lives.

A backup reserves its id by storing ``backups/<ID>/writer.json`` with ``overwrite=False`` (atomic on
every backend: ``link`` on local and ssh, ``If-None-Match`` on S3) before it writes anything else, so
two backups started in the same second never share an id: the second one takes ``<ID>-1``. The marker
names the writer (host, pid, the process's start time, the boot id, since when) and is rewritten every
HEARTBEAT seconds while the backup runs. It stays with the finished backup (an expiring backup loses it
last), so an id is never handed out twice.

Whether a writer lives decides what expire and the next backup may remove. On the writer's host the
process table answers (gone, its pid now another process, or the host rebooted: dead); from another
host, a marker not refreshed for STALE_AFTER seconds is dead. A running backup's objects, temporary
objects and uploads are never removed; a dead one's are. A failing backup removes only the keys it
wrote itself (tracked here), then its marker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from walkeeper.core.errors import AlreadyExists, IntegrityError, LockedError, NotFound, WalkeeperError
from walkeeper.repo.catalog import BackupMeta, Catalog
from walkeeper.repo.layout import (
    BACKUP_ID_RE,
    BACKUP_META,
    BACKUP_PREFIX,
    WRITER_NAME,
    backup_key,
)
from walkeeper.storage.base import Leftover, ObjectInfo, Source, Storage

log = logging.getLogger(__name__)

HEARTBEAT = 60.0  # seconds between two refreshes of a running backup's marker
STALE_AFTER = 15 * 60.0  # a marker of another host not refreshed for this long belongs to a dead writer
TEMP_SAFE_AGE = 24 * 3600.0  # a temp object no marker speaks for (e.g. of a killed wal-push) is dead after this
DIR_GRACE = 600.0  # an empty backup directory younger than this may be a backup about to write its marker


def marker_key(backup_id: str) -> str:
    return backup_key(backup_id, WRITER_NAME)


# -- the marker and its judgement (pure) -------------------------------------------------------------

@dataclass(frozen=True)
class Writer:
    backup_id: str
    host: str
    pid: int
    since: str  # ISO 8601 UTC
    boot_id: str | None = None
    pid_start: str | None = None  # /proc/<pid>/stat start time: tells a reused pid from the writer
    token: str = ""  # random: tells this writer's marker from another's

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Writer:
        try:
            doc = json.loads(data)
            return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"{where} is not a valid backup writer marker ({exc})") from None

    def describe(self) -> str:
        return f"pid {self.pid}, host {self.host}, since {self.since[:19].replace('T', ' ')} UTC"


@dataclass(frozen=True)
class Here:
    """What this machine can tell about processes (None/empty where it cannot)."""

    host: str
    boot_id: str | None
    process_start: Callable[[int], str | None]  # None: no such process


@dataclass(frozen=True)
class WriterState:
    backup_id: str
    writer: Writer | None  # None: the marker could not be read
    refreshed: float  # the marker's mtime: its last heartbeat
    alive: bool
    why: str

    def describe(self) -> str:
        who = self.writer.describe() if self.writer else "unreadable marker"
        return f"{who}; {self.why}"


def judge(writer: Writer | None, refreshed: float, now: float, here: Here) -> tuple[bool, str]:
    """Whether the writer of a marker still runs, and why we think so."""
    if writer is not None and writer.host == here.host and writer.boot_id and here.boot_id:
        if writer.boot_id != here.boot_id:
            return False, "its host has rebooted since"
        start = here.process_start(writer.pid)
        if start is None:
            return False, f"process {writer.pid} is gone"
        if writer.pid_start and start != writer.pid_start:
            return False, f"process {writer.pid} is gone (the pid now belongs to another process)"
        return True, f"process {writer.pid} is running"
    age = now - refreshed
    if age > STALE_AFTER:
        return False, f"its marker was last refreshed {age:.0f}s ago (more than {STALE_AFTER:.0f}s)"
    return True, f"its marker was refreshed {age:.0f}s ago"


def leftover_is_dead(item: Leftover, now: float, complete: set[str], states: dict[str, WriterState],
                     removed: Iterable[str] = ()) -> bool:
    """Whether a leftover belongs to no living writer and may be removed.

    In a backup's directory the backup decides: complete (no put in flight), or its writer judged dead.
    Without a marker (older walkeeper, a foreign tool, a killed wal-push) only age tells: TEMP_SAFE_AGE.
    An empty backup directory goes once it is DIR_GRACE old, or at once if its backup was just removed.
    """
    parts = item.directory.split("/")
    backup_id = parts[1] if len(parts) == 2 and f"{parts[0]}/" == BACKUP_PREFIX and BACKUP_ID_RE.match(parts[1]) \
        else None
    if item.kind == "dir":
        return backup_id is not None and (backup_id in set(removed) or now - item.mtime > DIR_GRACE)
    if backup_id is not None:
        if backup_id in complete:
            return True
        if backup_id in states:
            return not states[backup_id].alive
    return now - item.mtime > TEMP_SAFE_AGE


# -- this machine ------------------------------------------------------------------------------------

def process_start(pid: int) -> str | None:
    """The start time (clock ticks after boot) of process ``pid`` from /proc; None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return ""  # exists, unreadable: alive as far as we can tell
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def here() -> Here:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot_id: str | None = handle.read().strip() or None
    except OSError:
        boot_id = None
    return Here(socket.gethostname(), boot_id, process_start)


def read_writer(storage: Storage, backup_id: str) -> Writer:
    key = marker_key(backup_id)
    return Writer.from_json(storage.get(key), key)


def writer_states(storage: Storage, objects: Iterable[ObjectInfo], *, now: float | None = None,
                  machine: Here | None = None, newest: float | None = None
                  ) -> tuple[set[str], dict[str, WriterState]]:
    """From a listing of backups/: (ids of complete backups, state of each incomplete one's writer).

    A marker's age is measured against the storage's own clock as far as the listing shows it (its
    newest mtime, or ``newest`` from a wider listing) when that is behind ours: a host whose clock
    runs ahead must not find a live writer's heartbeat stale.
    """
    complete: set[str] = set()
    markers: dict[str, float] = {}
    objects = list(objects)
    seen = max([info.mtime for info in objects] + ([newest] if newest is not None else []), default=None)
    for info in objects:
        parts = info.key.split("/")
        if len(parts) == 3 and BACKUP_ID_RE.match(parts[1]):
            if parts[2] == BACKUP_META:
                complete.add(parts[1])
            elif parts[2] == WRITER_NAME:
                markers[parts[1]] = info.mtime
    now = time.time() if now is None else now
    now = min(now, seen) if seen is not None else now
    machine = machine or here()
    states = {}
    for backup_id, refreshed in sorted(markers.items()):
        if backup_id in complete:
            continue
        writer: Writer | None
        try:
            writer = read_writer(storage, backup_id)
        except NotFound:
            continue  # removed since the listing
        except IntegrityError as exc:
            log.warning("%s", exc)
            writer = None
        alive, why = judge(writer, refreshed, now, machine)
        states[backup_id] = WriterState(backup_id, writer, refreshed, alive, why)
    return complete, states


def sweep_leftovers(storage: Storage, backups: list[ObjectInfo], *, keep: str | None = None) -> list[Leftover]:
    """Remove temp objects, uploads and empty directories of dead writers under backups/; what went."""
    complete, states = writer_states(storage, backups)
    now = time.time()
    gone = []
    for item in storage.list_leftovers(BACKUP_PREFIX):
        if keep and item.directory == f"{BACKUP_PREFIX}{keep}":
            continue
        if leftover_is_dead(item, now, complete, states):
            storage.remove_leftover(item)
            gone.append(item)
    return gone


# -- holding an id ---------------------------------------------------------------------------------

@dataclass
class Reservation:
    """A backup id this process holds: the keys it wrote, and the heartbeat that shows it alive."""

    storage: Storage
    writer: Writer
    written: list[str] = field(default_factory=list)
    lost: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def backup_id(self) -> str:
        return self.writer.backup_id

    @classmethod
    def take(cls, catalog: Catalog, stamp: str, *, machine: Here | None = None) -> Reservation:
        """Reserve the first free id for ``stamp`` with a no-clobber put of its marker."""
        storage = catalog.repo.storage
        machine = machine or here()
        lost: list[str] = []
        while True:
            backup_id = catalog.new_backup_id(stamp, skip=lost)
            writer = Writer(backup_id, machine.host, os.getpid(), datetime.now(UTC).isoformat(timespec="seconds"),
                            machine.boot_id, process_start(os.getpid()) or None, secrets.token_hex(8))
            with contextlib.suppress(AlreadyExists):  # taken, or our own put retried after a lost answer
                storage.put(marker_key(backup_id), writer.to_json(), overwrite=False)
            with contextlib.suppress(NotFound):
                if read_writer(storage, backup_id) == writer:  # ours (a best-effort no-clobber may lose it)
                    return cls(storage, writer)
            lost.append(backup_id)
            if len(lost) > 50:
                raise LockedError(f"no free backup id near {stamp}: {len(lost)} ids were taken by other backups "
                                  "while trying", hint="too many backups started at once; try again")

    def put(self, key: str, source: Source, *, overwrite: bool = False) -> None:
        """Store an object of this backup, remembering it for the cleanup (never one it did not write)."""
        with self.writing(key):
            self.storage.put(key, source, overwrite=overwrite)

    @contextlib.contextmanager
    def writing(self, key: str) -> Iterator[None]:
        """Track ``key`` as written by this backup, whatever the put's outcome.

        Keys under the reserved id are this backup's alone: a no-clobber refusal there can only come
        from an earlier attempt of its own whose answer was lost, so a failed put is cleaned up too.
        """
        if not key.startswith(f"{BACKUP_PREFIX}{self.backup_id}/"):
            raise ValueError(f"{key} is not under backup {self.backup_id}")
        self.check()
        self.written.append(key)
        yield

    def start_heartbeat(self, interval: float = HEARTBEAT) -> None:
        self._thread = threading.Thread(target=self._beat, args=(interval,), name="wk-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if read_writer(self.storage, self.backup_id) != self.writer:
                    self.lost = "its marker was replaced by another writer's"
                    return
                self.storage.put(marker_key(self.backup_id), self.writer.to_json(), overwrite=True)
            except NotFound:
                self.lost = "its marker was removed (by an expire that judged it dead?)"
                return
            except WalkeeperError as exc:
                log.warning("could not refresh %s: %s", marker_key(self.backup_id), exc)

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None

    def check(self) -> None:
        if self.lost:
            raise LockedError(f"backup {self.backup_id} lost its reservation: {self.lost}; it was not recorded",
                              hint="was the backup stalled or the repository unreachable for minutes? take it again")

    def abandon(self) -> None:
        """Remove what this backup wrote (its metadata first), then its marker."""
        self.stop_heartbeat()
        meta = backup_key(self.backup_id, BACKUP_META)
        keys = sorted(set(self.written), key=lambda k: k != meta)
        if meta in keys:
            self.storage.delete([meta])
        self.storage.delete([k for k in keys if k != meta])
        if self.lost is None:
            self.storage.delete([marker_key(self.backup_id)])


def confirm_published(catalog: Catalog, meta: BackupMeta, reservation: Reservation) -> None:
    """Read back what a restore will read: the backup listed, its metadata as written, each object whole."""
    storage = catalog.repo.storage
    where = f"backup {meta.id} in {storage.url}"
    if meta.id not in catalog.backup_ids():
        raise IntegrityError(f"{where} is not listed after its metadata was written; it was not recorded")
    try:
        if catalog.backup(meta.id) != meta:
            raise IntegrityError(f"{where}: the metadata read back differs from what was written")
        for obj in meta.objects:
            size = storage.stat(obj.key).size
            if size != obj.stored_size:
                raise IntegrityError(f"{where}: {obj.key} holds {size} bytes, {obj.stored_size} were written")
        if read_writer(storage, meta.id) != reservation.writer:
            raise IntegrityError(f"{where}: another writer's marker replaced this backup's")
    except NotFound as exc:
        raise IntegrityError(f"{where}: gone right after it was written ({exc}); it was not recorded") from None

"""wal-receive: a long-running service that streams WAL with pg_receivewal into the repository.

pg_receivewal (postgres/receivewal.py) writes into a private spool; this loop stores each completed
segment (and .history file) through wal-push's path into every configured repository (repo/fanout.py:
same codec and checks, ``[archive] require``, backlogs and catch-up of a lagging repository; identical
content already archived by archive_command is "already archived", different content is refused,
reported and never overwritten), removes it from the spool once it counts as archived, and every
``[receive] partial_interval`` seconds stores the segment being received (repo/received.py) into every
repository that answers (one that fails is retried at the next interval, never holding up the others),
so a repository is at most that far behind the server. A heartbeat (received/receiver.json) in each
repository says when it last held everything received: status and check report it as the receive lag.

pg_receivewal runs with --no-loop: when it exits, a refused connection or a missing slot ends the
service with one line (ReplicationRefused, exit 24); anything else is retried with backoff.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from walkeeper.accel import state
from walkeeper.core.config import Config
from walkeeper.core.errors import (
    ConflictError,
    LockedError,
    NotFound,
    ReplicationRefused,
    StorageError,
    WalkeeperError,
)
from walkeeper.core.wal import parse_wal_name
from walkeeper.core.walformat import is_segment_name, wal_name_kind
from walkeeper.postgres.client import ConnOptions, ToolProcess
from walkeeper.postgres.receivewal import (
    Failure,
    ReceiveSpec,
    classify_failure,
    create_physical_slot,
    refusal_error,
    server_major,
    start_receivewal,
    validate_slot,
)
from walkeeper.repo.fanout import CATCH_UP_BUDGET, Fanout, Target, fanout_for
from walkeeper.repo.layout import wal_key
from walkeeper.repo.received import drop_partials, list_received, store_partial, write_receiver_state

log = logging.getLogger(__name__)

LOCK_FILE = "receive.lock"
TICK = 0.25  # seconds between looks at the spool for completed segments
RAN_LONG_ENOUGH = 30.0  # a pg_receivewal that ran this long resets the restart backoff
STORAGE_RETRY = 5.0  # seconds before the next round after the repository failed (after its own retries)


@dataclass
class ReceiveOptions:
    conn: ConnOptions
    slot: str
    synchronous: bool = False
    create_slot: bool = False
    partial_interval: float = 10.0
    spool: str | None = None


@dataclass
class ReceiveStats:
    segments: int = 0  # stored by this process
    already: int = 0  # already archived (by archive_command) with identical content
    conflicts: int = 0
    partials: int = 0
    restarts: int = 0
    last_stored: str | None = None
    storage_failures: int = 0
    partial_failures: int = 0  # partial uploads that failed in one repository (retried next interval)


def receive_spool(config: Config, slot: str) -> str:
    """pg_receivewal's directory: private, one per (first repository, slot), outside every data directory."""
    key = hashlib.sha256(f"{config.repo}\0receive\0{slot}".encode()).hexdigest()[:16]
    if config.receive.spool_dir:
        os.makedirs(config.receive.spool_dir, mode=0o700, exist_ok=True)
        return state.ensure_private_dir(os.path.join(config.receive.spool_dir, f"receive-{key}"))
    return state.ensure_private_dir(os.path.join(state.state_root(), f"receive-{key}"))


class Receiver:
    """The service: one pg_receivewal, the spool sweep, the partial uploads and the heartbeat."""

    def __init__(self, config: Config, options: ReceiveOptions, fanout: Fanout | None = None) -> None:
        self.config = config
        self.options = options
        self.fanout = fanout or fanout_for(config, pg_wal=None,
                                           lag_dir=lambda url: state.lag_dir(config.archive.status_dir, url))
        self.targets: list[Target] = self.fanout.targets
        self.spool = options.spool or receive_spool(config, options.slot)
        self.spec = ReceiveSpec(self.spool, validate_slot(options.slot), options.synchronous)
        self.stats = ReceiveStats()
        self.stop = threading.Event()
        self.proc: ToolProcess | None = None
        self.started_at = 0.0
        self.delay = 1.0
        self.next_start = 0.0
        self.next_partial = 0.0
        self.stored_length: dict[tuple[str, str], int] = {}  # (repository, segment) -> bytes it holds
        self.unsettled: set[str] = set()  # repositories that may lack a completed segment this round
        self.major: int | None = None  # the server's: pg_receivewal refuses a newer server

    # -- the service loop --------------------------------------------------------------------------------

    def run(self) -> ReceiveStats:
        lock = state.take_exclusive_lock(self.spool, LOCK_FILE)
        if lock is None:
            raise LockedError(f"another wal-receive already streams slot {self.options.slot} into this spool "
                              f"({self.spool})", hint="stop it first, or give this one another --slot")
        try:
            if self.options.create_slot and create_physical_slot(self.config, self.options.conn, self.options.slot):
                log.warning("created physical replication slot %s", self.options.slot)
            self.clean_stale_partials()
            log.info("streaming slot %s into %s (spool %s, partial every %g s%s)",
                        self.options.slot, ", ".join(t.repo.storage.url for t in self.targets), self.spool,
                        self.options.partial_interval,
                        ", synchronous" if self.options.synchronous else "")
            while not self.stop.is_set():
                try:
                    self.supervise()
                except ReplicationRefused:
                    self.sweep(partial=True, heartbeat=False)  # what was received before is stored first
                    raise
                try:
                    self.sweep(partial=time.monotonic() >= self.next_partial)
                except StorageError as exc:
                    # The repository is unreachable: pg_receivewal keeps receiving into the spool, and the
                    # next round stores it (the heartbeat stops meanwhile: check reports the lag).
                    self.stats.storage_failures += 1
                    where = (self.targets[0].repo.storage.url if len(self.targets) == 1
                             else f"the repositories as [archive] require = {self.fanout.require!r} asks")
                    log.warning("cannot store into %s (%s); retrying in %g s", where, exc, STORAGE_RETRY)
                    self.stop.wait(STORAGE_RETRY)
                self.stop.wait(TICK)
            self.shutdown()
        finally:
            if self.proc is not None:
                self.proc.kill()
            os.close(lock)
        return self.stats

    def supervise(self) -> None:
        """Start pg_receivewal, or judge why it exited: refused/no slot ends the service, else retry."""
        now = time.monotonic()
        code = self.proc.exited() if self.proc is not None else None
        if self.proc is not None and code is not None:
            kind, line = classify_failure(self.proc.lines)
            self.proc = None
            if kind is not Failure.OTHER:
                raise refusal_error(kind, line, self.options.slot)
            if now - self.started_at >= RAN_LONG_ENOUGH:
                self.delay = 1.0
            log.warning("pg_receivewal exited (code %s: %s); restarting in %g s", code, line or "no message",
                        self.delay)
            self.next_start = now + self.delay
            self.delay = min(self.delay * 2, self.config.receive.restart_max_delay)
            self.stats.restarts += 1
        if self.proc is None and now >= self.next_start:
            if self.major is None:
                self.major = server_major(self.config, self.options.conn)
            self.proc = start_receivewal(self.config, self.options.conn, self.spec, self.major)
            self.started_at = now

    def shutdown(self) -> None:
        """Stop pg_receivewal (SIGINT: it flushes what it has), then store everything, the partial too."""
        if self.proc is not None and self.proc.proc.poll() is None:
            self.proc.proc.send_signal(signal.SIGINT)
            try:
                self.proc.proc.wait(10)
            except Exception:
                self.proc.kill()
        self.proc = None
        self.sweep(partial=True, heartbeat=False)
        log.info("wal-receive stopped: %d segments stored, %d already archived, %d partial uploads",
                     self.stats.segments, self.stats.already, self.stats.partials)

    # -- the spool ---------------------------------------------------------------------------------------

    def sweep(self, *, partial: bool, heartbeat: bool = True) -> None:
        """Store what pg_receivewal completed; at partial time also the segment being received.

        A completed segment that does not count as archived (``require``) stays in the spool and raises
        StorageError after the partial uploads, which go to every repository that answers regardless."""
        read_at = time.time()
        entries = sorted(os.listdir(self.spool))
        history = [n for n in entries if wal_name_kind(n) == "history"]
        complete = [n for n in entries if is_segment_name(n)]
        self.unsettled = set()
        failure: StorageError | None = None
        if self.fanout.lagging():
            for name, count in self.fanout.catch_up(budget=CATCH_UP_BUDGET).items():
                if count:
                    self.clean_stale_partials([t for t in self.targets if t.name == name])
        for name in history + complete:
            try:
                self.store_complete(name)
            except StorageError as exc:
                failure = exc
                self.unsettled = {t.name for t in self.targets}
                break  # in WAL order: the later ones wait for this one
        if partial:
            self.next_partial = time.monotonic() + self.options.partial_interval
            current = [n[:-8] for n in entries if n.endswith(".partial") and is_segment_name(n[:-8])]
            stored_in = {t.name: all([self.store_current(t, n) for n in current]) for t in self.targets}
            if heartbeat and self.proc is not None and self.proc.proc.poll() is None:
                newest = max((n[:24] for n in entries if is_segment_name(n[:24])), default=None)
                doc = {"updated": read_at, "slot": self.options.slot, "segment": newest,
                       "host": os.uname().nodename, "pid": os.getpid()}
                behind = {t.name for t in self.fanout.lagging()}
                fresh = heartbeat_targets([t.name for t in self.targets], stored_in, self.unsettled, behind)
                for target in (t for t in self.targets if t.name in fresh):
                    try:
                        write_receiver_state(target.repo, doc)
                    except WalkeeperError as exc:
                        log.warning("repository %s: heartbeat not written (%s)", target.name, exc)
        if failure is not None:
            raise failure

    def store_complete(self, name: str) -> None:
        path = Path(self.spool) / name
        try:
            outcome = self.fanout.push(path)
        except ConflictError as exc:
            self.stats.conflicts += 1
            os.replace(path, path.with_name(name + ".conflict"))  # kept for the operator, out of the sweep
            log.error("wal-receive: %s; the received copy is kept as %s", exc, path.with_name(name + ".conflict"))
            return
        result = outcome.result
        if result.stored:
            self.stats.segments += 1
            log.info("stored %s (%d bytes, stored %d)%s", name, result.plain_size, result.stored_size,
                     f" in {', '.join(outcome.stored)}" if self.fanout.several else "")
        else:  # Repository.push_wal logged "... is already archived with identical content"
            self.stats.already += 1
        for behind, why in outcome.behind.items():
            log.warning("repository %s is behind: %s not stored there yet (%s)", behind, name, why)
        self.unsettled |= set(outcome.behind)
        self.stats.last_stored = name
        if is_segment_name(name):
            for target in self.targets:
                if target.name in outcome.stored:
                    try:
                        drop_partials(target.repo, name)
                    except WalkeeperError as exc:  # superseded leftovers: the next start cleans them
                        log.warning("repository %s: received partials of %s not deleted (%s)", target.name, name,
                                    exc)
                self.stored_length.pop((target.name, name), None)
        os.unlink(path)

    def store_current(self, target: Target, segment: str) -> bool:
        """Store the segment being received into ``target`` if it grew; False when what was read is not
        stored there yet (a torn read, or the repository failed: logged, retried at the next interval)."""
        path = Path(self.spool) / f"{segment}.partial"
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # completed meanwhile: the next sweep stores the segment
            return True
        length = len(data.rstrip(b"\0"))
        if length <= self.stored_length.get((target.name, segment), 0):
            return True
        try:
            stored = store_partial(target.repo, parse_wal_name(segment), data)
        except WalkeeperError as exc:
            self.stats.partial_failures += 1
            log.warning("repository %s: the partial segment %s not stored (%s); retrying in %g s", target.name,
                        segment, exc, self.options.partial_interval)
            return False
        if stored is None or stored < length:
            return False
        if stored > self.stored_length.get((target.name, segment), 0):
            self.stats.partials += 1
            log.debug("stored the partial segment %s (%d bytes received) in %s", segment, stored, target.name)
        self.stored_length[(target.name, segment)] = stored
        return True

    def clean_stale_partials(self, targets: list[Target] | None = None) -> None:
        """Received partials whose complete segment is stored are superseded: delete them (an earlier run,
        or a repository that was behind and has caught up)."""
        for target in self.targets if targets is None else targets:
            try:
                for partial in list_received(target.repo):
                    try:
                        target.repo.storage.stat(wal_key(parse_wal_name(partial.segment)))
                    except NotFound:
                        continue
                    drop_partials(target.repo, partial.segment)
            except WalkeeperError as exc:  # a repository that is down now: cleaned at the next start
                log.warning("repository %s: superseded received partials not cleaned (%s)", target.name, exc)


def heartbeat_targets(names: list[str], stored_in: dict[str, bool], unsettled: set[str],
                      behind: set[str]) -> list[str]:
    """The repositories whose heartbeat may say "everything received is here": each holds the segment being
    received (``stored_in``), took every completed segment of this round (not in ``unsettled``) and has no
    backlog (not in ``behind``)."""
    return [n for n in names if stored_in.get(n) and n not in unsettled and n not in behind]


def wal_receive(config: Config, options: ReceiveOptions) -> ReceiveStats:
    """Run until SIGTERM/SIGINT (exit 0 after storing everything) or a refusal (ReplicationRefused)."""
    receiver = Receiver(config, options)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        receiver.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return receiver.run()

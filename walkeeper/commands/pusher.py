"""The background pusher of wal-push: stores the .ready files PostgreSQL has not asked for yet.

Started (detached) by a full-path wal-push when other segments are waiting in
``pg_wal/archive_status/*.ready``; ``python -m walkeeper.commands.pusher STATUS DATADIR CONFIG REPO [OWN]``
(OWN: the file the starting call pushes itself, never pushed again by this pusher). One
per status directory: it holds an exclusive flock on STATUS/push.lock and exits at once when
another holds it. It pushes the waiting files in PostgreSQL's order with ``workers`` threads, at
most ``push_ahead`` of them recorded and not yet asked for, and exits after ``idle_timeout``
seconds with nothing to push.

For each file: NAME.pushing (its pid) while it works, so that PostgreSQL's call for NAME waits in
the fast path instead of pushing it a second time; then the durable store; then the record NAME
(the file's identity and SHA-256) if the file did not change meanwhile; then NAME.pushing goes.
A failed or killed push leaves no record: PostgreSQL's own call then pushes the file itself and
reports what went wrong. Running beside PostgreSQL's calls (instead of inside one of them) lets
the fast-path calls overlap with compression and upload on a second core.

Several repositories (repo/fanout.py): a file is recorded only once it is stored as ``[archive] require``
asks (in every repository; with "any", in one and in the backlog of the others). While a repository is
behind, the pusher stays alive and catches it up in WAL order, every ``catch_up_interval`` seconds while
it keeps failing, also when PostgreSQL archives nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from walkeeper.accel import state
from walkeeper.accel.spawn import log_helper_stopped
from walkeeper.core.config import Config, load_config
from walkeeper.core.durable import TEMP_PREFIX
from walkeeper.core.walformat import is_segment_name, is_wal_name
from walkeeper.repo.fanout import Fanout, fanout_for
from walkeeper.repo.walfile import ready_files

log = logging.getLogger("walkeeper.pusher")
POLL = 0.01
CATCH_UP_POLL = 0.5  # between two rounds of catch-up (a repository that failed rests longer: catch_up_interval)
RETRY_FAILED = 5.0  # a failed file is tried again after this long (PostgreSQL's own call reports it)
PRUNE_EVERY = 1.0
STALE_TEMP = 60.0


class NotYourTurn(Exception):
    """An earlier segment is not stored: this one waits for a later round (never reported to PostgreSQL)."""


class Pusher:
    def __init__(self, config: Config, fanout: Fanout, status: str, datadir: str,
                 skip: frozenset[str] = frozenset()) -> None:
        self.config = config
        self.fanout = fanout
        self.identity = config.push_identity()
        self.status = status
        self.pg_wal = Path(datadir) / "pg_wal"
        self.limit = max(1, config.archive.push_ahead)
        self.workers = max(1, config.archive.workers)
        self.inflight: dict[str, Future[bool]] = {}
        self.retry_at: dict[str, float] = {}
        self.skip = set(skip)  # the starting call's own file, and every file this pusher has stored
        self.stored: set[str] = set()  # added to by the workers themselves, the moment a store returns
        self.last_success = time.monotonic()
        self.failing = False  # a push failed and none has succeeded since

    def _path(self, name: str) -> str:
        return os.path.join(self.status, name)

    def push_one(self, name: str) -> bool:
        """Push one .ready file; record it only once it is durably stored and the file did not change."""
        file = self.pg_wal / name
        marker = self._path(name) + state.PUSHING_SUFFIX
        try:
            # Not synced: a pid is meaningless after a crash (and a dead pid's marker is ignored).
            state.write_record(marker, {"v": state.RECORD_VERSION, "name": name, "pid": os.getpid()},
                               sync=False)
            before = os.stat(file)
            # look_first=False: files ahead are rarely stored already.
            result = self.fanout.push(file, look_first=False, before_store=lambda: self.wait_turn(name)).result
            self.stored.add(name)
            delay = os.environ.get("WALKEEPER_TEST_PUSH_AHEAD_DELAY")  # fault-injection tests only
            if delay:
                time.sleep(float(delay))
            after = os.stat(file)
            if state.identity(before) != state.identity(after):
                log.warning("%s changed while it was pushed ahead; not recording it", name)
                return False
            state.write_record(self._path(name), {  # synced, like the object it vouches for
                "v": state.RECORD_VERSION, "name": name, "repo": self.identity, "sha256": result.sha256,
                **state.identity(after)})
            return True
        except Exception as exc:  # PostgreSQL's own call will push it again and report the error
            log.warning("push-ahead of %s failed (PostgreSQL's own call will retry it): %s", name, exc)
            return False
        finally:
            state.remove_file(marker)  # after the record: a waiting fast path sees one or the other

    def wait_turn(self, name: str) -> None:
        """Return once every earlier segment of ``name``'s timeline still .ready is stored; raise NotYourTurn
        if one of them is neither stored nor being stored (its push failed).

        Ordered publish: a standby or a PITR reading the archive meanwhile never finds segment N missing
        while N+1 is stored, which it could not tell from a gap. Encoding still runs in parallel; only
        the stores are in order. (wal-fetch also waits, bounded, for such a segment: other writers.)
        """
        if not is_segment_name(name):
            return
        while True:
            pending = [n for n in ready_files(self.pg_wal) if n < name and is_segment_name(n)
                       and n[:8] == name[:8] and n not in self.stored]
            if not pending:
                return
            for earlier in pending:
                future = self.inflight.get(earlier)
                if (future is not None and not future.done()) or state.pushing_pid(self.status, earlier):
                    break  # being stored by a worker or by PostgreSQL's own call: wait for it
                if not self.fanout.holds(earlier):
                    raise NotYourTurn(f"{earlier}, before it, is not stored (its push failed); storing "
                                      f"{name} first would look like a gap to a standby")
                self.stored.add(earlier)  # stored and not .done yet, or stored by another writer
            else:
                return
            time.sleep(POLL)

    def candidates(self, ready: list[str], recorded: set[str]) -> list[str]:
        """Waiting files nobody has stored or is storing, within the push-ahead bound, in PostgreSQL's order."""
        room = self.limit - len(recorded.intersection(ready)) - len(self.inflight)
        now = time.monotonic()
        out: list[str] = []
        for name in ready:
            if len(out) >= room:
                break
            if name in recorded or name in self.inflight or name in self.skip or self.retry_at.get(name, 0) > now:
                continue
            pid = state.pushing_pid(self.status, name)
            if pid is not None and pid != os.getpid():
                continue  # PostgreSQL's own (full-path) call is pushing it
            out.append(name)
        return out

    def catch_up(self) -> dict[str, int]:
        """One round of catch-up of the repositories behind (each left alone while it rests)."""
        try:
            done = self.fanout.catch_up()
        except Exception as exc:  # never the end of the pusher; the backlog stays for the next round
            log.warning("catch-up failed: %s", exc)
            return {}
        time.sleep(CATCH_UP_POLL)
        return done

    def recorded(self) -> set[str]:
        return {n for n in os.listdir(self.status) if is_wal_name(n)}

    def prune(self) -> None:
        """Forget records of files PostgreSQL has removed or recycled, markers of dead pushes, old temps."""
        now = time.time()
        for entry in os.listdir(self.status):
            path = self._path(entry)
            if entry.startswith(TEMP_PREFIX):
                try:
                    if now - os.stat(path).st_mtime > STALE_TEMP:
                        state.remove_file(path)
                except FileNotFoundError:
                    pass
                continue
            base = entry[:-len(state.PUSHING_SUFFIX)] if entry.endswith(state.PUSHING_SUFFIX) else entry
            if is_wal_name(base) and not (self.pg_wal / base).exists():
                state.remove_file(path)

    def reap(self) -> bool:
        """Collect finished pushes; True if any finished."""
        finished = False
        for name, future in list(self.inflight.items()):
            if future.done():
                del self.inflight[name]
                finished = True
                if future.result():
                    # PostgreSQL's fast-path call removes the record a moment before it renames .ready
                    # to .done: never push the file again in that moment.
                    self.skip.add(name)
                    self.last_success, self.failing = time.monotonic(), False
                else:
                    self.retry_at[name] = time.monotonic() + RETRY_FAILED
                    self.failing = True
        return finished

    def run(self) -> None:
        idle = self.config.archive.idle_timeout
        last_work = time.monotonic()
        next_prune = 0.0
        config_seen = _config_identity(self.config.source)
        catching_up: Future[dict[str, int]] | None = None
        with ThreadPoolExecutor(max_workers=self.workers + 1, thread_name_prefix="push") as pool:
            while self.pg_wal.is_dir():
                now = time.monotonic()
                if now >= next_prune:
                    self.prune()
                    next_prune = now + PRUNE_EVERY
                if _config_identity(self.config.source) != config_seen:
                    # e.g. a new key listed first after `key rotate`: take no new work; the next
                    # archive_command call starts a pusher with the new configuration (README "Keys")
                    if not self.inflight:
                        log.info("configuration file changed; stopping")
                        break
                    self.reap()
                    time.sleep(POLL)
                    continue
                if self.reap():
                    last_work = now
                if catching_up is None or catching_up.done():
                    if catching_up is not None and any(catching_up.result().values()):
                        last_work = now
                    # A repository behind (require = "any") keeps the pusher alive: it catches up as soon as
                    # the repository is back, even while PostgreSQL archives nothing.
                    catching_up = pool.submit(self.catch_up) if self.fanout.lagging() else None
                if catching_up is not None:
                    last_work = now
                if len(self.inflight) < self.workers:
                    todo = self.candidates(ready_files(self.pg_wal), self.recorded())
                    for name in todo[:self.workers - len(self.inflight)]:
                        self.inflight[name] = pool.submit(self.push_one, name)
                        last_work = now
                if self.failing and now - self.last_success > idle:
                    # A persistent failure (wrong key, full disk, repository gone) must not keep a helper
                    # retrying and logging forever: PostgreSQL's own calls report it, and the next
                    # full-path call starts a new pusher once one of them succeeds.
                    log.warning("every push has failed for %.0f s; stopping", idle)
                    break
                if self.inflight:
                    last_work = now
                elif now - last_work > idle:
                    log.info("nothing to push for %.0f s; stopping", idle)
                    break
                time.sleep(POLL)


def _config_identity(path: str | None) -> dict[str, str] | None:
    try:
        return state.identity(os.stat(path)) if path else None
    except OSError:
        return None


def main(argv: list[str]) -> int:
    status, datadir, config_path, repo_url, *own = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s walkeeper pusher[%(process)d]: %(message)s")
    if state.take_exclusive_lock(status, state.PUSH_LOCK_FILE) is None:
        return 0  # another pusher serves this status directory
    try:
        config = load_config(config_path or None, repo=repo_url or None)
        fanout = fanout_for(config, pg_wal=Path(datadir) / "pg_wal",
                            lag_dir=lambda url: state.lag_dir(config.archive.status_dir, url))
        pusher = Pusher(config, fanout, status, datadir, frozenset(own))
    finally:
        state.remove_file(os.path.join(status, state.PUSH_STARTING_FILE))
    log.info("pushing ahead from %s (up to %d, %d workers)", pusher.pg_wal, pusher.limit, pusher.workers)
    pusher.run()
    log_helper_stopped(log)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The background prefetcher of wal-fetch: keeps the next segments of recovery verified in a spool.

Started (detached) by a full-path wal-fetch during recovery; ``python -m walkeeper.commands.prefetch SPOOL
DATADIR CONFIG REPO``. One per spool: it holds an exclusive flock on SPOOL/prefetch.lock and exits at
once when another holds it. Every wal-fetch (fast or full path) writes SPOOL/request, the last
segment PostgreSQL asked for; the prefetcher keeps the next ``prefetch`` segments of that segment's
timeline in the spool (bounded by ``spool_max_mb``), deletes every other file (older segments, other
timelines), writes each download to a temp name, renames it when the repository's verification
passed, then records its identity in NAME.meta for the fast path. It exits, emptying the spool, when
recovery ends (no recovery.signal / standby.signal in the data directory) or after ``idle_timeout``
seconds without a request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from walkeeper.accel import state
from walkeeper.accel.spawn import log_helper_stopped, recovering
from walkeeper.core.config import Config, load_config
from walkeeper.core.durable import TEMP_PREFIX, write_file
from walkeeper.core.errors import GapError, NotFound
from walkeeper.core.wal import WalKind, parse_wal_name, segment_name, segno_of
from walkeeper.core.walformat import is_segment_name
from walkeeper.repo.fallback import Source, fetch_first, sources_for

log = logging.getLogger("walkeeper.prefetch")
POLL = 0.02
RETRY_MISSING = 1.0


class Prefetcher:
    def __init__(self, config: Config, sources: list[Source], spool: str, datadir: str, segment_size: int) -> None:
        self.config = config
        self.sources = sources  # the repositories, in the order wal-fetch reads them (repo/fallback.py)
        self.identity = config.fetch_identity()
        self.spool = spool
        self.datadir = datadir
        self.segment_size = segment_size
        depth = min(config.restore.prefetch, config.restore.spool_max_mb * 1024 * 1024 // self.segment_size)
        self.depth = max(1, depth)
        self.workers = max(1, config.restore.workers)
        self.wanted: set[str] = set()
        self.lock = threading.Lock()
        self.inflight: dict[str, Future[None]] = {}
        self.retry_at: dict[str, float] = {}

    # -- spool files -----------------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return os.path.join(self.spool, name)

    def _ready(self, name: str) -> bool:
        return os.path.exists(self._path(name) + state.META_SUFFIX)

    def _discard(self, name: str) -> None:
        for path in (self._path(name) + state.META_SUFFIX, self._path(name),
                     self._path(name) + state.MISSING_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def spool_names(self) -> set[str]:
        names = set()
        for entry in os.listdir(self.spool):
            base = entry.split(".", 1)[0]
            if is_segment_name(base):
                names.add(base)
        return names

    def clear(self, *, temps_only: bool = False) -> None:
        for entry in os.listdir(self.spool):
            if entry.startswith(TEMP_PREFIX) or (not temps_only and (
                    is_segment_name(entry.split(".", 1)[0]))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.spool, entry))

    # -- one download ------------------------------------------------------------------------------------

    def fetch(self, name: str) -> None:
        # Decrypts, checks SHA-256, size and page header. No gap_wait: a segment missing while later ones
        # are stored is marked .missing at once and retried; PostgreSQL's own wal-fetch does the bounded wait.
        data = fetch_first(self.sources, parse_wal_name(name)).data
        with self.lock:
            if name not in self.wanted:
                return  # recovery moved on (or to another timeline) while we downloaded
        final = self._path(name)
        # Not synced (nor its meta record): a spool file written before a crash is never served after it
        # (the boot id in its meta record no longer matches).
        write_file(final, data, sync=False)
        st = os.stat(final)
        # The repository verified the bytes (AEAD, SHA-256, size, page header); from here on the file's
        # identity (inode, size, mtime, ctime) and the boot id show that nobody has touched it since.
        state.write_record(final + state.META_SUFFIX, {
            "v": state.RECORD_VERSION, "name": name, "repo": self.identity,
            "boot_id": state.boot_id(), **state.identity(st),
        }, sync=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(final + state.MISSING_SUFFIX)
        with self.lock:
            if name not in self.wanted:  # moved on meanwhile: do not leave it behind
                self._discard(name)
                return
        log.info("prefetched %s", name)

    # -- the loop ----------------------------------------------------------------------------------------

    def window(self, requested: str, served: bool) -> list[str]:
        """The segments to hold: the requested one while a wal-fetch waits for it, then the next ones."""
        name = parse_wal_name(requested)
        if name.kind is not WalKind.SEGMENT:
            return []
        first = segno_of(name, self.segment_size) + (1 if served else 0)
        return [segment_name(name.timeline, first + i, self.segment_size) for i in range(self.depth)]

    def reap(self) -> None:
        for name, future in list(self.inflight.items()):
            if not future.done():
                continue
            del self.inflight[name]
            exc = future.exception()
            if exc is None:
                continue
            if not isinstance(exc, NotFound | GapError):
                log.warning("prefetch of %s failed: %s", name, exc)
            self.retry_at[name] = time.monotonic() + RETRY_MISSING
            self._discard(name)
            # A waiting wal-fetch stops waiting and asks the repository itself (which reports the error).
            # Not synced: the marker matters only to a wal-fetch waiting now.
            with contextlib.suppress(OSError), open(self._path(name) + state.MISSING_SUFFIX, "w"):
                pass

    def run(self) -> None:
        request_path = self._path(state.REQUEST_FILE)
        idle = self.config.restore.idle_timeout
        last_seen: tuple[int, int] | None = None
        last_activity = time.monotonic()
        requested: str | None = None
        served = True
        self.clear(temps_only=True)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="prefetch") as pool:
            try:
                while recovering(self.datadir):
                    now = time.monotonic()
                    try:
                        st = os.stat(request_path)
                        seen = (st.st_mtime_ns, st.st_ino)
                    except FileNotFoundError:
                        seen = None
                    if seen != last_seen:
                        last_seen, last_activity = seen, now
                        record = state.read_record(request_path)
                        if record and is_segment_name(record.get("name", "")):
                            requested = record["name"]
                            served = record.get("served") != "0"
                    if now - last_activity > idle:
                        log.info("no request for %.0f s; stopping", idle)
                        break
                    if requested:
                        self.step(pool, requested, served)
                    self.reap()
                    time.sleep(POLL)
            finally:
                with self.lock:
                    self.wanted = set()
                for future in self.inflight.values():
                    future.cancel()
        self.clear()

    def step(self, pool: ThreadPoolExecutor, requested: str, served: bool) -> None:
        window = self.window(requested, served)
        with self.lock:
            self.wanted = set(window)
        keep = self.wanted | {requested}
        for name in self.spool_names() - keep:
            self._discard(name)  # older segments, another timeline: never left to be served
        now = time.monotonic()
        for name in window:
            if len(self.inflight) >= self.workers + 1:
                break
            if name in self.inflight or self._ready(name):
                continue
            if self.retry_at.get(name, 0) > now:
                break  # not in the archive yet: nothing after it will be either
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(name) + state.MISSING_SUFFIX)
            self.inflight[name] = pool.submit(self.fetch, name)


def _has_meta(source: Source) -> bool:
    try:
        return source.repo.meta() is not None
    except Exception as exc:  # a repository that cannot be read now: the others may serve
        log.warning("repository %s: %s", source.name, exc)
        return False


def main(argv: list[str]) -> int:
    spool, datadir, config_path, repo_url = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s walkeeper prefetch[%(process)d]: %(message)s")
    if state.take_exclusive_lock(spool, state.LOCK_FILE) is None:
        return 0  # another prefetcher serves this spool
    try:
        config = load_config(config_path or None, repo=repo_url or None)
        sources = sources_for(config)
        sizes = [s.repo.segment_size for s in sources if _has_meta(s)]
        if not sizes:
            return 0
        prefetcher = Prefetcher(config, sources, spool, datadir, sizes[0])
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(spool, state.STARTING_FILE))
    log.info("prefetching into %s for %s (depth %d)", spool, datadir, prefetcher.depth)
    prefetcher.run()
    log_helper_stopped(log)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

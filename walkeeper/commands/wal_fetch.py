"""wal-fetch: PostgreSQL's restore_command.

Exit 0 only once the whole verified file is at the destination; "not in the archive" is the only
quiet failure (see errors.exit_code). With several repositories: the first that has it (repo/fallback.py).
With prefetch, starts the prefetcher (commands/prefetch.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from walkeeper.accel import state
from walkeeper.accel.spawn import outside_data_directory, recovering, spawn_helper
from walkeeper.core.config import Config
from walkeeper.core.errors import NotFound
from walkeeper.core.wal import parse_wal_name
from walkeeper.core.walformat import is_segment_name
from walkeeper.repo.fallback import fetch_first, sources_for
from walkeeper.repo.received import fetch_received_partial
from walkeeper.repo.walfile import FetchResult, place_file

log = logging.getLogger(__name__)


def wal_fetch(config: Config, name: str, dest: str) -> FetchResult:
    wal_name = parse_wal_name(name)
    sources = sources_for(config)
    try:
        fetched = fetch_first(sources, wal_name, gap_wait=config.restore.gap_wait)
        result = place_file(wal_name.name, fetched.data, Path(dest))
    except NotFound:  # the end of the archive: wal-receive's partial of this segment, if it is the last thing
        result = fetch_received_partial(sources, name, Path(dest), gap_wait=config.restore.gap_wait)
    if config.restore.prefetch > 0:
        try:
            start_prefetch(config, name)
        except Exception as exc:  # prefetch only ever saves time; the segment is in place already
            log.warning("prefetch not started: %s", exc)
    return result


# -- prefetch ----------------------------------------------------------------------------------------------


def start_prefetch(config: Config, name: str) -> bool:
    """Tell the prefetcher where recovery is, and start it unless one already serves this spool."""
    datadir = os.getcwd()
    if not is_segment_name(name) or not recovering(datadir):
        return False
    if config.restore.spool_dir:
        outside_data_directory(config.restore.spool_dir, datadir, "[restore] spool_dir")
    spool = state.spool_dir(config.restore.spool_dir, config.fetch_identity(), datadir)
    state.write_record(os.path.join(spool, state.REQUEST_FILE),  # a hint to the live prefetcher: not synced
                          {"v": state.RECORD_VERSION, "name": name, "served": 1}, sync=False)
    if prefetcher_running(spool):
        return False
    with open(os.path.join(spool, state.STARTING_FILE), "w"):  # a hint for seconds: not synced
        pass  # lets the next wal-fetch wait for this prefetcher while its interpreter starts
    return spawn_helper(["walkeeper.commands.prefetch", spool, datadir, config.source or "", config.repo_choice or ""],
                        datadir,
                        os.path.join(spool, "prefetch.log"))


def prefetcher_running(spool: str) -> bool:
    fd = os.open(os.path.join(spool, state.LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    return state.prefetcher_alive(spool)

"""wal-push: PostgreSQL's archive_command.

Exit 0 only once the file is durably stored (in every repository, or with ``[archive] require = "any"`` in
one, the others recorded as behind: repo/fanout.py); identical re-push is success; different content is
refused (see errors.exit_code). With push_ahead, starts the background pusher (commands/pusher.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from walkeeper.accel import state
from walkeeper.accel.spawn import outside_data_directory, spawn_helper
from walkeeper.core.config import Config
from walkeeper.repo.fanout import Fanout, fanout_for
from walkeeper.repo.repository import PushResult
from walkeeper.repo.walfile import ready_files

log = logging.getLogger(__name__)


def wal_push(config: Config, path: str) -> PushResult:
    wal_path = Path(path)
    fanout = open_fanout(config, wal_path.parent)
    if config.archive.push_ahead > 0 and (wal_path.parent / "archive_status").is_dir():
        try:
            if config.archive.status_dir:
                outside_data_directory(config.archive.status_dir, os.getcwd(), "[archive] status_dir")
            status = state.status_dir(config.archive.status_dir, config.push_identity(), os.getcwd())
        except OSError as exc:
            log.warning("push-ahead disabled: status directory unusable (%s)", exc)
        else:
            return push_with_pusher(config, fanout, wal_path, status)
    return fanout.push(wal_path).result


def open_fanout(config: Config, pg_wal: Path) -> Fanout:
    """The repositories to store into, with their backlogs beside the status directories."""
    return fanout_for(config, pg_wal=pg_wal, lag_dir=lambda url: lag_dir(config, url))


def lag_dir(config: Config, url: str) -> str:
    if config.archive.status_dir:
        outside_data_directory(config.archive.status_dir, os.getcwd(), "[archive] status_dir")
    return state.lag_dir(config.archive.status_dir, url)


# -- push-ahead ------------------------------------------------------------------------------------------
# A full-path wal-push starts the background pusher (walkeeper.commands.pusher) when other segments wait as
# .ready, then pushes its own file. The pusher records each success (after the durable store) in the
# status directory; PostgreSQL's later call for such a file is answered by walkeeper.accel.state.


def push_with_pusher(config: Config, fanout: Fanout, path: Path, status: str) -> PushResult:
    """Push PostgreSQL's own file, marked as being pushed by this process so the pusher leaves it alone."""
    marker = os.path.join(status, path.name + state.PUSHING_SUFFIX)
    try:
        # Not synced: a pid is meaningless after a crash (and a dead pid's marker is ignored).
        state.write_record(marker, {"v": state.RECORD_VERSION, "name": path.name, "pid": os.getpid()},
                           sync=False)
    except (OSError, ValueError) as exc:
        log.warning("cannot mark %s as being pushed: %s", path.name, exc)
    try:
        try:
            start_pusher(config, status, path, behind=bool(fanout.lagging()))
        except Exception as exc:  # push-ahead only ever saves time; the own file is what counts
            log.warning("push-ahead not started: %s", exc)
        return fanout.push(path).result
    finally:
        state.remove_file(marker)


def start_pusher(config: Config, status: str, own: Path, *, behind: bool = False) -> bool:
    """Start the background pusher unless one serves this status directory or there is nothing to do
    (no other file waiting, no repository behind)."""
    others = [n for n in ready_files(own.parent) if n != own.name and not os.path.exists(os.path.join(status, n))]
    if not (others or behind) or state.holder_alive(status, state.PUSH_LOCK_FILE, state.PUSH_STARTING_FILE):
        return False
    datadir = os.getcwd()
    with open(os.path.join(status, state.PUSH_STARTING_FILE), "w"):  # a hint for seconds: not synced
        pass  # lets the next wal-push see this pusher while its interpreter starts
    return spawn_helper(["walkeeper.commands.pusher", status, datadir, config.source or "", config.repo_choice or "",
                         own.name],
                        datadir, os.path.join(status, "push.log"))

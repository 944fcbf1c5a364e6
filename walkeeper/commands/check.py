"""`walkeeper check --archive`: prove, end to end, that the server archives into this repository.

Like pgBackRest's ``check``: read the server's archive settings, say clearly when archive_command
cannot be storing here (archiving off, another program, another repository), then force a WAL
switch and wait, bounded, until that segment is in the repository and reads back as wal-fetch
would read it (decrypted, decompressed, header checked). When the archiver fails meanwhile, the
reason comes from ``pg_stat_archiver`` and from walkeeper's own failure record (walkeeper.core.notify).
The answer is a monitoring-plugin result (status.CheckResult): one line, exit 0/1/2/3.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from walkeeper.core.config import Config, load_config
from walkeeper.core.errors import NotFound, WalkeeperError
from walkeeper.core.units import iso_utc, plural
from walkeeper.postgres.client import ConnOptions, psql
from walkeeper.repo.health import CRITICAL, OK, UNKNOWN, WARNING, CheckResult, local_failures

RESTORE_POINT = "walkeeper check --archive"
POLL = 0.2  # seconds between two looks at the repository
FAILURES_BEFORE_VERDICT = 3  # PostgreSQL tries a file 3 times, then waits a minute: failing, not flaky


# -- what archive_command runs (pure) ------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveCommand:
    """archive_command, read the way /bin/sh would run it (simple commands only)."""

    text: str
    kind: str  # "empty", "walkeeper" (wal-push %p), "walkeeper-other" (walkeeper, not wal-push %p), "other"
    program: str = ""
    config_path: str | None = None  # --config, or WALKEEPER_CONFIG=... before the program
    repo: str | None = None  # --repo, or WALKEEPER_REPO=...


def parse_archive_command(text: str) -> ArchiveCommand:
    """Find walkeeper, its global options and its subcommand in archive_command."""
    if not text.strip():
        return ArchiveCommand(text, "empty")
    try:
        words = shlex.split(text)
    except ValueError:
        return ArchiveCommand(text, "other", text.split()[0])
    env: dict[str, str] = {}
    if words and words[0] in ("env", "/usr/bin/env", "exec"):
        words = words[1:]
    while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if not words:
        return ArchiveCommand(text, "other")
    program = words[0]
    rest = words[1:]
    if Path(program).name.startswith("python") and rest[:2] == ["-m", "walkeeper"]:
        rest = rest[2:]
    elif Path(program).name != "walkeeper":
        return ArchiveCommand(text, "other", program)
    config_path, repo = env.get("WALKEEPER_CONFIG"), env.get("WALKEEPER_REPO")
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        name, _, value = option.partition("=")
        if name in ("--config", "--repo"):
            if not value and rest:
                value = rest.pop(0)
            if name == "--config":
                config_path = value
            else:
                repo = value
    kind = "walkeeper" if rest[:2] == ["wal-push", "%p"] and len(rest) == 2 else "walkeeper-other"
    return ArchiveCommand(text, kind, program, config_path, repo)


def repository_key(url: str) -> str:
    """A repository URL in a form two spellings of one repository share (path, file://, trailing /)."""
    url = url.strip()
    if url.startswith("file://"):
        url = url[len("file://"):]
    if "://" not in url:
        return "file://" + os.path.realpath(url)
    return url.rstrip("/")


def same_repository(a: str, b: str) -> bool:
    return repository_key(a) == repository_key(b)


def server_repository(command: ArchiveCommand) -> tuple[str | None, str]:
    """The repository archive_command stores into, as far as its text tells; and how that is known."""
    if command.repo:
        return command.repo, "its --repo"
    if command.config_path:
        try:
            return load_config(command.config_path, env={}).repo or None, f"its config {command.config_path}"
        except WalkeeperError as exc:
            return None, f"its config cannot be read here: {exc}"
    return None, "it names no config file (the server's environment decides)"


# -- the server ------------------------------------------------------------------------------------

_SETTINGS_SQL = """
select current_setting('archive_mode'), coalesce(current_setting('archive_library', true), ''),
       pg_is_in_recovery(), (select system_identifier from pg_control_system())
"""

_ARCHIVER_SQL = """
select archived_count, coalesce(last_archived_wal, ''), coalesce(extract(epoch from last_archived_time)::text, ''),
       failed_count, coalesce(last_failed_wal, ''), coalesce(extract(epoch from last_failed_time)::text, ''),
       extract(epoch from now())
from pg_stat_archiver
"""


@dataclass(frozen=True)
class Archiver:
    """pg_stat_archiver at one moment (times are the server's clock, POSIX seconds)."""

    archived_count: int
    last_archived_wal: str | None
    last_archived_time: float | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: float | None
    server_now: float

    def to_json(self) -> dict[str, Any]:
        return {"archived_count": self.archived_count, "last_archived_wal": self.last_archived_wal,
                "last_archived_time": iso_utc(self.last_archived_time), "failed_count": self.failed_count,
                "last_failed_wal": self.last_failed_wal, "last_failed_time": iso_utc(self.last_failed_time)}


def read_archiver(config: Config, conn: ConnOptions) -> Archiver:
    fields = psql(config, conn, _ARCHIVER_SQL, timeout=15).split("|")
    count, last, last_t, failed, failed_wal, failed_t, now = fields
    return Archiver(int(count), last or None, float(last_t) if last_t else None, int(failed), failed_wal or None,
                    float(failed_t) if failed_t else None, float(now))


def archived(archiver: Archiver, segment: str) -> bool:
    """Whether the archiver has archived ``segment`` or a later segment (names sort by position)."""
    last = archiver.last_archived_wal
    return bool(last) and len(last) >= 24 and not last.endswith(".history") and last[:24] >= segment


# -- the check -------------------------------------------------------------------------------------

@dataclass
class Preflight:
    """What ``check --archive`` found; ``result`` is the plugin answer, ``doc`` its --json form."""

    result: CheckResult
    doc: dict[str, Any] = field(default_factory=dict)

    def fail(self, status: int, message: str) -> Preflight:
        self.result.raise_to(status, message)
        return self


def failure_reason(archiver: Archiver, own: dict[str, Any] | None, since: float) -> str:
    """Why archiving fails, from the server's view and walkeeper's record (only failures since ``since``)."""
    when = iso_utc(archiver.last_failed_time) or "?"
    text = (f"archive_command failed for {archiver.last_failed_wal} (last at {when}, "
            f"{plural(archiver.failed_count, 'failure')} since the statistics were reset)")
    if own and own.get("last_error") and (own.get("last_failure") or 0) >= since:
        text += f"; walkeeper wal-push said: {own['last_error']}"
    elif own is None or (own.get("last_failure") or 0) < since:
        text += ("; walkeeper recorded no failure here since the check began (another program, another user's "
                 "state file, or a failure before walkeeper started: see the server log)")
    return text


def run_archive_check(config: Config, conn: ConnOptions, timeout: float) -> Preflight:
    """The whole preflight; never raises (what cannot be read is UNKNOWN)."""
    pre = Preflight(CheckResult(OK), {"repository": config.repo})
    try:
        return _check(config, conn, timeout, pre)
    except WalkeeperError as exc:
        pre.result.status = UNKNOWN
        pre.result.messages.append(str(exc))
        return pre


def _check(config: Config, conn: ConnOptions, timeout: float, pre: Preflight) -> Preflight:
    from walkeeper.core.wal import parse_wal_name
    from walkeeper.repo.repository import open_repository

    doc = pre.doc
    mode, library, in_recovery, sysid = psql(config, conn, _SETTINGS_SQL, timeout=15).split("|")
    command_text = psql(config, conn, "select current_setting('archive_command')", timeout=15)
    command = parse_archive_command(command_text)
    doc["server"] = {"archive_mode": mode, "archive_command": command_text, "archive_library": library or None,
                     "in_recovery": in_recovery == "t", "system_identifier": sysid}
    if mode == "off":
        return pre.fail(CRITICAL, "archive_mode is off: the server archives nothing (set archive_mode = on, "
                                  "then restart PostgreSQL)")
    if in_recovery == "t":
        return pre.fail(UNKNOWN, "the server is in recovery (a standby): a WAL switch cannot be forced there; "
                                 "run check --archive against the primary")
    if library:
        return pre.fail(CRITICAL, f"archive_library = '{library}' is set, so archive_command is ignored "
                                  "(set archive_library = '' and archive_command = 'walkeeper wal-push %p')")
    if command.kind == "empty":
        return pre.fail(CRITICAL, "archive_command is empty: PostgreSQL keeps WAL until one is set "
                                  "(archive_command = 'walkeeper wal-push %p')")
    if command.kind == "other":
        return pre.fail(CRITICAL, f"archive_command runs another program ({command.program or 'a shell'}), "
                                  f"not walkeeper: {command_text!r}")
    if command.kind == "walkeeper-other":
        return pre.fail(CRITICAL, f"archive_command calls walkeeper but not as 'wal-push %p': {command_text!r}")
    their_repo, how = server_repository(command)
    doc["archive_command_repository"] = their_repo
    if their_repo and not same_repository(their_repo, config.repo):
        return pre.fail(CRITICAL, f"archive_command stores into {their_repo} ({how}), but this check reads "
                                  f"{config.repo}: point both at one repository")
    if their_repo is None:
        pre.result.facts.append(f"cannot tell archive_command's repository ({how}); the switch decides")

    repo = open_repository(config)
    meta = repo.meta()
    if meta and meta.system_identifier and meta.system_identifier != sysid:
        return pre.fail(CRITICAL, f"the server is system {sysid}, repository {repo.storage.url} belongs to "
                                  f"{meta.system_identifier}")
    before = read_archiver(config, conn)
    started = time.time()
    psql(config, conn, f"select pg_create_restore_point('{RESTORE_POINT}')", timeout=15)  # WAL to switch away from
    segment = psql(config, conn, "select pg_walfile_name(pg_switch_wal())", timeout=15)
    doc["segment"] = segment
    name = parse_wal_name(segment)
    deadline = started + timeout
    archiver = before
    while True:
        archiver = read_archiver(config, conn)  # before looking in the repository: see below
        try:
            if repo.meta() is None:  # a new repository: the first wal-push creates it
                raise NotFound("no repository yet")
            repo.fetch_wal(name)
        except NotFound:
            pass
        except WalkeeperError as exc:
            return pre.fail(CRITICAL, f"{segment} is in {repo.storage.url} but cannot be read back: {exc}")
        else:
            seconds = time.time() - started
            doc["seconds"] = round(seconds, 3)
            doc["archiver"] = archiver.to_json()
            pre.result.facts.insert(0, f"{segment} archived and read back from {repo.storage.url} in {seconds:.1f}s")
            pre.result.perfdata.append(f"archive_seconds={seconds:.2f}s;;{timeout:.0f}")
            return pre
        doc["archiver"] = archiver.to_json()
        if archived(archiver, segment):
            # The server counted it archived before we looked: archive_command stored it elsewhere.
            return pre.fail(CRITICAL, f"the server archived {segment} (archive_command succeeded) but it is not "
                                      f"in {repo.storage.url}: archive_command stores into another repository")
        new_failures = archiver.failed_count - before.failed_count
        if new_failures >= FAILURES_BEFORE_VERDICT or (new_failures and time.time() >= deadline):
            own = local_failures(config).get("wal-push")
            doc["walkeeper_failures"] = {**own, "last_failure": iso_utc(own["last_failure"])} if own else None
            return pre.fail(CRITICAL, failure_reason(archiver, own, started))
        if time.time() >= deadline:
            return pre.fail(CRITICAL, f"{segment} did not reach {repo.storage.url} within {timeout:.0f}s "
                                      f"(the server's last archived file: {archiver.last_archived_wal or 'none'}; "
                                      "no failure reported: is the archiver behind?)")
        time.sleep(POLL)


__all__ = ["CRITICAL", "OK", "UNKNOWN", "WARNING", "parse_archive_command", "run_archive_check"]

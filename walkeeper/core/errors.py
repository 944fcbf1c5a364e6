"""One exception hierarchy for all of walkeeper.

Library code raises these; only the CLI turns them into exit codes (see ``exit_code``), so the
mapping lives in one place and library code never exits the process.

Each class carries ``code``, a small number (< 126) used as the exit status of every command.
restore_command (``wal-fetch``) is the exception: PostgreSQL treats *any* non-zero status below 126
as "this file is not in the archive" and may end recovery early on a shorter history. So a
wal-fetch that fails for any reason other than "not found" exits with ``FATAL_BASE + code``
(above 125), which makes PostgreSQL stop recovery instead.
"""

from __future__ import annotations

FATAL_BASE = 200


class WalkeeperError(Exception):
    """Base of every error walkeeper reports to a user."""

    code = 20
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.hint})" if self.hint else text


class NotFound(WalkeeperError):
    """The object does not exist. The only error wal-fetch reports as exit 1."""

    code = 1


class ConfigError(WalkeeperError):
    """Bad configuration file, environment variable or flag."""

    code = 3


class KeyMaterialError(WalkeeperError):
    """Encryption key missing, unreadable, too open, or not the key an object was written with."""

    code = 4


class IntegrityError(WalkeeperError):
    """Stored bytes are corrupted, truncated, tampered with, or do not match their checksum."""

    code = 5


class ConflictError(WalkeeperError):
    """A different object is already stored under this name; nothing was overwritten."""

    code = 6


class ForeignClusterError(WalkeeperError):
    """The WAL or backup comes from another database system than the repository's."""

    code = 7


class GapError(WalkeeperError):
    """A WAL segment is missing while later ones of the same timeline exist."""

    code = 8


class StorageError(WalkeeperError):
    """A persistent storage failure: permissions, full disk, refused credentials..."""

    code = 9


class TransientError(StorageError):
    """A failure worth retrying: timeout, connection reset, throttling, 5xx."""

    code = 10


class InvalidName(WalkeeperError):
    """A WAL file name, backup id or object key that walkeeper refuses to handle."""

    code = 11


class AlreadyExists(StorageError):
    """Raised by ``Storage.put(..., overwrite=False)`` when the key is taken."""

    code = 12


class InvalidWal(WalkeeperError):
    """A file handed to wal-push does not look like the WAL its name says."""

    code = 13


class PostgresError(WalkeeperError):
    """PostgreSQL or one of its tools (pg_basebackup, psql) failed."""

    code = 14


class RefusedError(WalkeeperError):
    """A precondition for a command does not hold (non-empty target, no usable backup...)."""

    code = 15


class LockedError(WalkeeperError):
    """Another walkeeper process holds a lock this command needs."""

    code = 16


def running_as() -> str:
    """Who this process runs as, for permission messages: 'postgres (uid 108)'."""
    import os
    import pwd

    try:
        return f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"
    except KeyError:
        return f"uid {os.geteuid()}"


class RestoreTestFailed(WalkeeperError):
    """restore-test: the cluster recovered but a check failed (the result is recorded)."""

    code = 21


class TargetNotReached(WalkeeperError):
    """restore-test: recovery stopped before the target (missing or unreadable WAL, target beyond the archive)."""

    code = 22


class ClusterNotStarted(WalkeeperError):
    """restore-test: the throwaway cluster did not start or did not finish recovery in time."""

    code = 23


class ReplicationRefused(PostgresError):
    """wal-receive: the server refuses replication (pg_hba.conf, role) or the replication slot is missing."""

    code = 24


INTERNAL_ERROR_CODE = 19  # an unexpected exception: a bug in walkeeper
USAGE_ERROR_CODE = 2  # bad command line (click's own code)
CLOSED_PIPE_CODE = 141  # the reader of our output went away: what a shell reports for SIGPIPE (128 + 13)


def exit_code(error: BaseException, *, restore_command: bool = False) -> int:
    """The exit status for ``error``; ``restore_command`` selects wal-fetch's stricter rules.

    Every code is below 56, so ``FATAL_BASE + code`` stays a valid exit status (<= 255).
    """
    if isinstance(error, WalkeeperError):
        code = error.code
    elif isinstance(getattr(error, "exit_code", None), int):
        code = USAGE_ERROR_CODE
    else:
        code = INTERNAL_ERROR_CODE
    if restore_command and code != NotFound.code:
        return FATAL_BASE + code
    return code

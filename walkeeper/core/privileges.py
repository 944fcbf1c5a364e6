"""Running as root: act as the owner of what is written, or refuse.

A repository that PostgreSQL archives into belongs to the server's user (archive_command runs as
that user), and so does a data directory: PostgreSQL refuses to start on one it does not own. A
command run as root that wrote there as root would leave files the owner cannot read or remove
(``backup`` objects ``expire`` can no longer delete, a restored data directory the server cannot
start on). So, as root, the commands that write into a local repository or a data directory switch
to that owner (supplementary groups, gid, uid, in that order) before they read or write anything,
and refuse with one line when there is no sensible owner. Non-root users are never changed.

The decision (``decide``) is a pure function of the command, the owners found and the user it runs
as, so that it can be checked by a table of cases; ``become`` applies it.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from walkeeper.core.errors import RefusedError

# Commands that write into the repository, and those that (also) write a data directory.
REPOSITORY_WRITERS = frozenset({"backup", "expire", "restore-point", "dump"})
DATA_DIRECTORY_WRITERS = frozenset({"restore", "pitr"})


@dataclass(frozen=True)
class Account:
    """A user to run as: uid and primary gid, with the name and home directory when /etc/passwd knows it."""

    uid: int
    gid: int
    name: str | None = None
    home: str | None = None

    def describe(self) -> str:
        return self.name or f"uid {self.uid}"

    @classmethod
    def of_uid(cls, uid: int, gid: int | None = None) -> Account:
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return cls(uid, uid if gid is None else gid)
        return cls(uid, entry.pw_gid if gid is None else gid, entry.pw_name, entry.pw_dir)

    @classmethod
    def named(cls, user: str) -> Account:
        """An account by name or number (``--owner postgres``, ``--owner 999``)."""
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            if user.isdigit():
                return cls.of_uid(int(user))
            raise RefusedError(f"no such user {user!r}",
                               hint="give the user PostgreSQL runs as, e.g. --owner postgres") from None
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)


def nearest_existing(path: str | os.PathLike[str]) -> Path:
    """``path`` itself or its closest existing ancestor (what a new directory would inherit from)."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def owner_of(path: str | os.PathLike[str]) -> Account:
    """The owner of ``path`` or, if it does not exist yet, of its nearest existing ancestor."""
    st = nearest_existing(path).stat()
    return Account.of_uid(st.st_uid)


@dataclass(frozen=True)
class Decision:
    """What a command run by ``euid`` does: keep running as it is (uid None), switch to ``uid``, or refuse."""

    uid: int | None = None
    refusal: str | None = None
    hint: str | None = None


def decide(command: str, euid: int, *, repo_owner: int | None, repo_exists: bool,
           target_owner: int | None = None, target: str = "", repo: str = "") -> Decision:
    """Whom ``command`` runs as. ``repo_owner``: owner of a local repository (or of its nearest existing
    parent when ``repo_exists`` is false), None for a remote one; ``target_owner``: owner of the data
    directory to write (or of its nearest existing parent), None when the command writes none."""
    if euid != 0:
        return Decision()
    if command in DATA_DIRECTORY_WRITERS:
        if target_owner is None:
            return Decision()
        if target_owner == 0:
            return Decision(refusal=(
                f"walkeeper {command} as root would leave {target} owned by root, and PostgreSQL refuses to "
                "start on a data directory it does not own"),
                hint=f"create it empty for the server's user first (install -d -o postgres -m 700 {target}), "
                     f"or run as that user (runuser -u postgres -- walkeeper {command} ...)")
        if repo_owner not in (None, target_owner) and repo_exists:
            return Decision(refusal=(
                f"the repository {repo} belongs to uid {repo_owner} but {target} to uid {target_owner}; "
                f"walkeeper {command} as root runs as the data directory's owner, who cannot read that repository"),
                hint="run as a user who can read both, or restore into a directory of the repository's owner")
        return Decision(uid=target_owner)
    if command in REPOSITORY_WRITERS:
        if repo_owner is None or (repo_owner == 0 and repo_exists):
            return Decision()  # remote, or a repository root owns anyway: nothing becomes unreadable
        if repo_owner == 0:
            return Decision(refusal=(
                f"walkeeper {command} as root would create the repository {repo} owned by root, where "
                "archive_command (run by the server's user) cannot write"),
                hint="create it for the server's user first: walkeeper init --owner postgres")
        return Decision(uid=repo_owner)
    return Decision()


def become(account: Account) -> None:
    """Switch this process to ``account`` for good: groups, then gid, then uid (the order that works).

    HOME, USER and LOGNAME follow, as with ``runuser -u``, so that ~/.pgpass, ~/.aws and the
    per-user state directories are the owner's.
    """
    if os.geteuid() == account.uid and os.getegid() == account.gid:
        return
    if account.name:
        os.initgroups(account.name, account.gid)
    else:
        os.setgroups([])
    os.setgid(account.gid)
    os.setuid(account.uid)
    if account.home:
        os.environ["HOME"] = account.home
    if account.name:
        os.environ["USER"] = os.environ["LOGNAME"] = account.name


def run_as_owner(command: str, repo_url: str, repo_path: Path | None, *, pgdata: str | None = None
                 ) -> Account | None:
    """Apply the rule of this module to ``command`` before it does anything; returns the account switched to.

    ``repo_path``: the directory of a local repository (walkeeper.storage.local_repository_path), None
    for a remote one. Raises RefusedError when run as root with no owner to act as.
    """
    if os.geteuid() != 0:
        return None
    repo_owner = owner_of(repo_path).uid if repo_path is not None else None
    target_owner = owner_of(pgdata).uid if pgdata is not None else None
    decision = decide(command, 0, repo_owner=repo_owner, repo_exists=bool(repo_path and repo_path.exists()),
                      target_owner=target_owner, target=os.path.abspath(pgdata) if pgdata else "",
                      repo=str(repo_path or repo_url))
    if decision.refusal:
        raise RefusedError(decision.refusal, hint=decision.hint)
    if decision.uid is None or decision.uid == 0:
        return None
    account = Account.of_uid(decision.uid)
    become(account)
    return account

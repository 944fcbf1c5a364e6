"""walkeeper init: everything a PostgreSQL host needs before its first archive_command, in one step.

It creates the repository (a local directory with the right owner and modes, an S3 prefix or a
directory over ssh) with its ``walkeeper.json``, and optionally a key file and a configuration
skeleton that point at each other; given a data directory or a connection it records the database
system identifier at once, so that a second cluster is refused from the very first push.

Why a repository is initialised rather than created by the first push: wal-fetch on a repository
without ``walkeeper.json`` must stay an error (a mistyped path must not read as an empty archive,
which would end recovery early), so a standby or a restore test set up before the first push needs
an initialised, empty repository, on which wal-fetch answers "not found".

Idempotent: a second run on the same repository changes nothing and says so; a repository of another
database system is refused (exit 7). As root, files are created for ``--owner`` (default: the data
directory's owner), and the repository is written as that user.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from walkeeper.core.config import Config, load_config
from walkeeper.core.config_render import render_config
from walkeeper.core.errors import ConfigError, ForeignClusterError, RefusedError, StorageError
from walkeeper.core.privileges import Account, become, owner_of
from walkeeper.postgres.cluster_identity import ClusterIdentity, identity_from_pgdata, identity_from_server
from walkeeper.storage import local_repository_path


@dataclass(frozen=True)
class InitOptions:
    owner: str | None = None
    pgdata: str | None = None
    conn: Any = None  # walkeeper.postgres.client.ConnOptions, or None for no connection
    generate_key: str | None = None
    write_config: str | None = None
    config_path: str | None = None  # the --config the command was given, for the "next" lines


@dataclass
class InitReport:
    lines: list[str] = field(default_factory=list)
    changed: bool = False
    config_path: str | None = None
    repo: str = ""
    system_identifier: str | None = None

    def did(self, line: str) -> None:
        self.lines.append(line)
        self.changed = True

    def kept(self, line: str) -> None:
        self.lines.append(line)


# -- creating files for their owner ----------------------------------------------------------------------------

def _chown(path: Path, owner: Account | None) -> None:
    if owner is not None and os.geteuid() == 0:
        os.chown(path, owner.uid, owner.gid, follow_symlinks=False)


def make_directories(path: Path, owner: Account | None) -> list[Path]:
    """Create ``path`` and its missing parents 0700 for ``owner``; returns those created."""
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise StorageError(f"cannot create {directory}: {exc.strerror or exc} (running as uid {os.geteuid()})",
                               hint="create it, or run as root with --owner") from None
        _chown(directory, owner)
        created.append(directory)
    return created


def write_new_file(path: Path, text: str, owner: Account | None) -> None:
    """Write a file that must not exist yet (O_EXCL), mode 0600, for ``owner``; durable before we report it."""
    make_directories(path.parent, owner)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise RefusedError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        _chown(path, owner)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _owner_text(owner: Account | None) -> str:
    return f", owner {owner.describe()}" if owner is not None else ""


# -- init ------------------------------------------------------------------------------------------------------

def resolve_owner(options: InitOptions) -> Account | None:
    """Whom the files are for: --owner, else the data directory's owner (as root); None: the caller itself."""
    if os.geteuid() != 0:
        if options.owner is not None and Account.named(options.owner).uid != os.geteuid():
            raise RefusedError(f"--owner {options.owner}: only root can create files for another user",
                               hint="run as root, or as that user without --owner")
        return None
    if options.owner is not None:
        return Account.named(options.owner)
    if options.pgdata is not None:
        return owner_of(options.pgdata)
    raise RefusedError("as root, walkeeper init needs --owner USER (the user PostgreSQL runs as) or --pgdata DIR "
                       "(whose owner is taken)", hint="e.g. walkeeper init --owner postgres")


def _check_existing_config(path: Path, repo: str, key_file: str | None) -> None:
    existing = load_config(str(path), env={})
    if existing.repo != repo:
        raise RefusedError(f"{path} already exists and names repository {existing.repo!r}, not {repo!r}; "
                           "refusing to change it", hint="give another --write-config FILE, or edit that file")
    if key_file and existing.encryption.key_file and os.path.abspath(existing.encryption.key_file) != key_file:
        raise RefusedError(f"{path} already exists and names key file {existing.encryption.key_file}, not {key_file}")


def _repository_is_empty(storage: Any) -> bool:
    return next(iter(storage.list("")), None) is None


@dataclass
class _Plan:
    """What init will do, settled before anything is written."""

    config: Config
    key_path: Path | None
    config_path: Path | None
    repo_dir: Path | None  # None: a remote repository
    identity: ClusterIdentity | None
    identity_checked: bool = False  # the connection (if any) was already asked


def run_init(config: Config, options: InitOptions) -> InitReport:
    """Prepare key, configuration and repository; every step says what it did or that it had nothing to do.

    Checks first, then the files root may have to create for the owner (key, configuration, the local
    repository's directories), then the repository itself, written as its owner, as archive_command will.
    """
    report = InitReport()
    owner = resolve_owner(options)
    plan = _plan(config, options, ask_server=owner is None)  # as root, psql runs as the owner, later
    _write_files(plan, owner, options, report)
    if owner is not None:
        become(owner)
    if not plan.identity_checked:
        plan.identity = _server_identity(plan.config, options, plan.identity)
    _init_repository(plan.config, plan.identity, report)
    return report


def _plan(config: Config, options: InitOptions, *, ask_server: bool) -> _Plan:
    if options.generate_key and options.write_config and os.path.abspath(options.generate_key) == \
            os.path.abspath(options.write_config):
        raise ConfigError("--generate-key and --write-config name the same file")
    identity = identity_from_pgdata(options.pgdata) if options.pgdata else None
    if ask_server:
        identity = _server_identity(config, options, identity)
    key_path = Path(os.path.abspath(options.generate_key)) if options.generate_key else None
    if key_path is not None:
        config = dataclasses.replace(config, encryption=dataclasses.replace(config.encryption,
                                                                             key_file=str(key_path)))
    if not config.repo:
        raise ConfigError("no repository given", hint="walkeeper --repo URL init ... (or repo in --config FILE)")
    repo_dir = local_repository_path(config.repo)
    if repo_dir is not None and str(repo_dir) != config.repo:
        config = dataclasses.replace(config, repo=str(repo_dir))  # archive_command runs in the data directory
    config_path = Path(os.path.abspath(options.write_config)) if options.write_config else None
    if config_path is not None and config_path.exists():
        _check_existing_config(config_path, config.repo, config.encryption.key_file)
    if config.encryption.method != "none":
        if not config.encryption.key_file:
            raise ConfigError(f"encryption method {config.encryption.method} needs a key",
                              hint="add --generate-key FILE, or set [encryption] key_file")
        if key_path is None and not os.path.exists(config.encryption.key_file):
            raise ConfigError(f"key file {config.encryption.key_file} does not exist",
                              hint="add --generate-key FILE to create one")
    if repo_dir is not None:
        _check_local_repository(repo_dir, identity, new_key=key_path is not None and not key_path.exists())
    return _Plan(config, key_path, config_path, repo_dir, identity, identity_checked=ask_server)


def _server_identity(config: Config, options: InitOptions, identity: ClusterIdentity | None
                     ) -> ClusterIdentity | None:
    """The connected server's identity when connection options were given; it must match --pgdata's."""
    if options.conn is None:
        return identity
    server = identity_from_server(config, options.conn)
    if identity is not None and identity.system_identifier != server.system_identifier:
        raise RefusedError(f"{identity.source} is database system {identity.system_identifier}, but the server "
                           f"is {server.system_identifier}: they are not the same cluster")
    return server


def _write_files(plan: _Plan, owner: Account | None, options: InitOptions, report: InitReport) -> None:
    from walkeeper.codec import generate_key

    config = plan.config
    if plan.key_path is not None:
        if plan.key_path.exists():
            report.kept(f"key {plan.key_path} exists: kept (not overwritten)")
        else:
            write_new_file(plan.key_path, generate_key() + "\n", owner)
            report.did(f"wrote a new key to {plan.key_path} (mode 0600{_owner_text(owner)}); keep a copy "
                       "somewhere safe: without it the archive cannot be read")
    if plan.config_path is not None:
        if plan.config_path.exists():
            report.kept(f"configuration {plan.config_path} exists and names this repository: kept")
        else:
            write_new_file(plan.config_path, render_config(config), owner)
            report.did(f"wrote configuration {plan.config_path} (repo = {config.repo}"
                       + (f", key_file = {config.encryption.key_file}" if config.encryption.key_file else "")
                       + f"{_owner_text(owner)})")
        report.config_path = str(plan.config_path)
    elif options.config_path:
        report.config_path = os.path.abspath(options.config_path)
    report.repo = config.repo
    repo_dir = plan.repo_dir
    if repo_dir is not None:
        if not repo_dir.exists():
            make_directories(repo_dir, owner)
            report.did(f"created directory {repo_dir} (mode 0700{_owner_text(owner)})")
        elif owner is not None and repo_dir.stat().st_uid != owner.uid and not any(repo_dir.iterdir()):
            _chown(repo_dir, owner)
            os.chmod(repo_dir, 0o700)
            report.did(f"gave the empty directory {repo_dir} to {owner.describe()} (mode 0700)")


def _check_local_repository(repo_dir: Path, identity: ClusterIdentity | None, *, new_key: bool) -> None:
    """What can be refused before a key or configuration is written (remote ones are checked later)."""
    from walkeeper.repo.layout import META_KEY

    if repo_dir.exists() and not repo_dir.is_dir():
        raise RefusedError(f"{repo_dir} exists and is not a directory")
    try:
        meta = json.loads((repo_dir / META_KEY).read_bytes())
    except (OSError, ValueError):
        return  # absent, or unreadable by this user: the owner's own check below decides
    recorded = meta.get("system_identifier")
    if identity is not None and recorded not in (None, str(identity.system_identifier)):
        raise ForeignClusterError(
            f"repository {repo_dir} belongs to database system {recorded}, but {identity.source} is system "
            f"{identity.system_identifier}; refusing to share a repository between two clusters",
            hint="give each cluster its own repository (a new primary after pg_upgrade or initdb needs a new one)")
    if new_key and meta.get("key_id"):
        raise RefusedError(f"repository {repo_dir} is already written with key id {meta['key_id']}; a new key "
                           "could not read it", hint="give that key's file (--config or [encryption] key_file) "
                                                     "instead of --generate-key")


def _init_repository(config: Config, identity: ClusterIdentity | None, report: InitReport) -> None:
    from walkeeper.repo.layout import META_KEY
    from walkeeper.repo.repository import Repository, build_codec
    from walkeeper.storage import open_storage

    repo = Repository(open_storage(config.repo, config), build_codec(config))
    url = repo.storage.url
    meta = repo.meta()
    if meta is None and not _repository_is_empty(repo.storage):
        raise RefusedError(f"{url} is not empty but holds no {META_KEY}: it is not a walkeeper repository "
                           "(or its identity file was lost); refusing to initialise over it",
                           hint="choose a new or empty location for the repository")
    sysid = identity.system_identifier if identity else None
    if meta is not None and sysid is not None and meta.system_identifier not in (None, str(sysid)):
        raise ForeignClusterError(
            f"repository {url} belongs to database system {meta.system_identifier}, but {identity.source} "  # type: ignore[union-attr]
            f"is system {sysid}; refusing to share a repository between two clusters",
            hint="give each cluster its own repository (a new primary after pg_upgrade or initdb needs a new one)")
    after = repo.ensure_identity(sysid, identity.segment_size if identity else None,
                                 identity.pg_version if identity else None)
    report.system_identifier = after.system_identifier
    if meta is None:
        what = (f"database system {after.system_identifier} ({identity.source}"  # type: ignore[union-attr]
                f"{_facts(after.pg_version, after.wal_segment_size)})" if after.system_identifier
                else "no database system yet: the first wal-push records it")
        report.did(f"initialised repository {url} ({META_KEY}: {what}; key id {after.key_id or 'none'})")
    elif after != meta:
        report.did(f"repository {url}: recorded database system {after.system_identifier}"
                   f"{_facts(after.pg_version, after.wal_segment_size)} (was not recorded yet)")
    else:
        report.kept(f"repository {url} is already initialised (database system "
                    f"{meta.system_identifier or 'not recorded yet'}, key id {meta.key_id or 'none'}): nothing to do")


def _facts(version: int | None, segment_size: int | None) -> str:
    parts = []
    if version:
        parts.append(f"PostgreSQL {version}")
    if segment_size:
        parts.append(f"{segment_size // (1024 * 1024)} MiB WAL segments")
    return (", " + ", ".join(parts)) if parts else ""


def next_steps(report: InitReport) -> list[str]:
    """The archive_command and restore_command lines that use what init prepared."""
    from walkeeper.postgres.recovery_conf import walkeeper_executable

    try:
        exe = walkeeper_executable()
    except ConfigError:
        exe = "walkeeper"
    where = f"--config {report.config_path}" if report.config_path else f"--repo {report.repo}"
    return [f"next, in postgresql.conf: archive_command = '{exe} {where} wal-push %p'",
            f"  and, where recovering: restore_command = '{exe} {where} wal-fetch %f %p'"]

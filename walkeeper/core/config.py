"""Configuration: frozen dataclasses filled from a TOML file, then WALKEEPER_* variables, then flags.

Every setting ``[section] key`` can be overridden by the environment variable
``WALKEEPER_<SECTION>_<KEY>`` (upper case), and the top-level ``repo`` by ``WALKEEPER_REPO``.

Several repositories (README "Several repositories"): ``[[repository]]`` tables, each with a ``name``, its
``repo`` URL and its own ``[repository.s3]``, ``.ssh``, ``.encryption``, ``.compression``, ``.retention``
tables, whose keys override the top-level tables' for that repository. A top-level ``repo`` is the common case
of one repository named "default". A Config describes one repository (``repository_name``, ``repo`` and its
sections) and knows the others (``for_repository``, ``each_repository``): code written for one repository keeps
working on the first.
Unknown keys, wrong types and values out of range are errors that name the file (or variable), the
key and what was expected: a typo in a backup tool's configuration must not silently fall back to a
default. The same holds for a ``WALKEEPER_<SECTION>_*`` variable of a known section; other
``WALKEEPER_*`` variables (WALKEEPER_CONFIG, the notify hook's WALKEEPER_EVENT, test knobs) are not
settings and are left alone, so only those prefixed by a section name are checked.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from walkeeper.core.configbase import (
    CONFIG_ENV,
    ENV_PREFIX,
    PREFETCH,
    PUSH_AHEAD,
    REPO_ENV,
    config_dir,
    env_name,
    push_identity,
    repositories_identity,
    resolve_path,
)
from walkeeper.core.errors import ConfigError


@dataclass(frozen=True)
class CompressionConfig:
    method: str = "zstd"
    level: int = 1  # measured (README "Speed"): same ratio as 3 on pgbench WAL, ~15% less CPU per segment
    threads: int = 0


@dataclass(frozen=True)
class EncryptionConfig:
    method: str = "aes-256-gcm"
    key_file: str | None = None
    key_files: list | None = None  # several keys: the first writes, all read (README "Keys")
    key_command: str | None = None  # /bin/sh -c COMMAND prints the key (Vault, KMS, token); run once per process
    key_command_timeout: float = 10.0


@dataclass(frozen=True)
class RetryConfig:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0


@dataclass(frozen=True)
class S3Config:
    """[s3]: used when repo = "s3://bucket/prefix". Credentials come from boto3's standard chain."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    addressing_style: str = "auto"
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    multipart_chunk_size: int = 16 * 1024 * 1024  # streams larger than one chunk go up as multipart
    max_concurrency: int = 4  # parts in flight at once (memory ~ (max_concurrency + 1) * chunk size)
    conditional_writes: bool = True  # If-None-Match: *; false for stores without it (then HEAD, best effort)


@dataclass(frozen=True)
class SshConfig:
    """[ssh]: used when repo = "ssh://user@host[:port]/path" (rsync over ssh)."""

    identity_file: str | None = None
    known_hosts_file: str | None = None
    strict_host_key_checking: bool = True
    connect_timeout: int = 10
    io_timeout: int = 60  # seconds without progress before a transfer counts as failed (transient)
    control_persist: int = 10  # seconds the shared ssh connection outlives its last use


@dataclass(frozen=True)
class ArchiveConfig:
    """[archive]: wal-push behaviour (push-ahead: README "Speed")."""

    push_ahead: int = PUSH_AHEAD  # .ready segments the background pusher stores ahead of PostgreSQL's calls (0 = off)
    workers: int = 2  # segments the pusher compresses/encrypts/stores in parallel
    status_dir: str | None = None  # records of pushed-ahead segments; default under /var/tmp/walkeeper-<uid>
    idle_timeout: float = 10.0  # the pusher exits after this many seconds with nothing to push
    self_check: bool = False  # decode each object and compare it with the file before storing it (~25 ms/segment)
    # Several repositories (README "Several repositories"): "all" = exit 0 once every repository holds the file;
    # "any" = once one does, the others recorded as behind and caught up in WAL order.
    require: str = "all"
    catch_up_interval: float = 10.0  # seconds a repository that failed is left alone before the next try


@dataclass(frozen=True)
class RestoreConfig:
    """[restore]: wal-fetch behaviour (prefetch: README "Speed")."""

    prefetch: int = PREFETCH  # segments the background prefetcher keeps ready ahead of recovery (0 = off)
    spool_dir: str | None = None  # default under /var/tmp/walkeeper-<uid>, outside the data directory
    workers: int = 2  # parallel downloads/decodes of the prefetcher
    spool_max_mb: int = 1024  # upper bound of the spool's size, whatever prefetch says
    idle_timeout: float = 60.0  # the prefetcher exits after this many seconds without a request
    gap_wait: float = 10.0  # a missing segment with later ones stored: wait this long for it before "gap"


@dataclass(frozen=True)
class ReceiveConfig:
    """[receive]: wal-receive, the pg_receivewal service (README "Streaming WAL into the repository")."""

    slot: str = "walkeeper"  # the physical replication slot pg_receivewal streams from
    synchronous: bool = False  # pg_receivewal --synchronous: flush and report at once (synchronous_standby_names)
    partial_interval: float = 10.0  # seconds between uploads of the segment being received (the recovery point)
    spool_dir: str | None = None  # pg_receivewal's directory; default under /var/tmp/walkeeper-<uid>
    restart_max_delay: float = 60.0  # pg_receivewal is restarted after a failure, waiting up to this long


@dataclass(frozen=True)
class BackupConfig:
    """[backup]: base backups."""

    pg_bin_dir: str | None = None
    wal_wait_timeout: float = 300.0
    # threads compressing/encrypting a backup and decoding one on restore; 1 = one thread, as before
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_chain: int = 8  # `check` warns when a restore needs more backups than this (a full + incrementals)


@dataclass(frozen=True)
class DumpRetentionConfig:
    """[retention.dumps]: what `walkeeper expire` keeps of logical dumps (no rule: dumps are not expired)."""

    keep: int | None = None  # the newest N complete dumps
    keep_days: float | None = None  # every dump of the last D days
    keep_daily: int | None = None  # grandfather-father-son: the newest dump of each of the last N days ...
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None


@dataclass(frozen=True)
class RetentionConfig:
    """[retention]: what `walkeeper expire` keeps (several set: a backup kept by any rule stays)."""

    keep: int | None = None  # the newest N complete backups
    keep_days: float | None = None  # a recovery window: any moment of the last D days stays recoverable
    keep_daily: int | None = None  # grandfather-father-son: the newest backup of each of the last N days ...
    keep_weekly: int | None = None  # ... ISO weeks
    keep_monthly: int | None = None  # ... months
    keep_yearly: int | None = None  # ... years
    time_zone: str | None = None  # IANA name the periods are counted in (default: this host's local zone)
    dumps: DumpRetentionConfig = field(default_factory=DumpRetentionConfig)


@dataclass(frozen=True)
class NotifyConfig:
    """[notify]: a command run after a failure of wal-push, wal-fetch (not "not found"), backup, expire."""

    on_failure: str | None = None  # run with /bin/sh -c; WALKEEPER_EVENT, _OBJECT, _ERROR in its environment
    timeout: float = 10.0  # seconds before the command is killed: it never holds up the archive for long
    min_interval: float = 3600.0  # seconds between two notifications of the same event
    state_file: str | None = None  # last send time per event (default ~/.cache/walkeeper/notify-state.json)


DEFAULT_REPOSITORY = "default"
# Sections a [[repository]] table may override for its repository (the others are about this host's
# PostgreSQL, its pg_wal and its processes, shared by all repositories).
REPOSITORY_SECTIONS = ("compression", "encryption", "s3", "ssh", "retention")
# Key sources: a repository naming any of them replaces all three (keys are not merged across repositories).
_KEY_SOURCES = ("key_file", "key_files", "key_command")


@dataclass(frozen=True)
class RepositoryConfig:
    """One configured repository: its name, URL and its sections (top-level ones with its overrides applied)."""

    name: str
    repo: str
    compression: CompressionConfig
    encryption: EncryptionConfig
    s3: S3Config
    ssh: SshConfig
    retention: RetentionConfig


@dataclass(frozen=True)
class Config:
    repo: str = ""
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    s3: S3Config = field(default_factory=S3Config)
    ssh: SshConfig = field(default_factory=SshConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    receive: ReceiveConfig = field(default_factory=ReceiveConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    source: str | None = field(default=None, metadata={"internal": True})
    # The repository this Config describes, and every configured one in order (empty: just this one).
    repository_name: str = field(default=DEFAULT_REPOSITORY, metadata={"internal": True})
    repositories: tuple[RepositoryConfig, ...] = field(default=(), metadata={"internal": True})
    # True when --repo NAME / WALKEEPER_REPO=NAME picked this repository (commands may then act on it alone).
    repository_selected: bool = field(default=False, metadata={"internal": True})
    # --repo / WALKEEPER_REPO as given (a name or a URL), so that helpers load the same configuration.
    repo_choice: str | None = field(default=None, metadata={"internal": True})

    def repository_names(self) -> list[str]:
        """The configured repositories' names, in configured order."""
        return [r.name for r in self.repositories] or [self.repository_name]

    def for_repository(self, name: str | None) -> Config:
        """A Config whose ``repo`` and sections are those of repository ``name`` (None: the first)."""
        if not self.repositories:
            if name is None or name == self.repository_name:
                return self
            raise unknown_repository(name, self.repository_names())
        if name is None:
            chosen = self.repositories[0]
        else:
            found = [r for r in self.repositories if r.name == name]
            if not found:
                raise unknown_repository(name, self.repository_names())
            chosen = found[0]
        if chosen.name == self.repository_name and chosen.repo == self.repo:
            return self
        return dataclasses.replace(
            self, repo=chosen.repo, repository_name=chosen.name, compression=chosen.compression,
            encryption=chosen.encryption, s3=chosen.s3, ssh=chosen.ssh, retention=chosen.retention)

    def each_repository(self) -> list[Config]:
        """One Config per configured repository, in configured order."""
        return [self.for_repository(name) for name in self.repository_names()]

    def push_repositories(self) -> list[Config]:
        """The repositories wal-push stores into: all of them, or the one --repo NAME selected."""
        return [self] if self.repository_selected else self.each_repository()

    def fetch_repositories(self) -> list[Config]:
        """The repositories wal-fetch reads, in the order it tries them: --repo NAME's first, then configured."""
        first = self if self.repository_selected else self.for_repository(None)
        return [first, *(c for c in self.each_repository() if c.repository_name != first.repository_name)]

    def push_identity(self) -> str:
        """What the pusher's records vouch for (walkeeper.core.configbase.push_identity)."""
        return push_identity([(c.repository_name, c.repo) for c in self.push_repositories()], self.archive.require)

    def fetch_identity(self) -> str:
        """What the prefetcher's spool holds files of (walkeeper.core.configbase.repositories_identity)."""
        return repositories_identity([(c.repository_name, c.repo) for c in self.fetch_repositories()])


def unknown_repository(name: str, names: list[str]) -> ConfigError:
    return ConfigError(f"no repository named {name!r} is configured (configured: {', '.join(names)})",
                       hint="use one of these names, or give a repository URL")


def is_repository_name(value: str) -> bool:
    """A safe name: a letter, then letters, digits, '_' or '-' (at most 64): fits keys, files, labels, JSON."""
    if not 1 <= len(value) <= 64 or not value.isascii() or not value[0].isalpha():
        return False
    return all(c.isalnum() or c in "_-" for c in value)


# Settings holding file paths: relative values in a config file are relative to that file's own
# directory (symlinks followed: walkeeper.core.configbase.config_dir, which the fast path uses too).
PATH_FIELDS = {
    ("encryption", "key_file"),
    ("encryption", "key_files"),
    ("ssh", "identity_file"),
    ("ssh", "known_hosts_file"),
    ("restore", "spool_dir"),
    ("archive", "status_dir"),
    ("receive", "spool_dir"),
    ("backup", "pg_bin_dir"),
    ("notify", "state_file"),
}
_CHOICES = {
    ("compression", "method"): ("zstd", "none"),
    ("encryption", "method"): ("aes-256-gcm", "x25519-aes-256-gcm", "none"),
    ("s3", "sse"): (None, "AES256", "aws:kms"),
    ("s3", "addressing_style"): ("auto", "path", "virtual"),
    ("archive", "require"): ("all", "any"),
}


# Numeric settings with a valid range (inclusive; None = unbounded): checked when the file or the
# environment is read, so that a bad value fails at load with the range, not later deep inside a command.
_RANGES: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("compression", "level"): (1, 22),  # zstd's levels
    ("retry", "attempts"): (1, None),
    ("retry", "base_delay"): (0, None),
    ("retry", "max_delay"): (0, None),
    ("archive", "push_ahead"): (0, None),
    ("archive", "workers"): (1, None),
    ("archive", "idle_timeout"): (0, None),
    ("archive", "catch_up_interval"): (0, None),
    ("restore", "prefetch"): (0, None),
    ("restore", "workers"): (1, None),
    ("restore", "idle_timeout"): (0, None),
    ("receive", "partial_interval"): (0.1, None),
    ("receive", "restart_max_delay"): (1, None),
    ("backup", "workers"): (1, None),
    ("encryption", "key_command_timeout"): (0.1, 3600),
    ("s3", "connect_timeout"): (0, None),
    ("s3", "read_timeout"): (0, None),
    ("s3", "max_concurrency"): (1, None),
    ("ssh", "connect_timeout"): (1, None),
    ("ssh", "io_timeout"): (1, None),
    ("notify", "timeout"): (0, None),
    ("notify", "min_interval"): (0, None),
}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _sections() -> dict[str, type]:
    return {
        f.name: hint for f, hint in ((f, _hints(Config)[f.name]) for f in dataclasses.fields(Config))
        if dataclasses.is_dataclass(hint)
    }


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint) if arg is not type(None))
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list of strings"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any, where: str, from_env: bool) -> Any:
    """Check (file) or convert (environment) one value against a field's type."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for kind in allowed:
        if kind is type(None):
            if from_env and value == "":
                return None
            continue
        if kind is list:  # a list of strings; from the environment, comma-separated
            if from_env:
                return [part for part in value.split(",") if part]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
            continue
        if from_env:
            try:
                if kind is bool:
                    lowered = value.strip().lower()
                    if lowered in ("1", "true", "yes", "on"):
                        return True
                    if lowered in ("0", "false", "no", "off"):
                        return False
                    continue
                return kind(value)
            except ValueError:
                continue
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, bool):
            continue
        if isinstance(value, kind):
            return value
    raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")


def _check_choice(section: str, key: str, value: Any, where: str) -> None:
    """Refuse a value outside the setting's choices or numeric range, naming what is valid."""
    choices = _CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(str(c) for c in choices if c)}")
    low, high = _RANGES.get((section, key), (None, None))
    if isinstance(value, float) and value != value:
        raise ConfigError(f"{where}: expected a number, got nan")
    if isinstance(value, int | float) and not isinstance(value, bool) and (
            (low is not None and value < low) or (high is not None and value > high)):
        valid = f"{low} to {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{where}: {value} is out of range (valid: {valid})")


def _check_env_names(env: Mapping[str, str], sections: dict[str, type]) -> None:
    """A WALKEEPER_<SECTION>_* variable of a known section must name a setting (a typo is an error).

    Other WALKEEPER_* variables are not settings (WALKEEPER_CONFIG, WALKEEPER_REPO, the notify hook's
    WALKEEPER_EVENT ..., test and script knobs) and are not checked.
    """
    for name in env:
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):]
        for section, cls in sections.items():
            prefix = f"{section.upper()}_"
            if not rest.startswith(prefix):
                continue
            valid = [env_name(section, key) for key in _hints(cls)]
            if name not in valid:
                import difflib

                near = difflib.get_close_matches(name, valid, n=1, cutoff=0.0)
                raise ConfigError(f"unknown environment variable {name}: [{section}] has no such setting",
                                  hint=f"did you mean {near[0]}? fix or unset it" if near else "unset it")


def _section_values(section: str, cls: type, table: Mapping[str, Any], source: str,
                    base_dir: str | None) -> dict[str, Any]:
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{source}: [{section}] {key}"
        if key in hints and dataclasses.is_dataclass(hints[key]):  # a sub-table: [retention.dumps]
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a table ([{section}.{key}])")
            values[key] = hints[key](**_section_values(f"{section}.{key}", hints[key], value, source, base_dir))
            continue
        if key not in hints:
            known = ", ".join(hints)
            raise ConfigError(f"{source}: unknown key {key!r} in [{section}] (known keys: {known})")
        value = _coerce(value, hints[key], where, from_env=False)
        _check_choice(section, key, value, where)
        if (section, key) in PATH_FIELDS and value and base_dir is not None:
            value = [resolve_path(v, base_dir) for v in value] if isinstance(value, list) else \
                resolve_path(value, base_dir)
        values[key] = value
    return values


def _read_file(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable by uid {os.getuid()}",
                          hint="fix its permissions or run as its owner") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory", hint="give the path of the TOML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None


def load_config(path: str | None = None, *, env: Mapping[str, str] | None = None,
                repo: str | None = None) -> Config:
    """Build the configuration: defaults < file < environment < flags."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV) or None
    sections = _sections()
    raw: dict[str, dict[str, Any]] = {name: {} for name in sections}
    top: dict[str, Any] = {}
    tables: list[tuple[str, str, dict[str, dict[str, Any]]]] = []  # [[repository]]: name, URL, overrides

    if path:
        data = _read_file(path)
        base_dir = config_dir(path)
        for key, value in data.items():
            if key in sections:
                if not isinstance(value, dict):
                    raise ConfigError(f"{path}: [{key}] must be a table")
                raw[key].update(_section_values(key, sections[key], value, path, base_dir))
            elif key == "repo":
                top["repo"] = _coerce(value, str, f"{path}: repo", from_env=False)
            elif key == "repository":
                tables = _repository_tables(value, sections, path, base_dir)
            else:
                known = ", ".join(["repo", "[[repository]]", *(f"[{s}]" for s in sections)])
                raise ConfigError(f"{path}: unknown key {key!r} (known: {known})")
        if tables and "repo" in top:
            raise ConfigError(f"{path}: both a top-level repo and [[repository]] tables are set",
                              hint="keep one: move the top-level repo into a [[repository]] table with a name")

    _check_env_names(env, sections)
    for section, cls in sections.items():
        for key, hint in _hints(cls).items():
            if dataclasses.is_dataclass(hint):
                continue  # sub-tables ([retention.dumps]) come from the file only
            name = env_name(section, key)
            if name in env:
                value = _coerce(env[name], hint, f"environment variable {name}", from_env=True)
                _check_choice(section, key, value, f"environment variable {name}")
                raw[section][key] = value
    built = {name: cls(**raw[name]) for name, cls in sections.items()}
    repositories = tuple(
        RepositoryConfig(name=name, repo=url, **{
            section: _override(section, sections[section], raw[section], overrides.get(section, {}), env)
            for section in REPOSITORY_SECTIONS})
        for name, url, overrides in tables)
    if not repositories:
        repositories = (RepositoryConfig(name=DEFAULT_REPOSITORY, repo=top.get("repo", ""),
                                         **{section: built[section] for section in REPOSITORY_SECTIONS}),)
    config = Config(**built, source=path, repositories=repositories).for_repository(None)
    # --repo (else WALKEEPER_REPO): a configured name selects that repository; anything else is a URL
    # that replaces the configured set by one repository ("default") with the top-level sections.
    choice = repo or env.get(REPO_ENV) or None
    if choice is None:
        return config
    if choice in config.repository_names() and (len(repositories) > 1 or tables):
        return dataclasses.replace(config.for_repository(choice), repository_selected=True, repo_choice=choice)
    single = RepositoryConfig(name=DEFAULT_REPOSITORY, repo=choice,
                              **{section: built[section] for section in REPOSITORY_SECTIONS})
    return Config(**built, source=path, repositories=(single,), repo_choice=choice).for_repository(None)


def _override(section: str, cls: type, base: dict[str, Any], own: dict[str, Any], env: Mapping[str, str]) -> Any:
    """A repository's section: the top-level values, its own over them, the environment over both."""
    merged = dict(base)
    if section == "encryption" and any(key in own for key in _KEY_SOURCES):
        for key in _KEY_SOURCES:  # its own key sources replace the top-level ones, never add to them
            merged.pop(key, None)
    if section == "retention" and "dumps" in own and "dumps" in merged:
        own = {**own, "dumps": dataclasses.replace(merged["dumps"], **{
            f.name: getattr(own["dumps"], f.name) for f in dataclasses.fields(own["dumps"])
            if getattr(own["dumps"], f.name) is not None})}
    merged.update(own)
    for key, hint in _hints(cls).items():  # file < environment, in every repository
        name = env_name(section, key)
        if not dataclasses.is_dataclass(hint) and name in env:
            merged[key] = _coerce(env[name], hint, f"environment variable {name}", from_env=True)
    return cls(**merged)


def _repository_tables(value: Any, sections: dict[str, type], path: str, base_dir: str
                       ) -> list[tuple[str, str, dict[str, dict[str, Any]]]]:
    """The [[repository]] tables: (name, URL, {section: its own values}) in file order, checked."""
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{path}: repository must be an array of tables ([[repository]] with name and repo)")
    tables: list[tuple[str, str, dict[str, dict[str, Any]]]] = []
    for index, table in enumerate(value, 1):
        where = f"{path}: [[repository]] #{index}"
        name = table.get("name")
        if name is None:
            raise ConfigError(f"{where} has no name", hint='add name = "..." (letters, digits, _ and -)')
        if not isinstance(name, str) or not is_repository_name(name):
            raise ConfigError(f"{where}: name {name!r} is not a safe name",
                              hint="use a letter, then letters, digits, _ or - (at most 64)")
        where = f"{path}: [[repository]] {name}"
        if any(name == seen for seen, _url, _own in tables):
            raise ConfigError(f"{where}: the name is used twice", hint="give each repository its own name")
        url = table.get("repo")
        if url is None or url == "":
            raise ConfigError(f"{where} has no repo", hint='add repo = "URL or path" to the table')
        url = _coerce(url, str, f"{where} repo", from_env=False)
        twin = [seen for seen, seen_url, _own in tables if seen_url.rstrip("/") == url.rstrip("/")]
        if twin:
            raise ConfigError(f"{where}: repository {twin[0]} has the same repo {url}",
                              hint="each [[repository]] must name a different place")
        own: dict[str, dict[str, Any]] = {}
        for key, sub in table.items():
            if key in ("name", "repo"):
                continue
            if key not in REPOSITORY_SECTIONS:
                known = ", ".join(["name", "repo", *(f"[repository.{s}]" for s in REPOSITORY_SECTIONS)])
                raise ConfigError(f"{where}: unknown key {key!r} (known: {known})")
            if not isinstance(sub, dict):
                raise ConfigError(f"{where}: [repository.{key}] must be a table")
            own[key] = _section_values(key, sections[key], sub, f"{where}", base_dir)
        tables.append((name, url, own))
    return tables

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from walkeeper.core.config_sections import (  # noqa: F401 - the sections are part of this module's names
    ArchiveConfig,
    BackupConfig,
    CompressionConfig,
    DumpRetentionConfig,
    EncryptionConfig,
    NotifyConfig,
    ReceiveConfig,
    RestoreConfig,
    RetentionConfig,
    RetryConfig,
    S3Config,
    SshConfig,
)
from walkeeper.core.config_values import check_choice, check_env_names, coerce, field_types, read_file, section_values
from walkeeper.core.configbase import (
    CONFIG_ENV,
    REPO_ENV,
    config_dir,
    env_name,
    push_identity,
    repositories_identity,
)
from walkeeper.core.errors import ConfigError

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


def _sections() -> dict[str, type]:
    return {
        f.name: hint for f, hint in ((f, field_types(Config)[f.name]) for f in dataclasses.fields(Config))
        if dataclasses.is_dataclass(hint)
    }



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
        data = read_file(path)
        base_dir = config_dir(path)
        for key, value in data.items():
            if key in sections:
                if not isinstance(value, dict):
                    raise ConfigError(f"{path}: [{key}] must be a table")
                raw[key].update(section_values(key, sections[key], value, path, base_dir))
            elif key == "repo":
                top["repo"] = coerce(value, str, f"{path}: repo", from_env=False)
            elif key == "repository":
                tables = _repository_tables(value, sections, path, base_dir)
            else:
                known = ", ".join(["repo", "[[repository]]", *(f"[{s}]" for s in sections)])
                raise ConfigError(f"{path}: unknown key {key!r} (known: {known})")
        if tables and "repo" in top:
            raise ConfigError(f"{path}: both a top-level repo and [[repository]] tables are set",
                              hint="keep one: move the top-level repo into a [[repository]] table with a name")

    check_env_names(env, sections)
    for section, cls in sections.items():
        for key, hint in field_types(cls).items():
            if dataclasses.is_dataclass(hint):
                continue  # sub-tables ([retention.dumps]) come from the file only
            name = env_name(section, key)
            if name in env:
                value = coerce(env[name], hint, f"environment variable {name}", from_env=True)
                check_choice(section, key, value, f"environment variable {name}")
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
    for key, hint in field_types(cls).items():  # file < environment, in every repository
        name = env_name(section, key)
        if not dataclasses.is_dataclass(hint) and name in env:
            merged[key] = coerce(env[name], hint, f"environment variable {name}", from_env=True)
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
        url = coerce(url, str, f"{where} repo", from_env=False)
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
            own[key] = section_values(key, sections[key], sub, f"{where}", base_dir)
        tables.append((name, url, own))
    return tables

"""What the full path (walkeeper.core.config) and the fast path (walkeeper.accel.settings) share about reading the
configuration, with the standard library alone: one rule for relative paths, the environment variable
names, and the defaults of the few settings the fast path reads.
"""

from __future__ import annotations

import os

CONFIG_ENV = "WALKEEPER_CONFIG"
REPO_ENV = "WALKEEPER_REPO"
ENV_PREFIX = "WALKEEPER_"
PUSH_AHEAD = 16  # [archive] push_ahead
PREFETCH = 16  # [restore] prefetch


def env_name(section: str, key: str) -> str:
    """The variable overriding ``[section] key``: WALKEEPER_<SECTION>_<KEY>."""
    return f"{ENV_PREFIX}{section}_{key}".upper()


def config_dir(path: str) -> str:
    """The directory that relative paths in config file ``path`` are relative to: the file's own.

    Symlinks are followed (to the real file), so a link to the file in another directory changes
    nothing; the full path and the fast path both use this, or their state directories would differ.
    """
    return os.path.dirname(os.path.realpath(path))


def resolve_path(value: str, base_dir: str) -> str:
    """A path setting from a config file: absolute as given, relative ones resolved against ``base_dir``."""
    return value if os.path.isabs(value) else os.path.realpath(os.path.join(base_dir, value))


def repositories_identity(repositories: list[tuple[str, str]]) -> str:
    """The identity of the repositories wal-fetch reads, (name, URL) pairs in order: the prefetch spool and
    its records are keyed by it. One repository: its URL (as before several repositories existed)."""
    if len(repositories) == 1:
        return repositories[0][1]
    return " ".join(f"{name}={url}" for name, url in repositories)


def push_identity(repositories: list[tuple[str, str]], require: str) -> str:
    """The identity of what wal-push stores into: status directories and the pusher's records are keyed
    by it, so a record never vouches for another set of repositories or another ``require``."""
    if len(repositories) == 1:
        return repositories[0][1]
    return f"{repositories_identity(repositories)} require={require}"

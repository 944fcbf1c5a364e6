"""Storage backends behind one interface; ``open_storage`` picks one from a repository URL.

Backends are registered here as ``"module:Class"`` strings and imported only when used, because
archive_command runs once per WAL segment and must not pay for SDKs it does not need.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from walkeeper.core.errors import ConfigError
from walkeeper.storage.base import ObjectInfo, Storage, validate_key

BACKENDS: dict[str, str] = {
    "file": "walkeeper.storage.local:LocalStorage",
    "s3": "walkeeper.storage.s3:S3Storage",
    "ssh": "walkeeper.storage.rsync:RsyncStorage",
    "rsync": "walkeeper.storage.rsync:RsyncStorage",
}

__all__ = ["BACKENDS", "ObjectInfo", "Storage", "open_storage", "validate_key"]


def scheme_of(url: str) -> str:
    if url.startswith("/") or "://" not in url:
        return "file"
    return urlsplit(url).scheme.lower()


def local_repository_path(repo_url: str) -> Path | None:
    """The directory of a local repository; None for remote ones (s3://, ssh://: no local owner)."""
    if not repo_url or scheme_of(repo_url) != "file":
        return None
    from walkeeper.storage.local import LocalStorage

    return LocalStorage.from_url(repo_url).root


def open_storage(url: str, options: Any = None, *, retry: bool = True) -> Storage:
    """Open the backend for ``url`` (a path, file://, s3://, ssh:// or rsync://)."""
    if not url:
        raise ConfigError("no repository configured", hint="set repo in the config file, WALKEEPER_REPO or --repo")
    try:
        scheme = scheme_of(url)
    except ValueError as exc:  # urlsplit: "Invalid IPv6 URL" and the like
        raise ConfigError(f"invalid repository URL {url!r}: {exc}") from None
    target = BACKENDS.get(scheme)
    if target is None:
        raise ConfigError(f"unsupported repository URL {url!r}: scheme {scheme!r} is not one of {sorted(BACKENDS)}")
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"the {scheme}:// backend is not available in this installation ({exc})") from None
    try:
        storage: Storage = getattr(module, class_name).from_url(url, options)
    except ValueError as exc:  # urlsplit or .port on a malformed URL (ConfigError is not a ValueError)
        raise ConfigError(f"invalid repository URL {url!r}: {exc}") from None
    if retry and scheme != "file":
        from walkeeper.storage.retry import RetryingStorage, RetryPolicy

        storage = RetryingStorage(storage, RetryPolicy.from_options(options))
    return storage

"""A repository in a local (or mounted) directory.

Durability follows the classic recipe (walkeeper.core.durable.write_file): temp file, fsync, rename (or
link when overwriting is not allowed), fsync the directory. Directories are created 0700 and files 0600.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from walkeeper.core.durable import fsync_dir, write_file
from walkeeper.core.errors import AlreadyExists, ConfigError, NotFound, StorageError, running_as
from walkeeper.storage.base import (
    Leftover,
    ObjectInfo,
    Source,
    iter_source,
    validate_key,
    validate_leftover,
    validate_prefix,
)


def _os_error(exc: OSError, action: str, path: Path) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"no space left on device while {action} {path}", hint="free space or move the repository")
    if exc.errno == errno.EDQUOT:
        return StorageError(f"disk quota exceeded while {action} {path}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        if action in ("reading", "listing"):
            hint = ("reading needs read permission only: let this user read the repository's files and read and "
                    "enter its directories")
        else:
            hint = "the repository must be writable by the user running PostgreSQL (and walkeeper backup/expire)"
        return StorageError(f"permission denied while {action} {path} (running as {running_as()})", hint=hint)
    if exc.errno == errno.EROFS:
        return StorageError(f"read-only file system while {action} {path}")
    return StorageError(f"error while {action} {path}: {exc.strerror or exc}")


class LocalStorage:
    """Objects as files under ``root``; keys map to relative paths."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(root))
        self.url = f"file://{self.root}"

    @classmethod
    def from_url(cls, url: str, options: Any = None) -> LocalStorage:
        if url.startswith("file://"):
            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                raise ConfigError(f"file:// URL with a host is not supported: {url}")
            return cls(unquote(parts.path))
        return cls(url)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _makedirs(self, directory: Path) -> None:
        """Create missing directories 0700, syncing each parent so the new entry survives a crash."""
        if directory.is_dir():
            return
        missing = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _os_error(exc, "creating directory", path) from None
            fsync_dir(path.parent)

    def put(self, key: str, source: Source, *, overwrite: bool = True,
            metadata: dict[str, str] | None = None) -> None:
        """Durable, atomic write; metadata is not kept (readers use the object header instead)."""
        path = self._path(key)
        self._makedirs(path.parent)
        try:
            # Temp name (hidden from list), fsync, rename or no-clobber link, fsync of the directory.
            write_file(path, iter_source(source), replace=overwrite)
        except FileExistsError:
            raise AlreadyExists(f"object {key} already exists") from None
        except OSError as exc:
            raise _os_error(exc, "writing", path) from None

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{key} not found in {self.url}") from None
        except OSError as exc:
            raise _os_error(exc, "reading", path) from None

    def get(self, key: str) -> bytes:
        with self.open(key) as handle:
            try:
                return handle.read()
            except OSError as exc:
                raise _os_error(exc, "reading", self._path(key)) from None

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{key} not found in {self.url}") from None
        except OSError as exc:
            raise _os_error(exc, "reading", path) from None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        directory, _, name_prefix = prefix.rpartition("/")
        base = self.root.joinpath(*directory.split("/")) if directory else self.root
        key_base = f"{directory}/" if directory else ""
        yield from self._walk(base, key_base, name_prefix, start_after)

    def _walk(self, path: Path, key_base: str, name_prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(path) as scan:
                entries = [e for e in scan if not e.name.startswith(".") and e.name.startswith(name_prefix)]
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise _os_error(exc, "listing", path) from None
        # Sort as full keys sort: a directory "a" holds keys "a/...", which sort after "a.b".
        entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
        for entry in entries:
            key = key_base + entry.name
            if entry.is_dir(follow_symlinks=False):
                sub = key + "/"
                if start_after is not None and start_after > sub and not start_after.startswith(sub):
                    continue
                yield from self._walk(Path(entry.path), sub, "", start_after)
            elif entry.is_file(follow_symlinks=False):
                if start_after is not None and key <= start_after:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def delete(self, keys: Iterable[str]) -> None:
        touched: set[Path] = set()
        for key in keys:
            path = self._path(key)
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _os_error(exc, "deleting", path) from None
            touched.add(path.parent)
        for directory in touched:
            fsync_dir(directory)

    def list_leftovers(self, prefix: str = "") -> Iterator[Leftover]:
        """Hidden files (temp files of killed writers) and empty directories under ``prefix``."""
        validate_prefix(prefix)
        directory = prefix.rpartition("/")[0]
        base = self.root.joinpath(*directory.split("/")) if directory else self.root
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            rel = "" if rel == "." else rel
            if rel and not dirnames and not filenames:
                with contextlib.suppress(FileNotFoundError):
                    found.append(Leftover("dir", rel, 0, os.lstat(dirpath).st_mtime))
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith("."):
                    continue
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue  # its put completed (or was cleaned up) meanwhile
                found.append(Leftover("temp", f"{rel}/{name}" if rel else name, st.st_size, st.st_mtime))
        yield from sorted((f for f in found if f.path.startswith(prefix)), key=lambda f: f.path)

    def remove_leftover(self, leftover: Leftover) -> None:
        path = self.root.joinpath(*validate_leftover(leftover).split("/"))
        try:
            if leftover.kind == "dir":
                os.rmdir(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            if leftover.kind == "dir" and exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return  # written to meanwhile: no longer a leftover
            raise _os_error(exc, "removing", path) from None
        fsync_dir(path.parent)

    def close(self) -> None:
        return None

"""The one storage interface every backend implements, and key validation at the boundary.

The contract (each backend proves it by passing tests/test_storage_conformance.py):

* Keys are relative, ``/``-separated names made of ``[A-Za-z0-9._-]`` segments; no empty segment,
  no ``.``/``..``, nothing starting with ``.tmp`` (reserved for in-flight writes).
* ``put`` is atomic: a reader sees the whole new object or nothing, also after a crash or a kill
  in the middle of the write. ``put(..., overwrite=False)`` raises AlreadyExists rather than replace
  an existing object (where the backend cannot make that atomic, it says so in its docstring).
* ``open``/``get``/``stat`` raise NotFound for a missing key and *only* for a missing key; every
  other failure is a StorageError (TransientError when retrying may help).
* ``list(prefix)`` yields objects whose key starts with ``prefix``, sorted by key, in-flight
  temporary objects hidden; ``start_after`` skips keys up to and including it.
* ``delete(keys)`` is idempotent: deleting a missing key is not an error.
* ``list_leftovers(prefix)`` yields what killed writers can leave behind, which ``list`` never shows:
  hidden temporary objects, incomplete multipart uploads (S3) and empty directories (local, ssh),
  each with its size and mtime; ``remove_leftover`` removes one (gone already is not an error).
  The storage cannot tell whether a writer is still alive: callers decide (walkeeper/repo/writers.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, runtime_checkable

from walkeeper.core.errors import InvalidName

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
TEMP_PREFIX = ".tmp"

Source = bytes | Iterable[bytes]


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Leftover:
    """Something a writer leaves behind until its put completes: invisible to ``list``, holding space."""

    kind: str  # "temp" (hidden temporary object), "upload" (incomplete multipart upload), "dir" (empty directory)
    path: str  # relative to the repository root as stored, e.g. backups/X/.tmp.base.tar.1a2b
    size: int
    mtime: float  # last write (temp), newest part or else initiation (upload), last change (dir)
    upload_id: str = ""  # S3: the multipart upload to abort

    @property
    def directory(self) -> str:
        """The key prefix it lies in (``backups/X`` for ``backups/X/.tmp.base.tar.1a2b``; a dir: itself)."""
        return self.path if self.kind == "dir" else self.path.rpartition("/")[0]


def validate_leftover(leftover: Leftover) -> str:
    """Refuse to remove anything but a hidden name inside the repository, or an empty key directory."""
    directory, _, name = leftover.path.rpartition("/")
    if leftover.kind == "dir":
        return validate_key(leftover.path)
    if directory:
        validate_key(directory)
    if leftover.kind == "upload":
        return validate_key(leftover.path)
    if not name.startswith(".") or name in (".", "..") or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise InvalidName(f"not a temporary object: {leftover.path!r}")
    return leftover.path


def validate_key(key: str) -> str:
    """Refuse any key that could escape the repository or collide with in-flight writes."""
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise InvalidName(f"invalid object key {key!r}")
    for part in key.split("/"):
        if part in (".", "..") or not _SEGMENT.fullmatch(part):
            raise InvalidName(f"invalid object key {key!r}: bad component {part!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """A prefix is a key or a key followed by ``/``; the empty prefix lists everything."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def iter_source(source: Source) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
    else:
        yield from source


@runtime_checkable
class Storage(Protocol):
    """A flat namespace of immutable-once-written objects."""

    url: str

    def put(self, key: str, source: Source, *, overwrite: bool = True,
            metadata: dict[str, str] | None = None) -> None:
        """Store ``source`` (bytes or an iterable of chunks) atomically under ``key``.

        Returns only once the object is durable. ``metadata`` (short ASCII strings) is kept where
        the backend can keep it beside the object and returned by ``stat``; callers must not rely
        on it being present.
        """
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object; raises NotFound if missing. A short read is an error."""
        ...

    def get(self, key: str) -> bytes:
        """The whole object; raises NotFound if missing."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Size, modification time and metadata; raises NotFound if missing."""
        ...

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` in key order, temporary objects hidden."""
        ...

    def delete(self, keys: Iterable[str]) -> None:
        """Remove objects; missing keys are ignored."""
        ...

    def list_leftovers(self, prefix: str = "") -> Iterator[Leftover]:
        """Temporary objects, incomplete uploads and empty directories under ``prefix``, in path order."""
        ...

    def remove_leftover(self, leftover: Leftover) -> None:
        """Remove one leftover; already gone (or a directory no longer empty) is not an error."""
        ...

    def close(self) -> None:
        """Release connections; the storage is not used afterwards."""
        ...

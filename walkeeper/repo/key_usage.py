"""Which key encrypts what in a repository: object headers scanned, and the key history's retirements.

Shared by ``key rotate``, ``rekey`` and ``verify`` (which reports objects per key id).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

from walkeeper.codec import read_header
from walkeeper.codec.format import ObjectHeader
from walkeeper.core.errors import IntegrityError, NotFound
from walkeeper.repo.layout import META_KEY, WRITER_NAME
from walkeeper.repo.repository import Repository
from walkeeper.storage.base import ObjectInfo


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def scan(repo: Repository) -> Iterator[tuple[ObjectInfo, ObjectHeader | None]]:
    """Every stored object with its header (None: not a walkeeper object, e.g. unreadable).

    The repository file and the backups' writer markers are plain JSON by design (read before any key
    is needed; they hold no data), so they are not objects of any key."""
    for info in repo.storage.list(""):
        if info.key == META_KEY or info.key.rpartition("/")[2] == WRITER_NAME:
            continue
        try:
            with repo.storage.open(info.key) as handle:
                header = read_header(handle.read)
        except NotFound:
            continue  # expired meanwhile
        except IntegrityError:
            header = None
        yield info, header


def objects_per_key_id(repo: Repository) -> dict[str, int]:
    """How many objects each key id encrypts ("none": unencrypted; "unreadable": no valid header)."""
    counts: Counter[str] = Counter()
    for _info, header in scan(repo):
        counts["unreadable" if header is None else (header.key_id or "none")] += 1
    return dict(sorted(counts.items()))


def mark_retired(repo: Repository, key_id: str) -> None:
    """Record that no object uses ``key_id`` any more: writers configured with it are refused from now on."""
    repo._meta = None
    meta = repo.require_meta()
    history = meta.key_history()
    for entry in history:
        if entry.get("key_id") == key_id and not entry.get("retired"):
            entry["retired"] = now()
    repo.storage.put(META_KEY, replace(meta, keys=history).to_json(), overwrite=True)
    repo._meta = None

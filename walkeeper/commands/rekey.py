"""`walkeeper rekey --retire KEYID`: rewrite every object under KEYID with the active key.

Safe to run while PostgreSQL archives and while a restore reads: each object is re-sealed into a
local spool file, decoded back and checksum-compared, then replaces the stored one in a single
atomic put, and only if the stored object still has the size and mtime it had when read (an
object expired or replaced meanwhile is left alone and counted as ``changed``). Every object thus
decodes with either the old or the new key at any moment. Resumable and idempotent: a rerun scans
again and skips what is already under another key. When a full pass finds nothing left under
KEYID, the repository records the key as retired, after which writers configured with it are
refused and the key can be destroyed.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from walkeeper.codec import Decoder
from walkeeper.codec.format import reseal
from walkeeper.core.errors import IntegrityError, KeyMaterialError, NotFound, RefusedError
from walkeeper.repo.key_usage import mark_retired, objects_per_key_id, scan  # noqa: F401 (the CLI's names)
from walkeeper.repo.repository import Repository
from walkeeper.storage.base import ObjectInfo

log = logging.getLogger(__name__)
_CHUNK = 1024 * 1024


@dataclass
class RekeyReport:
    key_id: str
    active_key_id: str
    dry_run: bool
    objects: int = 0  # walkeeper objects scanned in the last pass
    found: int = 0  # of those, under key_id when scanned (first pass)
    rewritten: int = 0
    changed: int = 0  # replaced or removed by someone else while being rewritten: left alone
    remaining: int = 0  # still under key_id after the last pass
    stored_bytes: int = 0  # bytes re-sealed
    seconds: float = 0.0
    retired: bool = False
    objects_per_key_id: dict[str, int] = field(default_factory=dict)

    @property
    def mib_per_s(self) -> float:
        return self.stored_bytes / 1048576 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mib_per_s": round(self.mib_per_s, 1)}


def _rewrite(repo: Repository, info: ObjectInfo) -> int | None:
    """Re-seal one object under the active key; its new size, or None if it changed meanwhile."""
    keyring = repo.keyring
    assert keyring is not None
    with tempfile.TemporaryFile(prefix="walkeeper-rekey-") as spool:
        try:
            with repo.storage.open(info.key) as handle:
                for chunk in reseal(keyring, handle.read):
                    spool.write(chunk)
        except NotFound:
            return None
        size = spool.tell()
        spool.seek(0)
        check = Decoder(keyring)  # the plaintext must be exactly what the old object authenticated
        for _plain in check.decode(spool.read):
            pass
        assert check.header is not None
        if check.header.key_id != keyring.active_id:
            raise IntegrityError(f"{info.key}: re-sealed object names key id {check.header.key_id}")
        try:
            current = repo.storage.stat(info.key)
        except NotFound:
            return None
        if (current.size, current.mtime) != (info.size, info.mtime):
            return None
        spool.seek(0)
        repo.storage.put(info.key, iter(lambda: spool.read(_CHUNK), b""), overwrite=True,
                         metadata=current.metadata or None)
        return size


def rekey(repo: Repository, key_id: str, *, dry_run: bool = False,
          progress: Callable[[RekeyReport], None] | None = None) -> RekeyReport:
    keyring = repo.keyring
    if keyring is None:
        raise KeyMaterialError("rekey needs the encryption keys", hint="set [encryption] key_files")
    meta = repo.require_meta()
    if key_id == keyring.active_id or key_id == meta.key_id:
        raise RefusedError(f"key id {key_id} is the active key; it cannot be retired",
                           hint="make another key active first: walkeeper key rotate --new-key FILE, "
                                "then list that file first in [encryption] key_files")
    report = RekeyReport(key_id=key_id, active_key_id=keyring.active_id, dry_run=dry_run)
    start = time.monotonic()
    for attempt in range(3):  # later passes catch objects written meanwhile by a writer still on key_id
        counts: Counter[str] = Counter()
        found = 0
        for info, header in scan(repo):
            counts["unreadable" if header is None else (header.key_id or "none")] += 1
            if header is None or header.key_id != key_id:
                continue
            found += 1
            if attempt == 0:
                report.found += 1
            if dry_run:
                report.stored_bytes += info.size
                continue
            size = _rewrite(repo, info)
            if size is None:
                report.changed += 1
            else:
                report.rewritten += 1
                report.stored_bytes += size
                counts[key_id] -= 1
                counts[keyring.active_id] += 1
            if progress:
                report.seconds = time.monotonic() - start
                progress(report)
        report.objects = sum(counts.values())
        report.objects_per_key_id = {k: v for k, v in sorted(counts.items()) if v}
        report.remaining = counts.get(key_id, 0)
        if dry_run or found == 0:
            break
    report.seconds = time.monotonic() - start
    if not dry_run and report.remaining == 0:
        mark_retired(repo, key_id)
        report.retired = True
    return report

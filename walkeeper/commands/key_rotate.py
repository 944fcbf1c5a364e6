"""`walkeeper key rotate`: record a new active key id in the repository (never the key itself).

Order matters for a repository that keeps archiving: the repository learns the new key id first,
then the operator puts the new key file first in ``[encryption] key_files``. Writers still on the
previous key keep working meanwhile (that key is not retired), and every object names its key id.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from walkeeper.codec.keys import Keyring, read_key_file
from walkeeper.core.errors import RefusedError
from walkeeper.repo.key_usage import now
from walkeeper.repo.layout import META_KEY
from walkeeper.repo.repository import Repository


@dataclass(frozen=True)
class RotateResult:
    key_id: str
    previous: str | None
    changed: bool


def rotate(repo: Repository, new_key_file: str) -> RotateResult:
    """Make the key in ``new_key_file`` the repository's active key."""
    new_id = Keyring([read_key_file(new_key_file)]).active_id
    meta = repo.require_meta()
    history = meta.key_history()
    if meta.key_id == new_id:
        return RotateResult(new_id, meta.key_id, False)
    for entry in history:
        if entry.get("key_id") == new_id and entry.get("retired"):
            raise RefusedError(f"key id {new_id} was retired on {entry['retired']}; refusing to make it active again",
                               hint="generate a new key: walkeeper key rotate --generate FILE")
    history = [e for e in history if e.get("key_id") != new_id]
    history.append({"key_id": new_id, "active_since": now()})
    repo.storage.put(META_KEY, replace(meta, key_id=new_id, keys=history).to_json(), overwrite=True)
    repo._meta = None
    return RotateResult(new_id, meta.key_id, True)


def key_table(repo: Repository) -> list[dict[str, Any]]:
    """The recorded key history with the active key marked (for status and `key list`)."""
    meta = repo.require_meta()
    return [{**entry, "active": entry.get("key_id") == meta.key_id} for entry in meta.key_history()]

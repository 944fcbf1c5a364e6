"""The repository's own metadata (walkeeper.json): format, the cluster it belongs to, WAL segment size and
the history of its keys. It is what stops a second cluster or a wrong key from writing into a repository.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from walkeeper.core.errors import IntegrityError

FORMAT = 1


@dataclass(frozen=True)
class RepoMeta:
    format: int = FORMAT
    system_identifier: str | None = None  # a string: JSON numbers lose precision past 2**53
    wal_segment_size: int | None = None
    pg_version: int | None = None
    key_id: str | None = None  # the active key: what new objects are written with
    created: str = ""
    # Key history (never the keys): [{"key_id", "active_since", "retired"?}], oldest first; see
    # walkeeper/commands/key_rotate.py. None in repositories written before rotation existed.
    keys: list | None = None

    def key_history(self) -> list[dict[str, Any]]:
        """The recorded keys, including the implicit first one of a repository never rotated."""
        if self.keys:
            return [dict(k) for k in self.keys if isinstance(k, dict)]
        return [{"key_id": self.key_id, "active_since": self.created}] if self.key_id else []

    def writable_key(self, key_id: str) -> bool:
        """Objects may be written with the active key or an older key not yet retired.

        A writer still configured with the previous key (a pusher started before ``key rotate``)
        keeps archiving until its configuration lists the new key first; ``rekey --retire`` later
        rewrites what it wrote and marks that key retired, after which it is refused.
        """
        if key_id == self.key_id:
            return True
        return any(k.get("key_id") == key_id and not k.get("retired") for k in self.key_history())

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> RepoMeta:
        try:
            fields = json.loads(data)
            if not isinstance(fields, dict):
                raise TypeError("not a JSON object")
            meta = cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError, RecursionError) as exc:
            raise IntegrityError(f"{where} is not a valid walkeeper repository file ({exc})") from None
        for key, kinds in _META_TYPES.items():
            value = getattr(meta, key)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise IntegrityError(f"{where} is not a valid walkeeper repository file "
                                     f"({key} is {type(value).__name__})")
        if meta.format != FORMAT:
            raise IntegrityError(f"{where}: repository format {meta.format} is not supported by this walkeeper")
        return meta


# What each field of the repository file may hold: anything else is a damaged file, not a crash later.
_META_TYPES: dict[str, tuple[type, ...]] = {
    "format": (int,), "system_identifier": (str, type(None)), "wal_segment_size": (int, type(None)),
    "pg_version": (int, type(None)), "key_id": (str, type(None)), "created": (str,),
    "keys": (list, type(None)),
}

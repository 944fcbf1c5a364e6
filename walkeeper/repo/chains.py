"""Chains of incremental backups: pure decisions over backup metadata (no storage, no clock).

An incremental backup (PostgreSQL 17+, ``pg_basebackup --incremental``) records its ``parent``, the
backup whose ``backup_manifest`` it was taken against; following parents ends at a full backup. A
restore needs every member of that chain, oldest (the full) first. Retention and verification treat
a chain as one unit: the tree of backups rooted at one full backup (usually a line; ``--from`` can
branch it), dated by its newest member.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from walkeeper.core.chronology import position
from walkeeper.core.errors import RefusedError
from walkeeper.core.units import human_bytes

FULL = "full"
INCREMENTAL = "incremental"
TYPES = (FULL, INCREMENTAL)


class Linked(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def parent(self) -> str | None: ...
    @property
    def stop_timeline(self) -> int: ...
    @property
    def stop_lsn(self) -> int | str: ...


L = TypeVar("L", bound=Linked)


class BrokenChain(RefusedError):
    """A member of a chain is missing from the repository: the backups after it cannot be restored."""

    def __init__(self, backup_id: str, missing: str, child: str) -> None:
        self.backup_id, self.missing, self.child = backup_id, missing, child
        super().__init__(
            f"backup {backup_id} is incremental and needs backup {missing} (the parent of {child}), which is not "
            "in the repository: the chain is broken and cannot be restored",
            hint="restore an older complete backup or chain (walkeeper backups), and take a new full backup "
                 "(walkeeper backup without --incremental)")


def chain_ids(backup_id: str, parents: Mapping[str, str | None]) -> list[str]:
    """The ids a restore of ``backup_id`` needs, the full backup first. ``parents``: id -> parent (None: full).

    Raises BrokenChain when a parent is missing (or the links loop, which no writer produces).
    """
    chain = [backup_id]
    seen = {backup_id}
    current = backup_id
    while True:
        parent = parents.get(current)
        if parent is None:
            return list(reversed(chain))
        if parent not in parents or parent in seen:
            raise BrokenChain(backup_id, parent, current)
        chain.append(parent)
        seen.add(parent)
        current = parent


def parent_map(backups: Iterable[Linked]) -> dict[str, str | None]:
    return {b.id: (b.parent if b.type == INCREMENTAL else None) for b in backups}


def chain_of(backup: L, backups: Iterable[L]) -> list[L]:
    """The members of ``backup``'s chain, the full first (``[backup]`` for a full backup)."""
    by_id = {b.id: b for b in backups}
    by_id[backup.id] = backup
    return [by_id[i] for i in chain_ids(backup.id, parent_map(by_id.values()))]


def chain_length(backup_id: str, parents: Mapping[str, str | None]) -> int | None:
    """Members a restore needs (1 for a full backup); None for a broken chain."""
    try:
        return len(chain_ids(backup_id, parents))
    except BrokenChain:
        return None


def root_of(backup_id: str, parents: Mapping[str, str | None]) -> str:
    """The full backup a chain starts from, or for a broken chain the first missing id (its own group)."""
    current = backup_id
    seen = {current}
    while True:
        parent = parents.get(current)
        if parent is None or parent in seen:
            return current
        if parent not in parents:
            return parent
        seen.add(parent)
        current = parent


def groups(backups: Iterable[L]) -> dict[str, list[L]]:
    """Backups by the chain they belong to (keyed by its root), each group oldest first by WAL position."""
    items = list(backups)
    parents = parent_map(items)
    out: dict[str, list[L]] = {}
    for b in sorted(items, key=position):
        out.setdefault(root_of(b.id, parents), []).append(b)
    return out


def broken(backups: Iterable[Linked]) -> list[tuple[str, str]]:
    """(incremental id, missing parent id) for each backup whose own parent is not in the repository."""
    items = list(backups)
    ids = {b.id for b in items}
    return [(b.id, b.parent) for b in items if b.type == INCREMENTAL and b.parent and b.parent not in ids]


def expand_to_chains(kept: Iterable[str], backups: Iterable[Linked]) -> dict[str, str]:
    """Every member of a chain one of ``kept`` belongs to, with the id that pulled it in: a chain is kept whole."""
    items = list(backups)
    parents = parent_map(items)
    by_root: dict[str, list[str]] = {}
    for b in items:
        by_root.setdefault(root_of(b.id, parents), []).append(b.id)
    out: dict[str, str] = {}
    for backup_id in kept:
        for member in by_root.get(root_of(backup_id, parents), [backup_id]):
            out.setdefault(member, backup_id)
    return out


@dataclass(frozen=True)
class ParentChoice:
    parent_id: str
    reason: str


def choose_parent(backups: Iterable[Linked], *, system_identifier: str, timeline: int,
                  from_id: str | None = None, systems: Mapping[str, str] | None = None) -> ParentChoice:
    """The backup an incremental backup is taken against.

    By default the newest complete backup (by WAL position, never by clock) that ended on the server's
    current ``timeline``: the WAL summaries the server keeps cover its own timeline from that backup on.
    ``from_id`` names one; it must exist, belong to the same system and timeline. ``systems`` maps ids to
    system identifiers (backups of another system cannot be parents; absent: assumed the same system).
    """
    items = list(backups)
    systems = systems or {}
    same = [b for b in items if systems.get(b.id, system_identifier) == system_identifier]
    if from_id is not None:
        match = [b for b in items if b.id == from_id]
        if not match:
            raise RefusedError(f"--from {from_id}: no complete backup with that id in the repository",
                               hint="walkeeper backups lists them")
        chosen = match[0]
        if chosen not in same:
            raise RefusedError(f"--from {from_id}: that backup comes from database system "
                               f"{systems.get(chosen.id)}, the server is {system_identifier}")
        if chosen.stop_timeline != timeline:
            raise RefusedError(f"--from {from_id}: that backup ended on timeline {chosen.stop_timeline}, the server "
                               f"is on timeline {timeline}; an incremental backup needs a parent on its timeline",
                               hint="take a full backup (walkeeper backup without --incremental)")
        return ParentChoice(chosen.id, "chosen with --from")
    candidates = [b for b in same if b.stop_timeline == timeline]
    if not candidates:
        others = "" if not same else f" (the newest backups ended on timeline {max(same, key=position).stop_timeline})"
        raise RefusedError(f"no complete backup of this server on its timeline {timeline} to take an incremental "
                           f"backup against{others}",
                           hint="take a full backup first (walkeeper backup without --incremental)")
    parent = max(candidates, key=position)
    return ParentChoice(parent.id, f"the newest complete backup on timeline {timeline}")


def describe_chain(chain: list[Any]) -> list[str]:
    """Lines for --dry-run and the restore report: the members a restore fetches, the full first."""
    out = []
    for i, b in enumerate(chain):
        kind = "full" if i == 0 else f"incremental on {b.parent}"
        out.append(f"  {i + 1}. {b.id} ({kind}, ended {b.stop_time} at LSN {b.stop_lsn}, "
                   f"{human_bytes(b.plain_size)} stored as {human_bytes(b.stored_size)})")
    return out

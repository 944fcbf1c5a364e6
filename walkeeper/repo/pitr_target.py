"""PITR targets: what the user asked to recover to (time, LSN, transaction id, restore point, immediate).

Parsing and validation of the target options, and the choice of a backup for a transaction id target
(which needs each backup's next xid, see ``choose_for_xid``). Pure, apart from ``make_target`` reading the
recorded restore points.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from walkeeper.core.errors import ConfigError, RefusedError
from walkeeper.core.wal import (
    parse_lsn,
)
from walkeeper.repo.catalog import BackupMeta, Catalog, RestorePoint

# -- targets -----------------------------------------------------------------------------------

_TS_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[ T](?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)"
    r"\s*(?P<zone>Z|UTC|GMT|[+-]\d{1,2}(?::?\d{2})?|[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*)?$"
)


def parse_target_time(text: str, *, local_zone: timezone | None = None) -> datetime:
    """Parse a time target the way PostgreSQL would read it, or refuse it before anything is written.

    Accepted: ``YYYY-MM-DD HH:MM[:SS[.ffffff]]`` followed by a numeric offset (``+02``, ``+05:30``,
    ``-0800``), ``Z``/``UTC``/``GMT``, or a full zone name (``Europe/Berlin``). Abbreviations such
    as ``EST`` or ``CEST`` are refused: they are ambiguous and PostgreSQL reads them from its own
    ``timezone_abbreviations`` table. Without a zone the time is read in this machine's zone and
    written with an explicit offset, so the recovering server cannot read it differently.
    """
    match = _TS_RE.match(text.strip())
    if not match:
        raise ConfigError(
            f"--target-time {text!r}: not a timestamp walkeeper can check",
            hint="use e.g. '2026-01-31 14:05:00+01', '2026-01-31 13:05:00 UTC' or '2026-01-31 14:05:00 Europe/Paris'",
        )
    try:
        naive = datetime.fromisoformat(f"{match.group('date')} {match.group('time')}")
    except ValueError as exc:
        raise ConfigError(f"--target-time {text!r}: {exc}") from None
    zone = match.group("zone")
    if zone is None:
        local = local_zone or datetime.now().astimezone().tzinfo
        return naive.replace(tzinfo=local).astimezone(UTC)
    if zone in ("Z", "UTC", "GMT"):
        return naive.replace(tzinfo=UTC)
    if zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        hours, minutes = (int(digits[:-2]), int(digits[-2:])) if len(digits) > 2 else (int(digits), 0)
        if hours > 15 or minutes > 59:
            raise ConfigError(f"--target-time {text!r}: offset {zone} is out of range")
        delta = timedelta(hours=hours, minutes=minutes)
        return naive.replace(tzinfo=timezone(delta if zone[0] == "+" else -delta))
    if "/" not in zone and zone == zone.upper():
        # CET, EST or MET are zoneinfo keys too, but whoever writes them means an abbreviation, which
        # PostgreSQL reads from its own timezone_abbreviations table: refuse rather than guess.
        raise ConfigError(f"--target-time {text!r}: {zone} is an ambiguous abbreviation, not a time zone walkeeper "
                          "can check",
                          hint="use a full zone name such as Europe/Berlin, or a numeric offset such as +01")
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--target-time {text!r}: unknown time zone {zone!r}",
                          hint="use a full zone name such as Europe/Berlin, or a numeric offset") from None
    return naive.replace(tzinfo=tz)


def format_target_time(moment: datetime) -> str:
    """An unambiguous form PostgreSQL reads the same way whatever its TimeZone setting."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


@dataclass(frozen=True)
class Target:
    kind: str
    value: str  # as written to recovery_target_<kind>
    time: datetime | None = None
    lsn: int | None = None
    xid: int | None = None
    point: RestorePoint | None = None

    def describe(self) -> str:
        return "immediate (the end of the backup)" if self.kind == "immediate" else f"{self.kind} {self.value}"


# -- transaction ids ---------------------------------------------------------------------------

XID_SPACE = 1 << 32  # PostgreSQL's transaction ids are 32 bits; the epoch counts their wraparounds


def parse_xid(text: str) -> int:
    """A ``recovery_target_xid`` as PostgreSQL reads it: a 32-bit xid, or a 64-bit full xid (epoch << 32 |
    xid, what pg_current_xact_id() and txid_current() return), of which recovery compares the low 32 bits."""
    digits = text.strip()
    if not digits.isdigit() or int(digits) >= 1 << 64:
        raise ConfigError(f"--target-xid {text!r}: expected a transaction id: a 32-bit xid or the 64-bit form "
                          "pg_current_xact_id() returns (e.g. 123456 or 4294967396)",
                          hint="for epoch:xid as pg_controldata prints it, give epoch * 4294967296 + xid")
    value = int(digits)
    if value % XID_SPACE < 3:
        raise ConfigError(f"--target-xid {text!r}: xid {value % XID_SPACE} is not a normal transaction id "
                          "(the first one is 3): no transaction commits with it")
    return value


def full_xid(value: int, reference: int | None) -> int:
    """The 64-bit transaction id meant by ``value``.

    A 64-bit value says its epoch. A 32-bit one is the xid nearest to ``reference`` (a known full next xid):
    within 2^31 transactions of it, before or after, PostgreSQL's own rule for relating a 32-bit xid to a
    full one (FullXidRelativeTo; TransactionIdPrecedes compares the same way).
    """
    if value >= XID_SPACE or reference is None:
        return value
    delta = (value - reference) % XID_SPACE
    if delta >= XID_SPACE // 2:
        delta -= XID_SPACE
    full = reference + delta
    return full if full >= 0 else full + XID_SPACE


def format_xid(full: int) -> str:
    epoch, xid = divmod(full, XID_SPACE)
    return str(xid) if epoch == 0 else f"{xid} of epoch {epoch} ({full})"


@dataclass(frozen=True)
class XidMark:
    """Where a backup's transaction ids stood (64-bit next xids; None: not known)."""

    backup: BackupMeta
    checkpoint_next_xid: int | None = None  # at the checkpoint recovery from the backup starts from
    stop_next_xid: int | None = None  # once the backup had ended
    from_control: bool = False  # read from the stored pg_control (metadata older than the field)

    @classmethod
    def of(cls, backup: BackupMeta) -> XidMark:
        return cls(backup, backup.checkpoint_next_xid, backup.stop_next_xid)

    @property
    def bound(self) -> int | None:
        """Transactions from this xid on committed after the backup ended (checkpoint: after it began)."""
        return self.stop_next_xid if self.stop_next_xid is not None else self.checkpoint_next_xid


@dataclass(frozen=True)
class XidChoice:
    backup: BackupMeta
    xid: int  # the target as a 64-bit xid
    reason: str
    settled: bool  # the backup began before the target transaction did (no older backup can do better)
    warnings: tuple[str, ...] = ()


def choose_for_xid(marks: list[XidMark], value: int) -> XidChoice:
    """The backup recovery to transaction ``value`` starts from; ``marks`` oldest first.

    Recovery stops at the first commit (or abort) record of the xid it replays. A transaction that
    committed before the backup ended cannot be reached from that backup: before the backup's checkpoint
    the record is not replayed ("recovery ended before configured recovery target was reached"); between
    the checkpoint and the end of the backup it is, before the data is consistent ("requested recovery stop
    point is before consistent recovery point"). A transaction at or above the server's next xid when the
    backup ended had not ended then, so the newest backup whose next xid is at most the target reaches it.
    For backups that only know their checkpoint's next xid that is the best guess, and a warning says what
    PostgreSQL reports if the transaction committed while that backup ran.
    """
    if not marks:
        raise RefusedError("the repository holds no backup", hint="take one with walkeeper backup")
    known = [m for m in marks if m.bound is not None]
    if not known:
        return XidChoice(marks[0].backup, value, "the oldest backup: no backup records where transaction ids "
                         "stood, and the oldest reaches the most transactions", False)
    newest = known[-1]
    assert newest.bound is not None
    xid = full_xid(value, newest.bound)
    shown = format_xid(xid)
    warnings: list[str] = []
    if value < XID_SPACE and xid >= XID_SPACE:
        warnings.append(f"--target-xid {value} is a 32-bit xid: read as {shown}, the one nearest the newest "
                        "backup; give the 64-bit form pg_current_xact_id() returns to mean another epoch")
    if xid - newest.bound >= XID_SPACE // 2:
        warnings.append(f"transaction {shown} is more than 2^31 transactions after the newest backup (next xid "
                        f"{format_xid(newest.bound)}): no archive of this cluster is likely to hold it; check the "
                        "number (another cluster's?)")
    before = [m for m in known if m.bound is not None and m.bound <= xid]
    if not before:
        oldest = marks[0]
        if oldest.stop_next_xid is not None:
            since = f"before the oldest backup ended (the server's next xid then: {format_xid(oldest.stop_next_xid)})"
        elif oldest.checkpoint_next_xid is not None:
            since = f"before the oldest backup's checkpoint (its next xid: {format_xid(oldest.checkpoint_next_xid)})"
        else:
            since = "before every backup whose next xid is known"
        return XidChoice(oldest.backup, xid, (
            f"the oldest backup: transaction {shown} began {since}; recovery reaches it only if it committed "
            "after this backup ended, else PostgreSQL stops with 'recovery ended before configured recovery "
            "target was reached'"), False, tuple(warnings))
    chosen = before[-1]
    assert chosen.bound is not None
    if xid - chosen.bound >= XID_SPACE:
        raise RefusedError(
            f"transaction {shown} began {xid - chosen.bound} transactions after backup {chosen.backup.id}, more "
            f"than one wraparound: recovery compares 32-bit xids and would stop at transaction "
            f"{format_xid(xid - XID_SPACE)} first",
            hint="take a new backup, or recover to a time or LSN instead")
    where = " (read from its stored global/pg_control)" if chosen.from_control else ""
    if chosen.stop_next_xid is not None:
        why = (f"the newest backup that ended before transaction {shown} could commit (the server's next xid "
               f"when it ended: {format_xid(chosen.bound)})")
    else:
        why = (f"the newest backup whose checkpoint came before transaction {shown} began (the checkpoint's next "
               f"xid: {format_xid(chosen.bound)}{where})")
        older = [m for m in marks if m is not chosen and parse_lsn(m.backup.stop_lsn) < parse_lsn(
            chosen.backup.stop_lsn)]
        advice = f"give --backup {older[-1].backup.id}" if older else "no older backup can"
        warnings.append(f"backup {chosen.backup.id} does not record the next xid at its end: if transaction {shown} "
                        "committed while it ran, PostgreSQL stops with 'requested recovery stop point is before "
                        f"consistent recovery point' ({advice})")
    if chosen is newest:
        why += "; it is the newest backup: recovery reaches the target if the archive holds its commit"
    return XidChoice(chosen.backup, xid, why, True, tuple(warnings))


def make_target(catalog: Catalog, *, time: str | None = None, lsn: str | None = None, xid: str | None = None,
                name: str | None = None, immediate: bool = False, standby: bool = False) -> Target:
    given = [k for k, v in (("time", time), ("lsn", lsn), ("xid", xid), ("name", name),
                            ("immediate", immediate)) if v]
    if len(given) > 1:
        raise ConfigError(f"give exactly one recovery target, not {len(given)} ({', '.join(given)})",
                          hint="PostgreSQL refuses more than one recovery_target* setting")
    if not given:
        if standby:
            return Target("none", "")
        raise ConfigError("give one recovery target: --target-time, --target-lsn, --target-xid, --target-name "
                          "or --target-immediate")
    if time:
        moment = parse_target_time(time)
        return Target("time", format_target_time(moment), time=moment)
    if lsn:
        try:
            value = parse_lsn(lsn)
        except ValueError as exc:
            raise ConfigError(f"--target-lsn: {exc}") from None
        return Target("lsn", lsn.strip().upper(), lsn=value)
    if xid:
        value = parse_xid(xid)
        return Target("xid", str(value), xid=value)
    if name:
        if len(name) >= 64:
            raise ConfigError("--target-name: restore point names are shorter than 64 characters")
        points = [p for p in catalog.restore_points() if p.name == name]
        if not points:
            raise RefusedError(f"no restore point named {name!r} is recorded in the repository",
                               hint="walkeeper restore-points lists them; points created without walkeeper "
                                    "are unknown to it")
        # PostgreSQL stops at the first record with that name it replays.
        point = min(points, key=lambda p: parse_lsn(p.lsn))
        return Target("name", name, lsn=parse_lsn(point.lsn), point=point)
    return Target("immediate", "immediate")


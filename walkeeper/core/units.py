"""Sizes, counts and times as people (and --json readers) read them, in one place so that every
command prints them alike."""

from __future__ import annotations

from datetime import UTC, datetime


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB": binary units, since every size here is counted in bytes of 1024."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def plural(n: int, word: str, many: str | None = None) -> str:
    """1 -> "1 segment", 3 -> "3 segments": counts read as sentences, never "segment(s)"."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def iso_utc(moment: float | None) -> str | None:
    """A POSIX time as ISO 8601 UTC ("2026-11-30T02:13:30.123456+00:00"), the form of every --json time."""
    if moment is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="microseconds")


def utc_text(text: str) -> str:
    """A timestamp with an offset ("2026-11-30 03:13:30.1+01", PostgreSQL's form) as ISO 8601 UTC."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        return text
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")

"""Sizes as people read them, in one place so that every command prints them alike."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB": binary units, since every size here is counted in bytes of 1024."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"

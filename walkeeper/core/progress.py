"""A progress meter for long transfers (backup, restore): a line every few seconds on stderr."""

from __future__ import annotations

import sys
import time

from walkeeper.core.units import human_bytes

# -- progress -------------------------------------------------------------------------------------

class Progress:
    """bytes, rate and ETA on a terminal (stderr), nothing otherwise."""

    def __init__(self, what: str, total: int | None, *, enabled: bool | None = None) -> None:
        self.what = what
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.5:
            self._last = now
            self._show(now)

    def _show(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        text = f"\r{self.what}: {human_bytes(self.done)} at {human_bytes(rate)}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ~{human_bytes(self.total)} total, ETA {int((self.total - self.done) / rate)}s"
        sys.stderr.write(text.ljust(78))
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self._show(time.monotonic())
            sys.stderr.write("\n")

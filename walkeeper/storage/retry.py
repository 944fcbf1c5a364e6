"""Retries TransientError with bounded exponential backoff; a wrapper, not a mixin.

Only TransientError is retried: NotFound, AlreadyExists and persistent failures pass straight
through, so a retry can never turn an error into "not found" or hide a refusal.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from walkeeper.core.errors import TransientError
from walkeeper.storage.base import Leftover, ObjectInfo, Source, Storage

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0

    @classmethod
    def from_options(cls, options: Any) -> RetryPolicy:
        retry = getattr(options, "retry", None)
        if retry is None:
            return cls()
        return cls(attempts=retry.attempts, base_delay=retry.base_delay, max_delay=retry.max_delay)

    def max_backoff(self) -> float:
        """The longest total sleep between attempts of one call (each delay is at most its cap)."""
        return sum(min(self.max_delay, self.base_delay * (2 ** attempt)) for attempt in range(self.attempts - 1))

    def worst_case(self, per_attempt: float) -> float:
        """How long one call can take when every attempt times out after ``per_attempt`` seconds."""
        return self.attempts * per_attempt + self.max_backoff()

    def delays(self) -> Iterator[float]:
        for attempt in range(self.attempts - 1):
            cap = min(self.max_delay, self.base_delay * (2 ** attempt))
            yield random.uniform(cap / 2, cap)


class RetryingStorage:
    """Wraps any Storage; retries each call that fails with TransientError."""

    def __init__(self, inner: Storage, policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.url = inner.url
        self._sleep = sleep

    def _call(self, what: str, func: Callable[[], T]) -> T:
        delays = self.policy.delays()
        while True:
            try:
                return func()
            except TransientError as exc:
                delay = next(delays, None)
                if delay is None:
                    raise TransientError(
                        f"{what} still failing after {self.policy.attempts} attempts: {exc}",
                        hint="check that the repository is reachable",
                    ) from exc
                log.info("%s failed (%s); retrying in %.1fs", what, exc, delay)
                self._sleep(delay)

    def put(self, key: str, source: Source, *, overwrite: bool = True,
            metadata: dict[str, str] | None = None) -> None:
        if not isinstance(source, bytes | bytearray | memoryview):
            # A stream can be consumed once only: no retry of the whole call (backends retry parts).
            self.inner.put(key, source, overwrite=overwrite, metadata=metadata)
            return
        self._call(f"storing {key}", lambda: self.inner.put(key, source, overwrite=overwrite, metadata=metadata))

    def open(self, key: str) -> BinaryIO:
        return self._call(f"opening {key}", lambda: self.inner.open(key))

    def get(self, key: str) -> bytes:
        return self._call(f"reading {key}", lambda: self.inner.get(key))

    def stat(self, key: str) -> ObjectInfo:
        return self._call(f"reading {key}", lambda: self.inner.stat(key))

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        items = self._call(f"listing {prefix or '/'}", lambda: list(self.inner.list(prefix, start_after=start_after)))
        return iter(items)

    def delete(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        self._call("deleting objects", lambda: self.inner.delete(batch))

    def list_leftovers(self, prefix: str = "") -> Iterator[Leftover]:
        items = self._call(f"listing leftovers in {prefix or '/'}", lambda: list(self.inner.list_leftovers(prefix)))
        return iter(items)

    def remove_leftover(self, leftover: Leftover) -> None:
        self._call(f"removing {leftover.path}", lambda: self.inner.remove_leftover(leftover))

    def close(self) -> None:
        self.inner.close()

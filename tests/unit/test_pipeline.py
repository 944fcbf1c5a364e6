"""run_ahead: order, errors where they happened, bounded depth, no thread outliving its stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from walkeeper.codec.pipeline import run_ahead


def test_order_and_completion() -> None:
    assert list(run_ahead(range(100), 3)) == list(range(100))
    assert list(run_ahead([], 1)) == []


def test_an_error_arrives_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad frame")

    got = []
    with pytest.raises(ValueError, match="bad frame"):
        for item in run_ahead(items(), 4):
            got.append(item)
    assert got == [1, 2]


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_the_producer_runs_at_most_depth_ahead(depth: int) -> None:
    made = 0

    def items() -> Iterator[int]:
        nonlocal made
        for i in range(50):
            made += 1
            yield i

    for consumed, _item in enumerate(run_ahead(items(), depth), start=1):
        time.sleep(0.002)
        # the queue holds depth, the producer one more in hand, the consumer the one it got
        assert made - consumed <= depth + 1


def test_an_early_stop_ends_the_producer_and_runs_its_cleanup() -> None:
    cleaned = threading.Event()

    def items() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            cleaned.set()

    before = threading.active_count()
    stream = run_ahead(items(), 2)
    assert next(stream) == 0
    stream.close()
    assert cleaned.is_set() and threading.active_count() == before


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError):
        list(run_ahead([1], 0))

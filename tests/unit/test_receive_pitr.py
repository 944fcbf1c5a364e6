"""pitr's WAL coverage with wal-receive's partial segments (repo/pitr_plan.coverage, ``received``): where
recovery ends after the primary is lost. Same repository as tests/unit/test_pitr_plan.py."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.unit.test_pitr_plan import (
    EARLY,
    IMMEDIATE,
    LATE,
    NOW,
    SEG,
    T0,
    TL1,
    XID,
    A,
    H,
    listing,
    lsn_target,
    seg,
    time_target,
)
from walkeeper.core.errors import GapError, RefusedError
from walkeeper.repo.pitr_plan import coverage
from walkeeper.repo.pitr_target import Target

NONE = Target("none", "")


def received(tli: int, segno: int, when: datetime, length: int) -> dict[int, dict[int, tuple[float, int]]]:
    return {tli: {segno: (when.timestamp(), length)}}


@pytest.mark.parametrize(("case", "present", "partials", "target", "expected"), [
    ("end of archive: recovery ends in the partial", listing((1, [2, 3, 4], EARLY)), received(1, 5, LATE, 8192),
     NONE, (seg(1, 2), seg(1, 5) + ".partial", 4)),
    ("xid: the same", listing((1, [2, 3, 4], EARLY)), received(1, 5, LATE, 8192), XID,
     (seg(1, 2), seg(1, 5) + ".partial", 4)),
    ("time: a partial stored after the target covers it", listing((1, [2, 3, 4], EARLY)),
     received(1, 5, LATE, 8192), time_target(T0 + 2 * H), (seg(1, 2), seg(1, 5) + ".partial", 4)),
    ("lsn inside the received part", listing((1, [2, 3, 4], EARLY)), received(1, 5, LATE, 0x1000),
     lsn_target(0x5000800), (seg(1, 2), seg(1, 5) + ".partial", 4)),
    ("the backup's own last segment received only", listing((1, [2], EARLY)), received(1, 3, LATE, 0x200),
     IMMEDIATE, (seg(1, 2), seg(1, 3) + ".partial", 2)),
    ("a partial of an older segment changes nothing", listing((1, [2, 3, 4], EARLY)), received(1, 3, LATE, 10),
     NONE, (seg(1, 2), None, 3)),
    ("no partial: the end of the archive as before", listing((1, [2, 3, 4], EARLY)), {}, NONE,
     (seg(1, 2), None, 3)),
])
def test_coverage_with_partials(case: str, present: dict, partials: dict, target: Target,
                                expected: tuple[str, str | None, int]) -> None:
    assert coverage(present, SEG, A, target, TL1, now=NOW, received=partials) == expected


@pytest.mark.parametrize(("case", "present", "partials", "target", "error", "message"), [
    ("a later segment makes the missing one a gap", listing((1, [2, 3, 4, 6], EARLY)), received(1, 5, LATE, 8192),
     NONE, GapError, f"WAL segment {seg(1, 5)} is missing"),
    ("a later partial makes the missing one a gap", listing((1, [2, 3, 4], EARLY)), received(1, 6, LATE, 8192),
     NONE, GapError, f"WAL segment {seg(1, 5)} is missing"),
    ("lsn beyond the received part", listing((1, [2, 3, 4], EARLY)), received(1, 5, LATE, 0x1000),
     lsn_target(0x5002000), GapError, f"WAL segment {seg(1, 5)} is missing"),
    ("lsn in a later segment", listing((1, [2, 3, 4], EARLY)), received(1, 5, LATE, 0x1000),
     lsn_target(0x6000000), GapError, f"WAL segment {seg(1, 5)} is missing"),
    ("time: the partial was stored before the target", listing((1, [2, 3, 4], EARLY)),
     received(1, 5, T0 + 1.5 * H, 8192), time_target(T0 + 2 * H), RefusedError, "the archive ends before"),
])
def test_coverage_with_partials_refuses(case: str, present: dict, partials: dict, target: Target,
                                        error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        coverage(present, SEG, A, target, TL1, now=NOW, received=partials)


# -- expire: wal-receive's partial uploads go with the WAL before the cutoff ---------------------------------


def test_plan_expire_drops_received_partials_before_the_cutoff() -> None:
    from tests.unit.test_inventory_decisions import NOW as EXPIRE_NOW
    from tests.unit.test_inventory_decisions import seg as expire_seg
    from tests.unit.test_inventory_decisions import three_backups
    from walkeeper.commands.expire import plan_expire
    from walkeeper.core.wal import parse_wal_name
    from walkeeper.repo.layout import received_partial_key

    inv = three_backups()  # backups starting at segments 2, 5 and 8 of timeline 1
    keys = {segno: received_partial_key(parse_wal_name(expire_seg(1, segno)), 8192) for segno in (4, 5, 10)}
    inv.received = [(key, 100, expire_seg(1, segno)) for segno, key in keys.items()]
    plan = plan_expire(inv, keep=2, keep_days=None, now=EXPIRE_NOW)  # cutoff: segment 5
    removed = [key for key, _size in plan.removals]
    assert keys[4] in removed and keys[5] not in removed and keys[10] not in removed


# -- check --max-receive-lag (repo/health.judge) -------------------------------------------------------------


@pytest.mark.parametrize(("receive", "thresholds", "status", "says"), [
    ({"lag_seconds": 5.0}, {"max_receive_lag": 60.0}, 0, None),
    ({"lag_seconds": 90.0}, {"max_receive_lag": 60.0}, 2, "last WAL received by wal-receive 1.5m ago"),
    ({"lag_seconds": 90.0}, {"warn_receive_lag": 60.0, "max_receive_lag": 600.0}, 1, "received by wal-receive"),
    (None, {"max_receive_lag": 60.0}, 2, "no WAL received by wal-receive at all"),
    (None, {}, 0, None),  # never ran, not asked: not judged
    ({"lag_seconds": 9999.0}, {}, 0, None),
])
def test_check_receive_lag(receive: dict | None, thresholds: dict, status: int, says: str | None) -> None:
    from tests.unit.test_check_decisions import doc, verdict
    from walkeeper.repo.health import Thresholds

    repo = {**doc(), "receive": receive}
    got, messages = verdict(repo, Thresholds(**thresholds))
    assert got == status, messages
    if says:
        assert any(says in m for m in messages), messages

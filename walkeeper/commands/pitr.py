"""``walkeeper pitr``: recover a data directory to a point in time (postgres/recovery.py does the work).

Nothing is written before the plan holds: the target is validated, a backup that ended before it
is chosen, and every WAL segment recovery will read is present in the repository (repo/pitr_plan.py).
"""

from __future__ import annotations

from typing import Any

from walkeeper.core.config import Config
from walkeeper.postgres.recovery import PitrResult, recover


def pitr(config: Config, pgdata: str, **options: Any) -> PitrResult:
    """Plan, restore and write the recovery settings; options as ``recover`` takes them."""
    return recover(config, pgdata, **options)

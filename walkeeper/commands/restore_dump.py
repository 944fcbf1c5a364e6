"""`walkeeper restore-dump`: load a logical dump into a server (postgres/dump_restore.py does the work,
shared with ``restore-test --dump``)."""

from __future__ import annotations

from walkeeper.postgres.dump_restore import (  # noqa: F401 (the CLI's names)
    RestoreDumpOptions,
    RestoreDumpResult,
    restore_dump,
)

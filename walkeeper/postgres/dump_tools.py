"""The PostgreSQL client programs for logical dumps: pg_dump, pg_dumpall, pg_restore, at least as new as the server.

Shared by ``dump``, ``restore-dump`` and ``restore-test --dump``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from walkeeper.core.config import Config
from walkeeper.core.errors import PostgresError
from walkeeper.postgres.client import pg_tool, tool_version


def dump_tool(config: Config, name: str, server_major: int) -> str:
    """``name`` (pg_dump, pg_dumpall, pg_restore) at least as new as the server.

    [backup] pg_bin_dir wins; otherwise the newest of PATH's and ``/usr/lib/postgresql/*/bin``'s,
    since an older pg_dump refuses a newer server and a newer one reads every older server.
    """
    if config.backup.pg_bin_dir:
        path = pg_tool(config, name)
        candidates = [path]
    else:
        found = [p for p in [shutil.which(name)] if p]
        found += [str(p) for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}")]
        candidates = list(dict.fromkeys(found))
        if not candidates:
            pg_tool(config, name)  # raises the usual "not found"
    versions = sorted(((tool_version(p)[0], p) for p in candidates), reverse=True)
    major, path = versions[0]
    if major < server_major:
        raise PostgresError(f"{name} {major} ({path}) is older than the server (PostgreSQL {server_major}) and "
                            "cannot dump it", hint=f"install the PostgreSQL {server_major} client or set "
                                                   "[backup] pg_bin_dir")
    return path

"""pg_receivewal for wal-receive: its command line, what its failures mean, physical replication slots.

walkeeper runs pg_receivewal with ``--no-loop`` and restarts it itself (commands/wal_receive.py), so
that each failure is seen: a refused connection (pg_hba.conf, a role without REPLICATION) or a
missing slot ends wal-receive with one line instead of a retry loop that never succeeds.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from walkeeper.core.config import Config
from walkeeper.core.errors import ConfigError, PostgresError, ReplicationRefused
from walkeeper.postgres.client import ConnOptions, ToolProcess, pg_tool, psql

SLOT_RE = re.compile(r"^[a-z0-9_]{1,63}$")  # PostgreSQL's rule for replication slot names
DEFAULT_APPLICATION_NAME = "walkeeper_receive"


def validate_slot(name: str) -> str:
    if not SLOT_RE.match(name or ""):
        raise ConfigError(f"invalid replication slot name {name!r}",
                          hint="slot names are 1-63 lower-case letters, digits and underscores")
    return name


class Failure(enum.Enum):
    SLOT_MISSING = "slot missing"
    REFUSED = "replication refused"
    OTHER = "other"  # the server is down, restarting, the network...: retried


_REFUSED = ("no pg_hba.conf entry for replication connection", "pg_hba.conf rejects replication connection",
            "must be superuser or replication role", "permission denied to start WAL sender",
            "password authentication failed")


def classify_failure(lines: Iterable[str]) -> tuple[Failure, str]:
    """What pg_receivewal's stderr says went wrong, with the line that says it (pure: table-tested)."""
    last = ""
    for line in lines:
        text = line.strip()
        if not text:
            continue
        last = text
        if re.search(r'replication slot "[^"]*" does not exist', text):
            return Failure.SLOT_MISSING, text
        if any(marker in text for marker in _REFUSED):
            return Failure.REFUSED, text
    return Failure.OTHER, last


def refusal_error(kind: Failure, line: str, slot: str) -> ReplicationRefused:
    message = line.removeprefix("pg_receivewal: error: ").removeprefix("pg_receivewal: ")
    if kind is Failure.SLOT_MISSING:
        return ReplicationRefused(
            f"replication slot {slot} does not exist on the server ({message})",
            hint=f"create it with walkeeper wal-receive --create-slot, or select "
                 f"pg_create_physical_replication_slot('{slot}', true)")
    return ReplicationRefused(
        f"the server refuses replication connections from walkeeper ({message})",
        hint="add a 'host replication USER ADDRESS scram-sha-256' (or 'local replication USER peer') line to "
             "pg_hba.conf, reload, and give the role REPLICATION")


@dataclass(frozen=True)
class ReceiveSpec:
    spool: str
    slot: str
    synchronous: bool = False
    status_interval: int = 10  # seconds between pg_receivewal's status packets (the slot's progress)


def server_major(config: Config, conn: ConnOptions) -> int | None:
    """The server's major version, to run its own pg_receivewal; None when a plain session is refused
    (pg_receivewal then says what is wrong with the replication connection)."""
    try:
        return int(psql(config, conn, "select current_setting('server_version_num')")) // 10000
    except (PostgresError, ValueError):
        return None


def receivewal_command(config: Config, conn: ConnOptions, spec: ReceiveSpec, major: int | None = None) -> list[str]:
    cmd = [pg_tool(config, "pg_receivewal", major), "-D", spec.spool, "--slot", validate_slot(spec.slot), "--no-loop",
           "--status-interval", str(spec.status_interval), "-w", *conn.args()]
    if spec.synchronous:
        cmd.append("--synchronous")
    return cmd


def receivewal_env() -> dict[str, str]:
    """pg_receivewal's environment: application_name walkeeper_receive unless PGAPPNAME says otherwise
    (synchronous_standby_names names it; a conninfo in --dbname may also set application_name)."""
    env = dict(os.environ)
    env.setdefault("PGAPPNAME", DEFAULT_APPLICATION_NAME)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return env


def start_receivewal(config: Config, conn: ConnOptions, spec: ReceiveSpec, major: int | None = None) -> ToolProcess:
    return ToolProcess(receivewal_command(config, conn, spec, major), name="pg_receivewal", stdout=False,
                       env=receivewal_env())


# -- physical replication slots (wal-receive --create-slot, pitr --standby --create-slot) -------------------


def slot_exists(config: Config, conn: ConnOptions, slot: str) -> bool:
    validate_slot(slot)
    row = psql(config, conn, f"select count(*) from pg_replication_slots where slot_name = '{slot}'")
    return row.strip() not in ("", "0")


def create_physical_slot(config: Config, conn: ConnOptions, slot: str) -> bool:
    """Create a physical slot that holds WAL from now on; False when it already exists (kept as it is)."""
    if slot_exists(config, conn, slot):
        row = psql(config, conn, f"select slot_type from pg_replication_slots where slot_name = '{slot}'")
        if row.strip() != "physical":
            raise PostgresError(f"replication slot {slot} exists but is a {row.strip()} slot, not a physical one",
                                hint="choose another slot name")
        return False
    psql(config, conn, f"select pg_create_physical_replication_slot('{slot}', true)")
    return True

"""PostgreSQL's recovery settings as walkeeper pitr writes them: restore_command, the recovery target,
the signal file (recovery.signal or standby.signal) and the marked block in postgresql.auto.conf."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from walkeeper.core.durable import fsync_dir, write_file
from walkeeper.core.errors import ConfigError
from walkeeper.core.units import plural

if TYPE_CHECKING:
    from walkeeper.postgres.standby import StreamingSettings

log = logging.getLogger(__name__)

BLOCK_BEGIN = "# BEGIN walkeeper pitr"
BLOCK_END = "# END walkeeper pitr"


class RecoveryPlan(Protocol):
    """What the settings need of a PITR plan (repo/pitr_plan.py's Plan)."""

    target: Any
    action: str
    exclusive: bool
    timeline: Any
    standby: bool


# -- writing the settings ------------------------------------------------------------------------

def quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def restore_command(config_path: str | None, repo_flag: str | None, *, repository_name: bool = False) -> str:
    """``wal-fetch %f %p`` with this configuration; ``repo_flag`` a configured repository's name
    (``repository_name``), a URL, or a path made absolute (the server runs it from its data directory)."""
    exe = walkeeper_executable()
    parts = [exe]
    if config_path:
        parts += ["--config", os.path.abspath(config_path)]
    if repo_flag:
        parts += ["--repo", repo_flag if repository_name or "://" in repo_flag else os.path.abspath(repo_flag)]
    return " ".join(shlex.quote(p) for p in parts) + " wal-fetch %f %p"


def walkeeper_executable() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if os.path.basename(argv0).startswith("walkeeper") and os.path.exists(argv0):
        return os.path.abspath(argv0)
    beside = Path(sys.executable).parent / "walkeeper"
    if beside.exists():
        return str(beside)
    found = shutil.which("walkeeper")
    if found:
        return os.path.abspath(found)
    raise ConfigError("cannot tell where the walkeeper executable is, for restore_command")


_TARGET_LINE = re.compile(r"^\s*(recovery_target\w*)\s*=?", re.IGNORECASE)
_STREAMING_LINE = re.compile(r"^\s*(primary_conninfo|primary_slot_name)\s*=?", re.IGNORECASE)
_RESTORE_LINE = re.compile(r"^\s*restore_command\s*=?", re.IGNORECASE)


def _comment_out(text: str, *, include_restore: bool, include_streaming: bool = False) -> tuple[str, int]:
    out = []
    changed = 0
    for line in text.splitlines(keepends=True):
        if _TARGET_LINE.match(line) or (include_restore and _RESTORE_LINE.match(line)) or \
                (include_streaming and _STREAMING_LINE.match(line)):
            out.append(f"# commented out by walkeeper pitr (a recovery target is set below): {line}")
            changed += 1
        else:
            out.append(line)
    return "".join(out), changed


def settings_block(plan: RecoveryPlan, command: str, streaming: StreamingSettings | None = None) -> str:
    lines = [f"{BLOCK_BEGIN} (written {datetime.now(UTC).isoformat(timespec='seconds')}; "
             "replaced by the next walkeeper pitr, remove after recovery if you like)",
             f"restore_command = {quote_conf(command)}"]
    target = plan.target
    if target.kind == "immediate":
        lines.append("recovery_target = 'immediate'")
    elif target.kind != "none":
        lines.append(f"recovery_target_{target.kind} = {quote_conf(target.value)}")
    if target.kind != "none":
        lines.append(f"recovery_target_action = {quote_conf(plan.action)}")
        if plan.exclusive:
            lines.append("recovery_target_inclusive = off")
    lines.append(f"recovery_target_timeline = {quote_conf(str(plan.timeline))}")
    if streaming is not None:
        lines.extend(f"{key} = {quote_conf(value)}" for key, value in streaming.settings())
    lines.append(BLOCK_END)
    return "\n".join(lines) + "\n"


def write_settings(pgdata: Path, plan: RecoveryPlan, command: str,
                   streaming: StreamingSettings | None = None) -> list[str]:
    """Write the signal file and the marked block; returns notes on what else was changed.

    ``streaming`` (pitr --standby --primary-conninfo/--primary-slot-name, postgres/standby.py) adds
    primary_conninfo and primary_slot_name to the block; earlier ones elsewhere are commented out.
    """
    has_streaming = streaming is not None and bool(streaming.settings())
    notes = []
    auto = pgdata / "postgresql.auto.conf"
    text = auto.read_text() if auto.exists() else ""
    # Drop a previous block of ours, then comment out conflicting lines elsewhere.
    text = re.sub(rf"(?ms)^{re.escape(BLOCK_BEGIN)}.*?^{re.escape(BLOCK_END)}\n?", "", text)
    text, changed = _comment_out(text, include_restore=True, include_streaming=has_streaming)
    if changed:
        notes.append(f"commented out {plural(changed, 'earlier recovery setting line')} in {auto}")
    if text and not text.endswith("\n"):
        text += "\n"
    # Each file durable and replaced atomically (never rewritten in place): a crash leaves the old or the new.
    write_file(auto, (text + settings_block(plan, command, streaming)).encode())
    conf = pgdata / "postgresql.conf"
    if conf.exists():
        original = conf.read_text()
        updated, changed = _comment_out(original, include_restore=False, include_streaming=has_streaming)
        if changed:
            write_file(conf, updated.encode(), mode=stat.S_IMODE(conf.stat().st_mode))
            what = "recovery or streaming setting line" if has_streaming else "recovery_target* line"
            notes.append(f"commented out {plural(changed, what)} in {conf}")
    signal = pgdata / ("standby.signal" if plan.standby else "recovery.signal")
    other = pgdata / ("recovery.signal" if plan.standby else "standby.signal")
    write_file(signal, b"")
    if other.exists():
        other.unlink()
        fsync_dir(pgdata)
        notes.append(f"removed {other.name}")
    return notes

"""restore and pitr show progress (bytes, rate, ETA) on a terminal, as backup does, and nothing otherwise."""

from __future__ import annotations

import os
import re
import subprocess
import time

from tests.conftest import Setup
from tests.helpers.pgharness import WALKEEPER_BIN, as_pg
from tests.postgres.test_messages import BACKUP_ID, backup_tar
from tests.postgres.test_operate import add_backup, push_segments

METER = re.compile(r"restore 20260101T000000Z: [0-9.]+ (B|KiB|MiB) at [0-9.]+ (B|KiB|MiB|GiB)/s")


def run_with_terminal_stderr(setup: Setup, *args: object) -> tuple[int, str, str]:
    """Run walkeeper as postgres with stderr on a pseudo-terminal; returns (exit, stdout, terminal text)."""
    master, slave = os.openpty()
    cmd = as_pg([str(WALKEEPER_BIN), "--config", str(setup.config), *map(str, args)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    out, _ = proc.communicate(timeout=120)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


def test_restore_and_pitr_show_progress_only_on_a_terminal(setup: Setup) -> None:
    push_segments(setup, 1, [1, 2, 3])
    add_backup(setup, BACKUP_ID, 1, 1, 1, ended=time.time() - 60, data=backup_tar())

    code, out, tty = run_with_terminal_stderr(setup, "restore", "--pgdata", setup.work / "r1")
    assert code == 0, tty
    assert METER.search(tty), tty
    assert ", ~3.0 MiB total, ETA " in tty, tty  # the first update comes before the end: it has an ETA
    assert "restored backup" in out and "\r" not in out

    code, out, tty = run_with_terminal_stderr(setup, "pitr", "--pgdata", setup.work / "p1", "--target-immediate")
    assert code == 0, tty
    assert METER.search(tty), tty

    # Not a terminal: no meter at all.
    proc = setup.wk("restore", "--pgdata", setup.work / "r2")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    proc = setup.wk("pitr", "--pgdata", setup.work / "p2", "--target-immediate")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr

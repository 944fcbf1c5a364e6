"""[notify] on_failure: the command sees the failure in its environment, is bounded in time,
rate-limited per event, and never changes walkeeper's own exit code."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import Setup
from tests.contract.test_wal_contract import SYSID, fetch, push, stored
from tests.helpers.walfactory import make_segment


def configure(setup: Setup, command: str, *, timeout: float = 10, min_interval: float = 3600) -> Path:
    state = setup.work / "notify-state.json"
    setup.write_config(
        f'repo = "{setup.repo}"\n[encryption]\nkey_file = "{setup.key_file}"\n'
        f"[notify]\non_failure = '''{command}'''\ntimeout = {timeout}\nmin_interval = {min_interval}\n"
        f'state_file = "{state}"\n'
    )
    return state


def recorder(setup: Setup) -> tuple[str, Path]:
    """A command that appends its WALKEEPER_* environment as one JSON line per call."""
    out = setup.work / "notified.jsonl"
    script = setup.work / "record.py"
    script.write_text(
        "import json, os\n"
        f"with open({str(out)!r}, 'a') as f:\n"
        "    f.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith('WALKEEPER_')}) + '\\n')\n"
    )
    return f"/usr/bin/python3 {script}", out


def calls(out: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def test_failed_push_notifies_with_environment_and_is_rate_limited(setup: Setup) -> None:
    command, out = recorder(setup)
    state = configure(setup, command)
    name, data = make_segment(1, 3, sysid=SYSID, seed=1)
    assert push(setup, name, data).returncode == 0
    assert calls(out) == []  # success: nothing sent
    _, other = make_segment(1, 3, sysid=SYSID, seed=2)
    proc = push(setup, name, other)
    assert proc.returncode == 6, proc.stderr  # ConflictError, unchanged by the notification
    [env] = calls(out)
    assert env["WALKEEPER_EVENT"] == "wal-push"
    assert env["WALKEEPER_OBJECT"] == f"pg_wal/{name}"
    assert "already archived with different content" in env["WALKEEPER_ERROR"]
    assert env["WALKEEPER_EXIT_CODE"] == "6"
    assert env["WALKEEPER_REPO"] == str(setup.repo)
    assert env["WALKEEPER_SUPPRESSED"] == "0"
    for _ in range(3):  # a stuck archive retries: no new notification within min_interval
        assert push(setup, name, other).returncode == 6
    assert len(calls(out)) == 1
    doc = json.loads(state.read_text())
    assert doc["wal-push"]["failures"] == 4 and doc["wal-push"]["suppressed"] == 3
    # Another event has its own clock.
    path = stored(setup, name)
    path.write_bytes(path.read_bytes()[:-40])
    proc, _ = fetch(setup, name)
    assert proc.returncode == 205
    assert [c["WALKEEPER_EVENT"] for c in calls(out)] == ["wal-push", "wal-fetch"]
    assert calls(out)[1]["WALKEEPER_OBJECT"] == name
    # Once the interval has passed, the next failure is sent and says how many were held back.
    configure(setup, command, min_interval=0)
    assert push(setup, name, other).returncode == 6
    last = calls(out)[-1]
    assert last["WALKEEPER_EVENT"] == "wal-push" and last["WALKEEPER_SUPPRESSED"] == "3"


def test_not_found_fetch_does_not_notify(setup: Setup) -> None:
    command, out = recorder(setup)
    configure(setup, command, min_interval=0)
    name, data = make_segment(1, 3, sysid=SYSID)
    assert push(setup, name, data).returncode == 0
    proc, _ = fetch(setup, "000000010000000000000009")
    assert proc.returncode == 1 and proc.stderr == ""
    proc, _ = fetch(setup, "00000002.history")
    assert proc.returncode == 1
    assert calls(out) == []


def test_hanging_or_failing_command_is_bounded_and_harmless(setup: Setup) -> None:
    configure(setup, "sleep 60", timeout=1, min_interval=0)
    name, data = make_segment(1, 3, sysid=SYSID)
    started = time.monotonic()
    proc = push(setup, name + ".bogus", data)
    elapsed = time.monotonic() - started
    assert proc.returncode == 11, proc.stderr
    assert elapsed < 8, elapsed
    configure(setup, "echo boom >&2; exit 3", min_interval=0)
    proc = push(setup, name + ".bogus", data)
    assert proc.returncode == 11
    configure(setup, "/nonexistent/notifier", min_interval=0)
    proc = push(setup, name + ".bogus", data)
    assert proc.returncode == 11
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("walkeeper wal-push: error: not a WAL file name"), proc.stderr
    assert "notify: on_failure command exited 127" in lines[1]  # a broken notifier is said, not hidden

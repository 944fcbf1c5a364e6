"""An S3 endpoint that accepts connections and never answers: wal-fetch and wal-push give up within the bound
README states (attempts x timeouts + backoff), not that times botocore's own retries."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.contract.test_wal_contract import SYSID
from tests.helpers.pgharness import give_to_pg
from tests.helpers.servers import DUMMY_AWS_ENV
from tests.helpers.walfactory import make_segment
from walkeeper.core.errors import FATAL_BASE, TransientError
from walkeeper.storage.retry import RetryPolicy

CONNECT_TIMEOUT, READ_TIMEOUT, ATTEMPTS, BASE_DELAY = 1.0, 2.0, 2, 0.2
STARTUP_SLACK = 4.0  # interpreter, boto3 import and runuser on a busy 2-core machine


@pytest.fixture
def silent_endpoint() -> Iterator[int]:
    """A loopback TCP server that accepts every connection, reads what comes, and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)  # kept open: the client waits for an answer that never comes

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for conn in held:
            with contextlib.suppress(OSError):
                conn.close()


def configure(setup: Setup, port: int) -> None:
    setup.repo_url = "s3://walkeeper-test/silent"
    setup.extra_config = (
        f'[s3]\nendpoint_url = "http://127.0.0.1:{port}"\nregion = "us-east-1"\naddressing_style = "path"\n'
        f"connect_timeout = {CONNECT_TIMEOUT}\nread_timeout = {READ_TIMEOUT}\n"
        f"[retry]\nattempts = {ATTEMPTS}\nbase_delay = {BASE_DELAY}\nmax_delay = 5.0\n")
    setup.write_config()


def bound() -> float:
    """README's formula: attempts x (connect_timeout + read_timeout) + the backoff between attempts."""
    return RetryPolicy(ATTEMPTS, BASE_DELAY, 5.0).worst_case(CONNECT_TIMEOUT + READ_TIMEOUT)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    return lines[0]


def test_wal_fetch_against_a_silent_endpoint_fails_within_the_bound(setup: Setup, silent_endpoint: int) -> None:
    configure(setup, silent_endpoint)
    pg_wal = setup.work / "data" / "pg_wal"
    pg_wal.mkdir(parents=True)
    give_to_pg(setup.work / "data")
    began = time.monotonic()
    proc = setup.wk("wal-fetch", "000000010000000000000001", "pg_wal/RECOVERYXLOG", cwd=setup.work / "data",
                    env=DUMMY_AWS_ENV, timeout=120)
    elapsed = time.monotonic() - began
    assert proc.returncode == FATAL_BASE + TransientError.code, proc.stderr  # 210: recovery stops, never "not found"
    line = one_line(proc.stderr)
    assert f"still failing after {ATTEMPTS} attempts: no answer from http://127.0.0.1:{silent_endpoint} within " \
        f"[s3] read_timeout = 2s" in line, line
    # Each attempt waited its read timeout (no instant failure) and botocore added no attempts of its own
    # (with them: 2 x 3 x 2 s = 12 s).
    assert ATTEMPTS * READ_TIMEOUT <= elapsed <= bound() + STARTUP_SLACK, (elapsed, bound())
    assert not (pg_wal / "RECOVERYXLOG").exists()


def test_wal_push_against_a_silent_endpoint_fails_within_the_bound(setup: Setup, silent_endpoint: int) -> None:
    configure(setup, silent_endpoint)
    pg_wal = setup.work / "data" / "pg_wal"
    pg_wal.mkdir(parents=True)
    name, data = make_segment(1, 1, sysid=SYSID)
    (pg_wal / name).write_bytes(data)
    give_to_pg(setup.work / "data")
    began = time.monotonic()
    proc = setup.wk("wal-push", f"pg_wal/{name}", cwd=setup.work / "data", env=DUMMY_AWS_ENV, timeout=120)
    elapsed = time.monotonic() - began
    assert proc.returncode == TransientError.code, proc.stderr  # non-zero: PostgreSQL keeps the segment, retries
    line = one_line(proc.stderr)
    assert f"still failing after {ATTEMPTS} attempts: no answer from" in line, line
    assert ATTEMPTS * READ_TIMEOUT <= elapsed <= bound() + STARTUP_SLACK, (elapsed, bound())


def test_worst_case_formula_matches_readme() -> None:
    # The defaults as README states them: 5 x (5 + 30) + (0.2 + 0.4 + 0.8 + 1.6) = 178 s.
    assert RetryPolicy().worst_case(5.0 + 30.0) == pytest.approx(178.0)
    assert RetryPolicy(ATTEMPTS, BASE_DELAY, 5.0).max_backoff() == pytest.approx(0.2)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "attempts \u00d7 (connect_timeout + read_timeout)" in readme and "178 s" in readme

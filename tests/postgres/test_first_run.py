"""A new user's first run, as README tells it: init as root, the archive_command init prints, a passing
`check --archive`, a base backup, all owned by the postgres user.

Each command is the one README shows (paths moved into a temporary directory); what the user copies from
init's output (the archive_command line) is taken from that output, not rebuilt by the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.pgharness import Cluster, pg_workdir, running_as_root
from tests.postgres.test_init import ok, owned_by_postgres, wk

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = pytest.mark.postgres


def test_readme_first_run_init_archive_check_backup() -> None:
    if not running_as_root():
        pytest.skip("README's first run is done as root (init for the data directory's owner)")
    text = README.read_text()
    # The commands this story runs are the ones README shows.
    for shown in ("init --pgdata", "--generate-key /etc/walkeeper/key --write-config /etc/walkeeper/walkeeper.toml",
                  "walkeeper check --archive", "walkeeper backup"):
        assert shown in text, f"README no longer shows {shown!r}: update this story with it"
    work = pg_workdir()
    etc = Path(os.environ.get("WALKEEPER_TEST_TMP", "/tmp")) / f"wk-first-run-{os.getpid()}-{time.time_ns()}"
    cluster = Cluster(work / "main").initdb()
    try:
        etc.mkdir(mode=0o755)  # root-owned, like /etc and /var/lib
        repo = etc / "var" / "walkeeper" / "repo"
        key, conf = etc / "walkeeper" / "key", etc / "walkeeper" / "walkeeper.toml"
        out = ok(wk("--repo", repo, "init", "--pgdata", cluster.datadir, "--generate-key", key, "--write-config", conf))
        match = re.search(r"archive_command = '([^']+)'", out)
        assert match, out
        archive_command = match.group(1)
        assert archive_command.endswith(f"--config {conf} wal-push %p")

        cluster.configure({**cluster.base_settings(), "wal_level": "replica", "archive_mode": "on",
                           "archive_command": archive_command})
        cluster.start()
        connection = ["-h", str(cluster.sockdir), "-p", str(cluster.port), "-U", "postgres"]

        # The preflight: settings, a forced switch, the segment read back from the repository.
        proc = wk("--config", conf, "check", "--archive", *connection)
        assert proc.returncode == 0 and proc.stdout.startswith("WALKEEPER OK"), (proc.stdout, proc.stderr)
        assert len(proc.stdout.strip().splitlines()) == 1
        doc = json.loads(ok(wk("--config", conf, "check", "--archive", *connection, "--json")))
        assert doc["status"] == "OK" and doc["seconds"] > 0

        # The first base backup, taken as root, is written as the repository's owner.
        ok(wk("--config", conf, "backup", *connection, "--fast-checkpoint", "--label", "first"))
        listed = json.loads(ok(wk("--config", conf, "backups", "--json")))
        assert [b["label"] for b in listed["backups"]] == ["first"]
        owned_by_postgres(repo, *repo.rglob("*"))
        # PostgreSQL itself archived through walkeeper, with no failure.
        stats = cluster.psql("select archived_count, failed_count from pg_stat_archiver")
        archived, failed = map(int, stats.split("|"))
        assert archived >= 2 and failed == 0, stats
        ok(wk("--config", conf, "verify", as_postgres=True))
    finally:
        cluster.destroy()
        subprocess.run(["rm", "-rf", str(work), str(etc)], check=False)

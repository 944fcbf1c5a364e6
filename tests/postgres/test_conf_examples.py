"""conf-examples/*.toml load through the real config loader and run as copied."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import give_to_pg
from tests.postgres.test_operate import add_backup, push_segments
from walkeeper.core.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "conf-examples"
TOMLS = sorted(EXAMPLES.glob("*.toml"))


def test_there_are_examples() -> None:
    assert {p.name for p in TOMLS} >= {"walkeeper.toml", "walkeeper-s3.toml", "walkeeper-ssh.toml",
                                       "walkeeper-minio.toml"}


@pytest.mark.parametrize("path", TOMLS, ids=[p.name for p in TOMLS])
def test_example_loads_and_can_expire_without_flags(path: Path) -> None:
    config = load_config(str(path), env={})
    assert config.repo
    # `walkeeper expire` without flags takes its rule from [retention]: an example must have one.
    assert config.retention.keep is not None or config.retention.keep_days is not None
    # A notification command must be a script we ship (README/conf-examples say where to install it).
    if config.notify.on_failure:
        script = Path(config.notify.on_failure.split()[0]).name
        assert list(EXAMPLES.rglob(script)), f"{path.name}: on_failure runs {script}, which conf-examples lacks"


def test_commented_notify_script_is_shipped() -> None:
    text = (EXAMPLES / "walkeeper.toml").read_text()
    assert "# on_failure = \"/etc/walkeeper/notify-mail.sh\"" in text
    assert "install -m 0755 conf-examples/monitoring/notify-mail.sh /etc/walkeeper/" in text
    assert (EXAMPLES / "monitoring" / "notify-mail.sh").exists()


def test_local_example_runs_as_copied(setup: Setup) -> None:
    """The example, copied unchanged (only repo and key_file pointed at this test's), archives and expires."""
    push_segments(setup, 1, [1, 2, 3, 4])
    add_backup(setup, "20260101T000000Z", 1, 2, 2, ended=time.time() - 3600)
    copied = setup.work / "example.toml"
    shutil.copy(EXAMPLES / "walkeeper.toml", copied)
    give_to_pg(copied)
    env = {"WALKEEPER_REPO": str(setup.repo), "WALKEEPER_ENCRYPTION_KEY_FILE": str(setup.key_file)}
    proc = setup.wk("--config", copied, "expire", "--dry-run", env=env, config=False)
    assert proc.returncode == 0, proc.stderr
    assert "would remove 1 object, " in proc.stdout and "wal/00000001/000000010000000000000001" in proc.stdout
    proc = setup.wk("--config", copied, "status", "--no-cluster", env=env, config=False)
    assert proc.returncode == 0 and "backup 20260101T000000Z" in proc.stdout, proc.stderr

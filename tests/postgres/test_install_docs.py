"""The install the docs describe is the one the scripts make, and shell completion reaches click.

Every `.../bin/walkeeper` in README.md and conf-examples/ must be the path scripts/setup-env.sh
creates by default (a path that nothing creates makes every copied archive_command fail). The
console entry (walkeeper/entry.py, bin/walkeeper) must pass click's completion variable through.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers.pgharness import WALKEEPER_BIN

ROOT = Path(__file__).resolve().parents[2]
EXECUTABLE = re.compile(r"[\w./$~{}-]*bin/walkeeper(?![\w.-])")


def setup_env_default() -> str:
    text = (ROOT / "scripts" / "setup-env.sh").read_text()
    venv = re.search(r"^VENV=\$\{WALKEEPER_VENV:-([^}]+)\}$", text, re.M)
    assert venv, "scripts/setup-env.sh no longer sets VENV=${WALKEEPER_VENV:-...}"
    assert 'WALKEEPER_BIN="$VENV/bin/walkeeper"' in text
    return f"{venv.group(1)}/bin/walkeeper"


PATH_LINK = " /usr/local/bin/walkeeper`"  # README: ln -s <the venv's walkeeper> /usr/local/bin/walkeeper


def documented_paths() -> list[tuple[str, str]]:
    """Every executable path in the docs; the one link README makes onto PATH is not an install path."""
    files = [ROOT / "README.md", *sorted(p for p in (ROOT / "conf-examples").rglob("*") if p.is_file())]
    return [(str(f.relative_to(ROOT)), m.group(0)) for f in files
            for m in EXECUTABLE.finditer(f.read_text().replace(PATH_LINK, "`"))]


def test_every_documented_path_is_the_one_setup_env_creates() -> None:
    expected = setup_env_default()
    found = documented_paths()
    assert len(found) >= 15, found  # README, postgresql.conf, systemd, cron, Nagios, Icinga
    assert {f for f, _ in found} >= {"README.md", "conf-examples/postgresql.conf", "conf-examples/cron/walkeeper",
                                     "conf-examples/systemd/walkeeper-backup.service",
                                     "conf-examples/monitoring/nagios-walkeeper.cfg",
                                     "conf-examples/monitoring/icinga2-walkeeper.conf"}
    wrong = [(f, p) for f, p in found if p != expected]
    assert not wrong, f"paths other than {expected}: {wrong}"


def test_readme_install_commands_make_that_path() -> None:
    readme = (ROOT / "README.md").read_text()
    venv = setup_env_default().removesuffix("/bin/walkeeper")
    assert f"/usr/bin/python3 -m venv {venv}\n" in readme
    assert f"{venv}/bin/pip install 'walkeeper[s3]'" in readme and f"{venv}/bin/pip install '.[s3]'" in readme
    assert f"ln -s {venv}/bin/walkeeper{PATH_LINK}" in readme
    for shell in ("bash", "zsh", "fish"):
        assert f"_WALKEEPER_COMPLETE={shell}_source walkeeper" in readme


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_come_from_the_installed_command(shell: str) -> None:
    env = {**os.environ, "_WALKEEPER_COMPLETE": f"{shell}_source"}
    proc = subprocess.run([str(WALKEEPER_BIN)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and f"_WALKEEPER_COMPLETE={shell}_complete" in proc.stdout, proc.stderr


@pytest.mark.parametrize(("words", "cword", "expected"), [
    ("walkeeper in", "1", "plain,init"),
    ("walkeeper wal-f", "1", "plain,wal-fetch"),  # the fast paths' names do not divert completion
    ("walkeeper init --gen", "2", "plain,--generate-key"),
])
def test_bash_completion_answers(words: str, cword: str, expected: str) -> None:
    env = {**os.environ, "_WALKEEPER_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
    proc = subprocess.run([str(WALKEEPER_BIN)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stdout.splitlines() == [expected], (proc.stdout, proc.stderr)

"""Bad input, as a new user would give it: each gets one clear stderr line and its exit code.

A table of wrong command lines, configuration values, environment variables, missing programs and
packages, closed pipes, unreadable files and missing directories, each run through the installed
`walkeeper` (as the postgres user, as PostgreSQL would run it). For every row: the exit code,
exactly one stderr line naming what went wrong (and, where there is one, what to do), and never a
traceback, "internal error" or Python's "Exception ignored" noise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import WALKEEPER_BIN, as_pg, give_to_pg
from tests.helpers.walfactory import fake_datadir, make_segment
from walkeeper.core.config import _sections, load_config
from walkeeper.core.config_values import check_env_names
from walkeeper.core.errors import ConfigError

SYSID = 7300000000000000001
SEGMENT = "000000010000000000000003"
ARCHIVED = "000000010000000000000002"  # what archived=True pushes
NOISE = ("Traceback", "internal error", "Exception ignored", "please report")


@dataclass(frozen=True)
class Row:
    """One bad input. ``args`` and ``config`` may use {work}, {repo}, {key}; ``prepare`` runs first."""

    id: str
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # fragments of the one stderr line (what; and what to do where there is a hint)
    config: str | None = None  # replaces the config file's text
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[Setup], None] | None = None
    archived: bool = False  # push one segment first, so that the repository exists
    stdout_closed: bool = False  # the reader of stdout has gone away (`| head -1` after its line)
    python: str = "walkeeper"  # "no-boto3": run under a Python that has everything but boto3/botocore
    lines: int = 1  # stderr lines expected (0 for a closed pipe: it ends quietly)


GOOD = 'repo = "{repo}"\n[encryption]\nkey_file = "{key}"\n'


def _unreadable_config(s: Setup) -> None:
    s.config.chmod(0)


def _existing_key(s: Setup) -> None:
    (s.work / "taken").write_text("x\n")
    give_to_pg(s.work / "taken")


def _config_dir(s: Setup) -> None:
    (s.work / "confdir").mkdir()
    give_to_pg(s.work / "confdir")


ROWS = [
    # WAL names
    Row("push-bad-name", ("wal-push", "pg_wal/nonsense"), 11, ("not a WAL file name", "WAL segments")),
    Row("push-missing-file", ("wal-push", f"pg_wal/{SEGMENT}"), 1, ("does not exist", "relative to the data")),
    Row("fetch-bad-name", ("wal-fetch", "../etc", "pg_wal/RECOVERYXLOG"), 211, ("not a WAL file name",)),
    # configuration values (file) and environment overrides
    Row("file-level-99", ("wal-list",), 3, ("[compression] level: 99 is out of range", "valid: 1 to 22"),
        config=GOOD + "[compression]\nlevel = 99\n"),
    Row("push-level-99", ("wal-push", f"pg_wal/{SEGMENT}"), 3, ("level: 99 is out of range",),
        config=GOOD + "[compression]\nlevel = 99\n"),
    Row("file-unknown-key", ("wal-list",), 3, ("unknown key 'levle'", "known keys"),
        config=GOOD + "[compression]\nlevle = 3\n"),
    Row("file-not-toml", ("wal-list",), 3, ("not valid TOML",), config="repo = \n"),
    Row("env-level-0", ("wal-list",), 3, ("WALKEEPER_COMPRESSION_LEVEL: 0 is out of range", "valid: 1 to 22"),
        env={"WALKEEPER_COMPRESSION_LEVEL": "0"}),
    Row("env-typo", ("wal-list",), 3, ("WALKEEPER_COMPRESSION_LEVLE", "did you mean WALKEEPER_COMPRESSION_LEVEL"),
        env={"WALKEEPER_COMPRESSION_LEVLE": "3"}, archived=True),
    Row("env-wrong-type", ("wal-list",), 3, ("WALKEEPER_ARCHIVE_PUSH_AHEAD: expected an integer",),
        env={"WALKEEPER_ARCHIVE_PUSH_AHEAD": "many"}),
    Row("env-bad-choice", ("wal-list",), 3, ("WALKEEPER_COMPRESSION_METHOD", "is not one of"),
        env={"WALKEEPER_COMPRESSION_METHOD": "lz4"}),
    # unknown options and arguments
    Row("check-unknown-option", ("check", "--bogus"), 3, ("walkeeper check: error: No such option", "--help")),
    Row("check-extra-argument", ("check", "extra"), 3, ("unexpected extra argument", "--help")),
    Row("list-unknown-option", ("wal-list", "--bogus"), 2, ("walkeeper wal-list: error: No such option",)),
    Row("unknown-command", ("wal-lsit",), 2, ("No such command 'wal-lsit'", "walkeeper --help")),
    Row("fetch-missing-dest", ("wal-fetch", SEGMENT), 202, ("Missing argument 'DEST'",)),
    Row("verify-bad-jobs", ("verify", "--jobs", "0"), 2, ("--jobs", "not in the range")),
    # keys
    Row("key-missing-dir", ("key", "generate", "--output", "{work}/nodir/key"), 3,
        ("walkeeper key generate: error: cannot write the key", "create the directory first")),
    Row("key-exists", ("key", "generate", "--output", "{work}/taken"), 15,
        ("already exists; refusing to overwrite", "choose another --output"), prepare=_existing_key),
    Row("key-file-is-dir", ("wal-fetch", SEGMENT, "pg_wal/RECOVERYXLOG"), 204, ("is not a regular file",),
        config='repo = "{repo}"\n[encryption]\nkey_file = "{work}"\n'),
    # unreadable files, missing directories, mistyped repositories
    Row("config-unreadable", ("wal-list",), 3, ("is not readable", "fix its permissions"),
        prepare=_unreadable_config),
    Row("config-is-dir", ("--config", "{work}/confdir", "wal-list"), 3, ("is a directory",), prepare=_config_dir),
    Row("config-missing", ("--config", "{work}/nope.toml", "wal-list"), 3, ("nope.toml does not exist",)),
    Row("list-no-repo", ("--repo", "{work}/mistyped", "wal-list"), 9, ("no walkeeper repository", "check repo")),
    Row("backups-no-repo", ("--repo", "{work}/mistyped", "backups"), 9, ("no walkeeper repository",)),
    Row("status-no-repo", ("--repo", "{work}/mistyped", "status", "--no-cluster"), 9, ("no walkeeper repository",)),
    Row("bad-repo-url", ("--repo", "ssh://u@[::1/x", "wal-list"), 3, ("invalid repository URL",)),
    Row("fetch-dest-missing-dir", ("wal-fetch", ARCHIVED, "{work}/nodir/RECOVERYXLOG"), 209, ("cannot write",),
        archived=True),
    # missing programs and packages
    Row("no-boto3", ("--repo", "s3://bucket/prefix", "wal-list"), 3,
        ("needs boto3 and botocore", "pip install 'walkeeper[s3]'"), python="no-boto3"),
    Row("no-boto3-push", ("--repo", "s3://bucket/prefix", "wal-push", f"pg_wal/{SEGMENT}"), 3,
        ("needs boto3",), python="no-boto3"),
    Row("no-ssh", ("--repo", "ssh://postgres@127.0.0.1/x", "wal-list"), 3, ("ssh client is not installed",),
        env={"PATH": "{work}/emptybin"}),
    Row("no-pg-bin", ("backup",), 3, ("pg_bin_dir", "is not an executable"),
        config=GOOD + '[backup]\npg_bin_dir = "{work}/nobin"\n'),
    # closed pipes: end quietly with 141, like a tool killed by SIGPIPE
    Row("list-closed-pipe", ("wal-list",), 141, (), archived=True, stdout_closed=True, lines=0),
    Row("list-json-closed-pipe", ("wal-list", "--json"), 141, (), archived=True, stdout_closed=True, lines=0),
    Row("status-closed-pipe", ("status", "--no-cluster"), 141, (), archived=True, stdout_closed=True, lines=0),
    Row("check-closed-pipe", ("check",), 141, (), archived=True, stdout_closed=True, lines=0),
    Row("help-closed-pipe", ("--help",), 141, (), stdout_closed=True, lines=0),
    Row("key-closed-pipe", ("key", "generate"), 141, (), stdout_closed=True, lines=0),
]


def _python_without_boto3(work: Path) -> Path:
    """A real installation of walkeeper and its dependencies, minus boto3/botocore (no `[s3]` extra).

    A venv whose site-packages links every package of walkeeper's venv except the AWS SDK: what
    `pip install walkeeper` without the extra gives, without a network install in the test.
    """
    venv = work / "venv-no-boto3"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    source = Path(subprocess.run([str(WALKEEPER_BIN.parent / "python"), "-c",
                                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    target = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    for entry in source.iterdir():
        if not entry.name.lower().startswith(("boto3", "botocore", "s3transfer")):
            (target / entry.name).symlink_to(entry)
    give_to_pg(venv)
    return venv / "bin" / "python"


def run_row(s: Setup, row: Row) -> subprocess.CompletedProcess[str]:
    fmt = {"work": s.work, "repo": s.repo, "key": s.key_file}
    if row.config is not None:
        s.write_config(row.config.format(**fmt))
    (s.work / "emptybin").mkdir(exist_ok=True)
    datadir = fake_datadir(s.work / "pgdata")
    if row.archived:
        name, data = make_segment(1, 2, sysid=SYSID)
        (datadir / "pg_wal" / name).write_bytes(data)
        give_to_pg(s.work)
        pushed = s.wk("wal-push", f"pg_wal/{name}", cwd=datadir, env={"WALKEEPER_ARCHIVE_PUSH_AHEAD": "0"})
        assert pushed.returncode == 0, pushed.stderr
    give_to_pg(s.work)
    if row.prepare:
        row.prepare(s)
    args = [a.format(**fmt) for a in row.args]
    cmd = [str(WALKEEPER_BIN), *(() if "--config" in args else ("--config", str(s.config))), *args]
    if row.python == "no-boto3":
        cmd = [str(_python_without_boto3(s.work)), *cmd]
    cmd = as_pg(cmd)
    cmd[0] = shutil.which(cmd[0]) or cmd[0]  # found before PATH is changed for the command
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}
    env.update({k: v.format(**fmt) for k, v in row.env.items()})
    if not row.stdout_closed:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=datadir, env=env, timeout=60)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run(cmd, stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=datadir, env=env,
                              timeout=60)
    finally:
        os.close(write_end)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gets_one_clear_line_and_its_code(setup: Setup, row: Row) -> None:
    proc = run_row(setup, row)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == row.code, (proc.returncode, proc.stderr)
    assert len(lines) == row.lines, proc.stderr
    assert not any(noise in proc.stderr for noise in NOISE), proc.stderr
    for fragment in row.says:
        assert fragment in proc.stderr, proc.stderr
    if lines:
        assert lines[0].startswith("walkeeper"), lines[0]


def test_check_usage_error_still_prints_the_plugin_line(setup: Setup) -> None:
    proc = run_row(setup, Row("check", ("check", "--bogus"), 3, ()))
    assert proc.stdout.startswith("WALKEEPER UNKNOWN - bad command line"), proc.stdout


def test_verbose_shows_the_traceback_and_does_not_ask_for_it() -> None:
    from walkeeper.cli.context import error_message

    assert "rerun with -v" in error_message(KeyError("x"), 0)
    assert "rerun with -v" not in error_message(KeyError("x"), 1)


# -- the same rules at the unit level: config values and environment variables (no root, fast) --------

CONFIG_ROWS = [
    ("[compression]\nlevel = 99\n", {}, "level: 99 is out of range (valid: 1 to 22)"),
    ("[compression]\nlevel = 0\n", {}, "level: 0 is out of range"),
    ("[retry]\nattempts = 0\n", {}, "attempts: 0 is out of range (valid: at least 1)"),
    ("[archive]\npush_ahead = -1\n", {}, "push_ahead: -1 is out of range"),
    ("[ssh]\nio_timeout = 0\n", {}, "io_timeout: 0 is out of range"),
    ("", {"WALKEEPER_COMPRESSION_LEVEL": "23"}, "WALKEEPER_COMPRESSION_LEVEL: 23 is out of range"),
    ("", {"WALKEEPER_RETRY_BASE_DELAY": "nan"}, "expected a number, got nan"),
    ("", {"WALKEEPER_RESTORE_PREFETCH": "-2"}, "WALKEEPER_RESTORE_PREFETCH: -2 is out of range"),
    ("", {"WALKEEPER_COMPRESSION_LEVLE": "3"}, "did you mean WALKEEPER_COMPRESSION_LEVEL?"),
    ("", {"WALKEEPER_S3_ENDPOINT": "http://x"}, "did you mean WALKEEPER_S3_ENDPOINT_URL?"),
    ("", {"WALKEEPER_ARCHIVE_PUSHAHEAD": "4"}, "did you mean WALKEEPER_ARCHIVE_PUSH_AHEAD?"),
    ("", {"WALKEEPER_RETENTION_KEEP_DAY": "4"}, "did you mean WALKEEPER_RETENTION_KEEP_DAYS?"),
]


@pytest.mark.parametrize(("text", "env", "message"), CONFIG_ROWS)
def test_bad_values_fail_at_load(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "walkeeper.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), env=env)
    assert message in str(caught.value)


# Variables walkeeper, its notify hook, its scripts and tests use that are not settings: never refused.
NOT_SETTINGS = ["WALKEEPER_CONFIG", "WALKEEPER_REPO", "WALKEEPER_BIN", "WALKEEPER_VENV", "WALKEEPER_PG_BIN",
                "WALKEEPER_EXTRAS", "WALKEEPER_TEST_WORKERS", "WALKEEPER_TEST_TMP", "WALKEEPER_EVENT",
                "WALKEEPER_OBJECT", "WALKEEPER_ERROR", "WALKEEPER_EXIT_CODE", "WALKEEPER_SUPPRESSED",
                "WALKEEPER_TIME", "WALKEEPER_HOST", "WALKEEPER_STATE_ROOT", "WALKEEPER_NO_FAST_PATH",
                "WALKEEPER_TEST_PUSH_AHEAD_DELAY", "WALKEEPER_PG_DEBUG", "WALKEEPER_KEEP_SSHD_LOG"]


def test_variables_that_are_not_settings_are_left_alone() -> None:
    env = {name: "1" for name in NOT_SETTINGS if name != "WALKEEPER_CONFIG"}
    env["WALKEEPER_REPO"] = "/x"
    assert load_config(None, env=env).repo == "/x"


def test_every_variable_the_repository_uses_is_a_setting_or_listed() -> None:
    """A new WALKEEPER_<SECTION>_* knob that is not a setting would be refused: keep this list honest."""
    import re

    root = Path(__file__).resolve().parents[2]
    used: set[str] = set()
    for path in [*root.glob("walkeeper/**/*.py"), *root.glob("tests/**/*.py"), *root.glob("scripts/*"),
                 root / "README.md", *root.glob("conf-examples/**/*")]:
        if path.is_file() and path != Path(__file__).resolve():
            used |= set(re.findall(r"\bWALKEEPER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")))
    used.discard("WALKEEPER_COMPRESSION_LEVLE")  # README's example of a typo
    check_env_names({name: "" for name in used - set(NOT_SETTINGS)}, _sections())

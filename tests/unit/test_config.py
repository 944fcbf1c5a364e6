from __future__ import annotations

from pathlib import Path

import pytest

from walkeeper.core.config import load_config
from walkeeper.core.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "walkeeper.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_file() -> None:
    config = load_config(None, env={})
    assert config.repo == "" and config.compression.method == "zstd" and config.encryption.method == "aes-256-gcm"


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'repo = "/from/file"\n[compression]\nlevel = 5\n')
    assert load_config(path, env={}).repo == "/from/file"
    env = {"WALKEEPER_REPO": "/from/env", "WALKEEPER_COMPRESSION_LEVEL": "7"}
    config = load_config(path, env=env)
    assert (config.repo, config.compression.level) == ("/from/env", 7)
    assert load_config(path, env=env, repo="/from/flag").repo == "/from/flag"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'repo = "/x"\n')
    assert load_config(None, env={"WALKEEPER_CONFIG": path}).repo == "/x"


def test_key_file_relative_to_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[encryption]\nkey_file = "keys/main"\n')
    assert load_config(path, env={}).encryption.key_file == str(tmp_path / "keys" / "main")
    env = {"WALKEEPER_ENCRYPTION_KEY_FILE": "/etc/walkeeper/key"}
    assert load_config(path, env=env).encryption.key_file == "/etc/walkeeper/key"


@pytest.mark.parametrize(("text", "message"), [
    ('repo = "/x"\nrepository = "/y"\n', "unknown key 'repository'"),
    ('[compression]\nlevle = 3\n', "unknown key 'levle' in [compression]"),
    ('[compression]\nlevel = "3"\n', "[compression] level: expected an integer"),
    ('[compression]\nlevel = true\n', "[compression] level: expected an integer"),
    ('[compression]\nmethod = "lz4"\n', "'lz4' is not one of zstd, none"),
    ('[encryption]\nkey_file = 5\n', "[encryption] key_file: expected a string"),
    ('compression = 3\n', "[compression] must be a table"),
    ('repo = \n', "not valid TOML"),
])
def test_errors_name_file_key_and_expectation(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert message in str(info.value)
    assert path in str(info.value)


def test_bad_environment_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WALKEEPER_COMPRESSION_LEVEL: expected an integer"):
        load_config(None, env={"WALKEEPER_COMPRESSION_LEVEL": "fast"})
    with pytest.raises(ConfigError, match="WALKEEPER_ENCRYPTION_METHOD"):
        load_config(None, env={"WALKEEPER_ENCRYPTION_METHOD": "rot13"})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.toml"), env={})


def test_float_accepts_integer(tmp_path: Path) -> None:
    path = write(tmp_path, '[retry]\nmax_delay = 3\n')
    assert load_config(path, env={}).retry.max_delay == 3.0


# -- the fast path reads the settings it needs exactly as the full path does ---------------------------------

FAST_CASES = [  # (config text or None, read through a symlink in another directory, environment, --repo)
    ('repo = "/r"\n', False, {}, None),
    ('repo = "/r"\n[archive]\npush_ahead = 3\nstatus_dir = "st"\n[restore]\nprefetch = 0\nspool_dir = "../sp"\n',
     False, {}, None),
    ('repo = "/r"\n[archive]\nstatus_dir = "st"\n[restore]\nspool_dir = "sp/x"\n', True, {}, None),
    ('repo = "/r"\n[archive]\nstatus_dir = "/abs/st"\n', True, {}, None),
    ('repo = "/r"\n[archive]\nstatus_dir = "st"\n', True,
     {"WALKEEPER_ARCHIVE_STATUS_DIR": "", "WALKEEPER_RESTORE_SPOOL_DIR": "/env/sp"}, None),
    ('repo = "/r"\n[archive]\npush_ahead = 3\n', False,
     {"WALKEEPER_ARCHIVE_PUSH_AHEAD": "7", "WALKEEPER_RESTORE_PREFETCH": "2", "WALKEEPER_REPO": "/e"}, None),
    ('repo = "/r"\n', False, {"WALKEEPER_REPO": "/e"}, "/flag"),
    (None, False, {"WALKEEPER_REPO": "/e", "WALKEEPER_ARCHIVE_STATUS_DIR": "rel/st"}, None),
]


@pytest.mark.parametrize(("text", "via_link", "env", "flag"), FAST_CASES)
def test_fast_path_settings_equal_full_path_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     text: str | None, via_link: bool, env: dict[str, str],
                                                     flag: str | None) -> None:
    from walkeeper.accel import settings

    monkeypatch.setenv("WALKEEPER_STATE_ROOT", str(tmp_path / "state"))
    path = None
    if text is not None:
        (tmp_path / "real").mkdir()
        path = str(tmp_path / "real" / "walkeeper.toml")
        Path(path).write_text(text)
        if via_link:
            (tmp_path / "links").mkdir()
            (tmp_path / "links" / "walkeeper.toml").symlink_to(path)
            path = str(tmp_path / "links" / "walkeeper.toml")
    full = load_config(path, env=env, repo=flag)
    # An empty directory setting means the default to both ("" here, None there).
    expected = (full.repo, full.archive.push_ahead, full.restore.prefetch, full.archive.status_dir or None,
                full.restore.spool_dir or None)
    for _ in range(2):  # the second time from the fast path's cache of the file
        fast = settings.load_settings(path, flag, env)
        assert (fast.repo, fast.push_ahead, fast.prefetch, fast.status_dir, fast.spool_dir) == expected
    if text and 'status_dir = "st"' in text and not env:  # relative to the real file's directory
        assert full.archive.status_dir == str(tmp_path / "real" / "st")

from __future__ import annotations

from pathlib import Path

import pytest

from walkeeper.config import load_config
from walkeeper.errors import ConfigError


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

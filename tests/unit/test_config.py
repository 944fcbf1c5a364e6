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
    ('repo = "/x"\nrepositroy = "/y"\n', "unknown key 'repositroy'"),
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

MULTI = '[[repository]]\nname = "a"\nrepo = "/ra"\n[[repository]]\nname = "b"\nrepo = "s3://b/p"\n'
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
    # several repositories: the identities of what wal-push stores into and wal-fetch reads, in order
    (MULTI, False, {}, None),
    ('[archive]\nrequire = "any"\n' + MULTI, False, {}, None),
    (MULTI, False, {"WALKEEPER_ARCHIVE_REQUIRE": "any"}, None),
    (MULTI, False, {}, "b"),
    (MULTI, False, {"WALKEEPER_REPO": "b"}, None),
    (MULTI, False, {"WALKEEPER_REPO": "a"}, "/url"),
    ('[[repository]]\nname = "only"\nrepo = "/r"\n', True, {}, "only"),
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
    expected = (full.push_identity(), full.fetch_identity(), full.archive.push_ahead, full.restore.prefetch,
                full.archive.status_dir or None, full.restore.spool_dir or None)
    if len(full.repository_names()) == 1:
        assert full.push_identity() == full.fetch_identity() == full.repo  # as before several repositories
    for _ in range(2):  # the second time from the fast path's cache of the file
        fast = settings.load_settings(path, flag, env)
        assert (fast.repo, fast.fetch_repo, fast.push_ahead, fast.prefetch, fast.status_dir, fast.spool_dir) == \
            expected
    if text and 'status_dir = "st"' in text and not env:  # relative to the real file's directory
        assert full.archive.status_dir == str(tmp_path / "real" / "st")


# -- several repositories: [[repository]] tables (README "Several repositories") ----------------------------

TWO = '''
[s3]
region = "eu-west-1"
endpoint_url = "http://shared:9000"
[encryption]
key_file = "/keys/shared"
[compression]
level = 3
[[repository]]
name = "local"
repo = "/var/backups/pg"
[[repository]]
name = "offsite"
repo = "s3://bucket/pg"
[repository.s3]
endpoint_url = "http://offsite:9000"
[repository.encryption]
key_command = "cat /keys/offsite"
[repository.retention]
keep = 30
'''


@pytest.mark.parametrize(("text", "env", "flag", "expected"), [
    # (file, environment, --repo, (repository_name, repo, names, selected))
    ('repo = "/x"\n', {}, None, ("default", "/x", ["default"], False)),
    ('repo = "/x"\n', {"WALKEEPER_REPO": "/env"}, None, ("default", "/env", ["default"], False)),
    ('repo = "/x"\n', {}, "default", ("default", "default", ["default"], False)),  # single form: a URL as before
    (None, {}, "/flag", ("default", "/flag", ["default"], False)),
    (None, {}, None, ("default", "", ["default"], False)),
    (TWO, {}, None, ("local", "/var/backups/pg", ["local", "offsite"], False)),
    (TWO, {}, "offsite", ("offsite", "s3://bucket/pg", ["local", "offsite"], True)),
    (TWO, {"WALKEEPER_REPO": "offsite"}, None, ("offsite", "s3://bucket/pg", ["local", "offsite"], True)),
    (TWO, {"WALKEEPER_REPO": "offsite"}, "local", ("local", "/var/backups/pg", ["local", "offsite"], True)),
    (TWO, {}, "/elsewhere", ("default", "/elsewhere", ["default"], False)),  # a URL replaces the set
    (TWO, {"WALKEEPER_REPO": "s3://other/x"}, None, ("default", "s3://other/x", ["default"], False)),
])
def test_repository_selection(tmp_path: Path, text: str | None, env: dict[str, str], flag: str | None,
                              expected: tuple[str, str, list[str], bool]) -> None:
    config = load_config(write(tmp_path, text) if text else None, env=env, repo=flag)
    assert (config.repository_name, config.repo, config.repository_names(),
            config.repository_selected) == expected


@pytest.mark.parametrize(("name", "repo", "s3_endpoint", "region", "key_file", "key_command", "level", "keep"), [
    (None, "/var/backups/pg", "http://shared:9000", "eu-west-1", "/keys/shared", None, 3, None),
    ("local", "/var/backups/pg", "http://shared:9000", "eu-west-1", "/keys/shared", None, 3, None),
    # its own tables override key by key; its own key source replaces the shared ones (never added to them)
    ("offsite", "s3://bucket/pg", "http://offsite:9000", "eu-west-1", None, "cat /keys/offsite", 3, 30),
])
def test_repository_sections_override_top_level(tmp_path: Path, name: str | None, repo: str, s3_endpoint: str,
                                                region: str, key_file: str | None, key_command: str | None,
                                                level: int, keep: int | None) -> None:
    config = load_config(write(tmp_path, TWO), env={}).for_repository(name)
    assert (config.repo, config.s3.endpoint_url, config.s3.region, config.encryption.key_file,
            config.encryption.key_command, config.compression.level, config.retention.keep) == (
        repo, s3_endpoint, region, key_file, key_command, level, keep)
    assert config.source == str(tmp_path / "walkeeper.toml")


def test_each_repository_in_configured_order(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TWO), env={})
    assert [(c.repository_name, c.repo) for c in config.each_repository()] == [
        ("local", "/var/backups/pg"), ("offsite", "s3://bucket/pg")]
    # a Config of one repository still knows the others, and comes back to the same values
    offsite = config.for_repository("offsite")
    assert offsite.repository_names() == ["local", "offsite"]
    assert offsite.for_repository("local") == config
    # the single form: one repository named "default", itself
    single = load_config(write(tmp_path, 'repo = "/x"\n'), env={})
    assert single.each_repository() == [single] and single.for_repository("default") is single


def test_environment_overrides_every_repository(tmp_path: Path) -> None:
    env = {"WALKEEPER_S3_ENDPOINT_URL": "http://env:1", "WALKEEPER_COMPRESSION_LEVEL": "9"}
    config = load_config(write(tmp_path, TWO), env=env)
    assert [(c.s3.endpoint_url, c.compression.level) for c in config.each_repository()] == [
        ("http://env:1", 9), ("http://env:1", 9)]


def test_repository_paths_relative_to_config_file(tmp_path: Path) -> None:
    text = '[[repository]]\nname = "a"\nrepo = "/r"\n[repository.ssh]\nidentity_file = "id_ed25519"\n'
    config = load_config(write(tmp_path, text), env={})
    assert config.ssh.identity_file == str(tmp_path / "id_ed25519")


def test_direct_config_is_one_default_repository() -> None:
    from walkeeper.core.config import Config

    config = Config(repo="/x")
    assert config.repository_names() == ["default"] and config.each_repository() == [config]
    assert config.for_repository(None) is config
    with pytest.raises(ConfigError, match="no repository named 'other' is configured"):
        config.for_repository("other")


@pytest.mark.parametrize(("text", "message"), [
    ('repo = "/x"\n[[repository]]\nname = "a"\nrepo = "/y"\n', "both a top-level repo and [[repository]]"),
    ('[[repository]]\nrepo = "/y"\n', "[[repository]] #1 has no name"),
    ('[[repository]]\nname = "a b"\nrepo = "/y"\n', "name 'a b' is not a safe name"),
    ('[[repository]]\nname = "../x"\nrepo = "/y"\n', "name '../x' is not a safe name"),
    ('[[repository]]\nname = "1st"\nrepo = "/y"\n', "name '1st' is not a safe name"),
    ('[[repository]]\nname = 5\nrepo = "/y"\n', "name 5 is not a safe name"),
    ('[[repository]]\nname = "a"\n', "[[repository]] a has no repo"),
    ('[[repository]]\nname = "a"\nrepo = 5\n', "[[repository]] a repo: expected a string"),
    ('[[repository]]\nname = "a"\nrepo = "/y"\n[[repository]]\nname = "a"\nrepo = "/z"\n', "used twice"),
    ('[[repository]]\nname = "a"\nrepo = "/y"\n[[repository]]\nname = "b"\nrepo = "/y/"\n',
     "repository a has the same repo /y/"),
    ('[[repository]]\nname = "a"\nrepo = "/y"\nkeep = 3\n', "[[repository]] a: unknown key 'keep'"),
    ('[[repository]]\nname = "a"\nrepo = "/y"\n[repository.archive]\npush_ahead = 3\n', "unknown key 'archive'"),
    ('[[repository]]\nname = "a"\nrepo = "/y"\n[repository.s3]\nregoin = "x"\n', "unknown key 'regoin' in [s3]"),
    ('[[repository]]\nname = "a"\nrepo = "/y"\n[repository.compression]\nlevel = 99\n', "99 is out of range"),
    ('[[repository]]\nname = "a"\nrepo = "/y"\ns3 = 3\n', "[repository.s3] must be a table"),
    ('repository = "/y"\n', "repository must be an array of tables"),
    ('repository = []\n', "repository must be an array of tables"),
])
def test_repository_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert message in str(info.value) and path in str(info.value)


def test_unknown_repository_name_lists_the_names(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TWO), env={})
    with pytest.raises(ConfigError, match=r"no repository named 'nope' is configured \(configured: local, offsite\)"):
        config.for_repository("nope")


@pytest.mark.parametrize("text,env,want", [
    ("", {}, None),  # None: the number of cores
    ("[backup]\nworkers = 1\n", {}, 1),
    ("[backup]\nworkers = 4\n", {"WALKEEPER_BACKUP_WORKERS": "2"}, 2),
    ("", {"WALKEEPER_BACKUP_WORKERS": "3"}, 3),
])
def test_backup_workers(tmp_path: Path, text: str, env: dict[str, str], want: int | None) -> None:
    import os

    config = load_config(write(tmp_path, text), env=env)
    assert config.backup.workers == (want if want is not None else (os.cpu_count() or 1))


@pytest.mark.parametrize("text,env", [("[backup]\nworkers = 0\n", {}), ("", {"WALKEEPER_BACKUP_WORKERS": "0"}),
                                      ("", {"WALKEEPER_BACKUP_WORKERS": "two"})])
def test_backup_workers_refused(tmp_path: Path, text: str, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"(?i)backup.workers"):
        load_config(write(tmp_path, text), env=env)

"""Key sources (key_command, key_files), per-key-id errors: pure, no root, seconds."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

from walkeeper.codec import CodecSettings, Keyring, decode_bytes, encode_bytes
from walkeeper.codec.keys import material_from_command
from walkeeper.core.config import load_config
from walkeeper.core.errors import ConfigError, KeyMaterialError

KEY = base64.b64encode(bytes(range(32))).decode()  # fixed: test ids must match across xdist workers


def key_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("command,expected", [
    (f"echo {KEY}", "ok"),
    (f"printf %s {KEY}", "ok"),
    ("echo tooshort", "too short"),
    ("true", "printed nothing"),
    ("echo 'vault: permission denied' >&2; exit 3", "exit code 3: vault: permission denied"),
    ("exit 1", "exit code 1 \\(no message on stderr\\)"),
])
def test_key_command_outcomes(command: str, expected: str) -> None:
    if expected == "ok":
        assert material_from_command(command, 5) == base64.b64decode(KEY)
    else:
        with pytest.raises(KeyMaterialError, match=expected):
            material_from_command(command, 5)


def test_key_command_output_never_in_error_message() -> None:
    secret = "S3CRET-" + "x" * 10
    with pytest.raises(KeyMaterialError) as err:
        material_from_command(f"echo {secret}", 5)
    assert secret not in str(err.value) and secret not in str(getattr(err.value, "hint", ""))


def test_key_command_timeout_kills_the_whole_group() -> None:
    start = time.monotonic()
    with pytest.raises(KeyMaterialError, match=r"did not finish within 0\.5 s"):
        material_from_command("sleep 30 | cat", 0.5)  # a grandchild holds the pipe
    assert time.monotonic() - start < 5


def test_key_command_and_file_give_same_key_id(tmp_path: Path) -> None:
    path = key_file(tmp_path, "k")
    from_cmd = Keyring.from_sources(key_command=f"cat {path}")
    assert from_cmd.active_id == Keyring.from_file(path).active_id


def test_key_files_first_active_all_readable(tmp_path: Path) -> None:
    old, new = key_file(tmp_path, "old"), key_file(tmp_path, "new")
    before = Keyring.from_sources(key_files=[str(old)])
    blob, _ = encode_bytes(CodecSettings(keyring=before), "obj", b"x" * 100)
    both = Keyring.from_sources(key_files=[str(new), str(old)])
    assert both.active_id == Keyring.from_file(new).active_id
    assert both.key_ids == [Keyring.from_file(new).active_id, before.active_id]
    assert decode_bytes(both, blob, expected_name="obj")[1] == b"x" * 100
    only_new = Keyring.from_sources(key_files=[str(new)])
    with pytest.raises(KeyMaterialError, match=f"object obj was encrypted with key id {before.active_id}"):
        decode_bytes(only_new, blob)


def test_key_files_all_must_be_readable(tmp_path: Path) -> None:
    good = key_file(tmp_path, "good")
    with pytest.raises(KeyMaterialError, match="does not exist"):
        Keyring.from_sources(key_files=[str(good), str(tmp_path / "missing")])


@pytest.mark.parametrize("toml,expected", [
    ('key_files = ["a", "b"]', ["a", "b"]),
    ('key_files = "a"', ConfigError),
    ('key_files = [1]', ConfigError),
    ('key_command = "cat key"\nkey_command_timeout = 0', ConfigError),
])
def test_config_key_settings(tmp_path: Path, toml: str, expected: object) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'repo = "/r"\n[encryption]\n{toml}\n')
    if expected is ConfigError:
        with pytest.raises(ConfigError):
            load_config(str(conf))
    else:
        assert load_config(str(conf)).encryption.key_files == [str(tmp_path / p) for p in expected]


def test_key_files_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('repo = "/r"\n')
    monkeypatch.setenv("WALKEEPER_ENCRYPTION_KEY_FILES", "/k/a,/k/b")
    assert load_config(str(conf)).encryption.key_files == ["/k/a", "/k/b"]


def x25519_files(tmp_path: Path) -> tuple[Path, Path]:
    from walkeeper.codec.keys import generate_x25519_pair

    private, public = generate_x25519_pair()
    (tmp_path / "priv").write_text(private + "\n")
    (tmp_path / "priv").chmod(0o600)
    (tmp_path / "pub").write_text(public + "\n")
    (tmp_path / "pub").chmod(0o644)  # a public key may be world-readable
    return tmp_path / "priv", tmp_path / "pub"


def test_public_key_mode_round_trip_and_public_only_refusal(tmp_path: Path) -> None:
    from walkeeper.codec import check_round_trip

    priv, pub = x25519_files(tmp_path)
    public_only = Keyring.from_sources(key_file=str(pub))
    private = Keyring.from_sources(key_file=str(priv))
    assert public_only.active_id == private.active_id
    data = os.urandom(3000) * 50
    settings = CodecSettings(cipher="x25519-aes-256-gcm", keyring=public_only)
    blob, sha = encode_bytes(settings, "seg", data)
    check_round_trip(public_only, blob, name="seg", plain=data, sha256=sha)  # the writer's own self-check
    header = read_header_of(blob)
    assert header.cipher == "x25519-aes-256-gcm" and header.sha256 == sha and len(header.epk or b"") == 32
    assert decode_bytes(private, blob, expected_name="seg")[1] == data
    fresh_public = Keyring.from_sources(key_file=str(pub))  # another process on the database host
    with pytest.raises(KeyMaterialError, match="this host holds only the public key"):
        decode_bytes(fresh_public, blob)
    blob2, _ = encode_bytes(settings, "seg", data)
    assert blob2 != blob and data[:3000] not in blob2  # a fresh data key per object


def test_public_key_mode_detects_tampered_epk(tmp_path: Path) -> None:
    from walkeeper.core.errors import IntegrityError

    priv, pub = x25519_files(tmp_path)
    blob, _ = encode_bytes(CodecSettings(cipher="x25519-aes-256-gcm", keyring=Keyring.from_sources(key_file=str(pub))),
                           "seg", b"x" * 1000)
    header = read_header_of(blob)
    tampered = blob.replace(header.epk.hex().encode(), os.urandom(32).hex().encode())
    with pytest.raises(IntegrityError, match="failed authentication"):
        decode_bytes(Keyring.from_sources(key_file=str(priv)), tampered)


def read_header_of(blob: bytes):  # type: ignore[no-untyped-def]
    from walkeeper.codec import read_header

    pos = [0]

    def read(n: int) -> bytes:
        out = blob[pos[0]:pos[0] + n]
        pos[0] += n
        return out
    return read_header(read)


@pytest.mark.parametrize("cipher,which,ok", [
    ("x25519-aes-256-gcm", "pub", True), ("x25519-aes-256-gcm", "priv", True),
    ("x25519-aes-256-gcm", "sym", False), ("aes-256-gcm", "pub", False), ("aes-256-gcm", "sym", True),
])
def test_method_must_match_key_kind(tmp_path: Path, cipher: str, which: str, ok: bool) -> None:
    priv, pub = x25519_files(tmp_path)
    path = {"priv": priv, "pub": pub, "sym": key_file(tmp_path, "sym")}[which]
    keyring = Keyring.from_sources(key_file=str(path))
    if ok:
        CodecSettings(cipher=cipher, keyring=keyring)
    else:
        with pytest.raises(ConfigError, match="needs"):
            CodecSettings(cipher=cipher, keyring=keyring)


def test_private_key_file_must_be_private(tmp_path: Path) -> None:
    priv, _pub = x25519_files(tmp_path)
    priv.chmod(0o644)
    with pytest.raises(KeyMaterialError, match="accessible by group or others"):
        Keyring.from_sources(key_file=str(priv))


@pytest.mark.parametrize("keys,active,writer,ok", [
    (None, "aa", "aa", True),  # a repository never rotated
    (None, "aa", "bb", False),
    ([{"key_id": "aa", "active_since": "t0"}, {"key_id": "bb", "active_since": "t1"}], "bb", "bb", True),
    ([{"key_id": "aa", "active_since": "t0"}, {"key_id": "bb", "active_since": "t1"}], "bb", "aa", True),  # window
    ([{"key_id": "aa", "active_since": "t0", "retired": "t2"}, {"key_id": "bb", "active_since": "t1"}],
     "bb", "aa", False),
    ([{"key_id": "aa", "active_since": "t0"}, {"key_id": "bb", "active_since": "t1"}], "bb", "cc", False),
])
def test_which_keys_may_write(keys: list | None, active: str, writer: str, ok: bool) -> None:
    from walkeeper.repo.repository import RepoMeta

    assert RepoMeta(key_id=active, keys=keys).writable_key(writer) is ok


def test_rekey_leaves_an_object_that_changed_since_it_was_read(tmp_path: Path) -> None:
    """The replace is conditional: an object replaced (or removed) after the scan is not overwritten."""
    from walkeeper.codec.compress import Compression
    from walkeeper.commands.rekey import _rewrite, scan
    from walkeeper.core.config import load_config
    from walkeeper.repo.layout import META_KEY
    from walkeeper.repo.repository import RepoMeta, Repository
    from walkeeper.storage import open_storage

    old, new = key_file(tmp_path, "old"), key_file(tmp_path, "new")
    conf = tmp_path / "c.toml"
    conf.write_text(f'repo = "{tmp_path / "repo"}"\n')
    storage = open_storage(str(tmp_path / "repo"), load_config(str(conf)))
    old_ring = Keyring.from_sources(key_files=[str(old)])
    both = Keyring.from_sources(key_files=[str(new), str(old)])
    storage.put(META_KEY, RepoMeta(key_id=both.active_id).to_json())
    for name in ("a", "b"):
        storage.put(f"obj/{name}", encode_bytes(CodecSettings(keyring=old_ring), name, name.encode() * 100)[0])
    repo = Repository(storage, CodecSettings(compression=Compression(), keyring=both))
    infos = {info.key: info for info, _header in scan(repo)}
    replacement = encode_bytes(CodecSettings(keyring=old_ring), "a", b"other" * 300)[0]
    time.sleep(0.01)
    storage.put("obj/a", replacement)  # someone else's write after our read
    storage.delete(["obj/b"])  # expired meanwhile
    assert _rewrite(repo, infos["obj/a"]) is None and storage.get("obj/a") == replacement
    assert _rewrite(repo, infos["obj/b"]) is None
    assert not [i for i in storage.list("obj/")  if i.key == "obj/b"]  # not resurrected
    fresh = {info.key: info for info, _header in scan(repo)}
    assert _rewrite(repo, fresh["obj/a"]) is not None
    header, plain = decode_bytes(both, storage.get("obj/a"))
    assert plain == b"other" * 300 and header.key_id == both.active_id

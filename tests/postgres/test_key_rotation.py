"""key rotate / rekey --retire / key_command through the installed CLI, on local, S3 (moto) and ssh."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from tests.conftest import Setup, make_key
from tests.contract.test_wal_contract import fetch, push
from tests.helpers.pgharness import give_to_pg
from tests.helpers.walfactory import make_segment

SYSID = 7300000000000000001


def key_id(setup: Setup) -> str:
    return json.loads(setup.wk("key", "list", "--json").stdout)["keys"][-1]["key_id"]


def use_keys(setup: Setup, *files: object, command: str | None = None) -> None:
    body = (f'repo = "{setup.repo_url or setup.repo}"\n[encryption]\n'
            + (f"key_files = [{', '.join(repr(str(f)).replace(chr(39), chr(34)) for f in files)}]\n" if files else "")
            + (f"key_command = {json.dumps(command)}\nkey_command_timeout = 2\n" if command else "")
            + setup.extra_config)
    setup.write_config(body)


def push_range(setup: Setup, first: int, last: int) -> dict[str, bytes]:
    pushed = {}
    for segno in range(first, last + 1):
        name, data = make_segment(1, segno, sysid=SYSID, size=1024 * 1024)
        proc = push(setup, name, data)
        assert proc.returncode == 0, proc.stderr
        pushed[name] = data
    return pushed


def fetch_all(setup: Setup, pushed: dict[str, bytes]) -> None:
    for name, data in pushed.items():
        proc, dest = fetch(setup, name)
        assert proc.returncode == 0, proc.stderr
        assert dest.read_bytes() == data


def test_rotate_rekey_retire_then_destroy_old_key(backend_setup: Setup) -> None:
    s = backend_setup
    old_key = s.key_file
    pushed = push_range(s, 1, 3)
    old_id = key_id(s)
    new_key = s.work / "key2"
    proc = s.wk("key", "rotate", "--generate", new_key)
    assert proc.returncode == 0, proc.stderr
    assert "now the repository's active key" in proc.stdout
    give_to_pg(new_key)
    new_id = key_id(s)
    assert new_id != old_id
    # a writer still on the old key keeps archiving until its config changes
    pushed |= push_range(s, 4, 4)
    use_keys(s, new_key, old_key)
    pushed |= push_range(s, 5, 6)
    counts = json.loads(s.wk("key", "list", "--json").stdout)["objects_per_key_id"]
    assert counts == {old_id: 4, new_id: 2}
    fetch_all(s, pushed)
    dry = s.wk("rekey", "--retire", old_id, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["found"] == 4
    stop, failures, rounds = threading.Event(), [], [0]

    def restore_meanwhile() -> None:  # a restore reading every segment while rekey replaces them
        while not stop.is_set():
            for name, data in pushed.items():
                proc, dest = fetch(s, name)
                if proc.returncode != 0 or dest.read_bytes() != data:
                    failures.append((name, proc.returncode, proc.stderr))
            rounds[0] += 1

    reader = threading.Thread(target=restore_meanwhile)
    reader.start()
    try:
        done = s.wk("rekey", "--retire", old_id, "--json")
    finally:
        stop.set()
        reader.join()
    assert done.returncode == 0, done.stderr
    assert not failures and rounds[0] >= 1, failures
    report = json.loads(done.stdout)
    assert (report["rewritten"], report["remaining"], report["retired"]) == (4, 0, True), report
    again = s.wk("rekey", "--retire", old_id, "--json")  # idempotent
    assert json.loads(again.stdout)["rewritten"] == 0
    # the old key is gone: everything still decodes with the new key alone
    old_key.unlink()
    use_keys(s, new_key)
    fetch_all(s, pushed)
    deep = s.wk("verify", "--deep", "--json")
    assert json.loads(deep.stdout)["objects_per_key_id"] == {new_id: 6}, deep.stdout
    # a writer still configured with the retired key is refused, with one clear line
    status = json.loads(s.wk("status", "--json", "--no-cluster").stdout)
    assert [k["key_id"] for k in status["keys"]] == [old_id, new_id]
    assert status["keys"][0]["retired"] and status["keys"][1]["active"]


def test_missing_key_names_key_id_and_object(setup: Setup) -> None:
    pushed = push_range(setup, 1, 1)
    old_id = key_id(setup)
    other = make_key(setup.work / "other")
    assert setup.wk("key", "rotate", "--new-key", other).returncode == 0
    use_keys(setup, other)
    proc, _ = fetch(setup, next(iter(pushed)))
    assert proc.returncode == 204, proc.stderr
    assert f"key id {old_id}" in proc.stderr and next(iter(pushed)) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_retired_key_is_refused_for_writing(setup: Setup) -> None:
    push_range(setup, 1, 1)
    old_id = key_id(setup)
    new = make_key(setup.work / "new")
    assert setup.wk("key", "rotate", "--new-key", new).returncode == 0
    use_keys(setup, new, setup.key_file)
    assert setup.wk("rekey", "--retire", old_id).returncode == 0
    use_keys(setup, setup.key_file)
    name, data = make_segment(1, 2, sysid=SYSID, size=1024 * 1024)
    proc = push(setup, name, data)
    assert proc.returncode == 4 and "was retired" in proc.stderr, proc.stderr
    assert setup.wk("rekey", "--retire", key_id(setup)).returncode == 15  # the active key: refused


@pytest.mark.parametrize("command,code,text", [
    ("cat {key}", 0, ""),
    ("sleep 30", 4, "did not finish within 2 s"),
    ("echo short", 4, "too short"),
    ("echo 'vault sealed' >&2; exit 2", 4, "exit code 2: vault sealed"),
])
def test_key_command_push_and_fetch(backend_setup: Setup, command: str, code: int, text: str) -> None:
    s = backend_setup
    use_keys(s, command=command.format(key=s.key_file))
    name, data = make_segment(1, 1, sysid=SYSID, size=1024 * 1024)
    proc = push(s, name, data)
    assert proc.returncode == code, proc.stderr
    assert text in proc.stderr
    if code == 0:
        use_keys(s, s.key_file)  # the same key from a file reads it
        fetch_all(s, {name: data})
    else:
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_key_command_cost(setup: Setup) -> None:
    """Figure for README "Keys": one key_command call (fork+exec of sh and cat) and a wal-push with it."""
    import time

    from walkeeper.codec.keys import material_from_command

    start = time.perf_counter()
    for _ in range(20):
        material_from_command(f"cat {setup.key_file}", 5)
    per_call = (time.perf_counter() - start) / 20
    print(f"\nkey_command per call: {per_call * 1000:.1f} ms")
    assert per_call < 1.0
    assert subprocess.run(["true"]).returncode == 0


@pytest.mark.parametrize("sse,kms_key", [("aws:kms", "arn:aws:kms:us-east-1:123456789012:key/walkeeper-test"),
                                         ("AES256", None)])
def test_s3_server_side_encryption(setup: Setup, s3_server: object, sse: str, kms_key: str | None) -> None:
    """[s3] sse / sse_kms_key_id reach every PUT, single and multipart, including rekey's replacements."""
    from walkeeper.core.config import load_config
    from walkeeper.storage import open_storage

    s3 = s3_server
    extra = {"sse": sse, **({"sse_kms_key_id": kms_key} if kms_key else {})}
    setup.repo_url, setup.extra_config = s3.url(), s3.config_toml(**extra)  # type: ignore[attr-defined]
    setup.write_config()
    pushed = push_range(setup, 1, 1)
    storage = open_storage(setup.repo_url, load_config(str(setup.config)))
    storage.put("big/object", [os.urandom(1024 * 1024) for _ in range(7)])  # over one 5 MiB part: multipart
    client = s3.client()  # type: ignore[attr-defined]
    prefix = setup.repo_url.split("/", 3)[3]
    old_id = key_id(setup)
    new = make_key(setup.work / "new")
    assert setup.wk("key", "rotate", "--new-key", new).returncode == 0
    use_keys(setup, new, setup.key_file)
    assert setup.wk("rekey", "--retire", old_id).returncode == 0
    for key in [f"{prefix}/wal/00000001/{next(iter(pushed))}", f"{prefix}/big/object", f"{prefix}/walkeeper.json"]:
        head = client.head_object(Bucket=s3.bucket, Key=key)  # type: ignore[attr-defined]
        assert head.get("ServerSideEncryption") == sse, (key, head)
        if kms_key:
            assert kms_key in head.get("SSEKMSKeyId", ""), (key, head)
    fetch_all(setup, pushed)

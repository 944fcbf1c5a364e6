"""One contract, every backend: local files, S3 (moto server over HTTP) and rsync over ssh (a real sshd).

Each test runs against each backend through ``open_storage`` exactly as walkeeper opens them
(remote backends wrapped in the retry wrapper). A backend is done when it passes all of these.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.pgharness import free_port
from tests.helpers.servers import TcpForwarder
from walkeeper.core.config import load_config
from walkeeper.core.errors import AlreadyExists, InvalidName, NotFound, StorageError, TransientError
from walkeeper.storage import Storage, open_storage
from walkeeper.storage.base import Leftover

MiB = 1024 * 1024
BIG = 12 * MiB + 12345  # above the 5 MiB test multipart chunk: three parts on S3


@dataclass
class Target:
    """One backend under test: how to open it and how to reach around it."""

    name: str
    url: str
    tables: str  # [s3] / [ssh] TOML for this backend
    work: Path
    root: Path | None = None  # where objects lie as files (local, and ssh: the sshd runs on this host)
    forwarder: TcpForwarder | None = None  # stop it to cut the network
    s3: object | None = None

    def config_file(self, url: str | None = None, tables: str | None = None, attempts: int = 3) -> Path:
        path = self.work / f"cfg-{uuid.uuid4().hex[:8]}.toml"
        path.write_text(f'repo = "{url or self.url}"\n[retry]\nattempts = {attempts}\nbase_delay = 0.1\n'
                        f"max_delay = 0.5\n{self.tables if tables is None else tables}")
        return path

    def open(self, url: str | None = None, tables: str | None = None, attempts: int = 3) -> Storage:
        config = load_config(str(self.config_file(url, tables, attempts)), env={})
        return open_storage(config.repo, config)

    def plant(self, raw_key: str, data: bytes) -> None:
        """Put bytes at a raw name behind walkeeper's back (to fake an in-flight temp object)."""
        if self.root is not None:
            path = self.root / raw_key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            bucket, _, prefix = self.url[len("s3://"):].partition("/")
            self.s3.client().put_object(Bucket=bucket, Key=f"{prefix}/{raw_key}", Body=data)  # type: ignore[attr-defined]


@pytest.fixture(params=["local", "s3", "ssh"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "local":
        return Target("local", str(tmp_path / "repo"), "", tmp_path, root=tmp_path / "repo")
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        return Target("s3", s3.url(), s3.config_toml(), tmp_path, forwarder=s3.forwarder, s3=s3)
    ssh = request.getfixturevalue("ssh_server")
    url = ssh.url()
    root = Path("/" + url.split("/", 3)[3])  # the sshd runs on this host: the files are visible here too
    return Target("ssh", url, ssh.config_toml(), tmp_path, root=root, forwarder=ssh.forwarder)


@pytest.fixture
def store(target: Target) -> Iterator[Storage]:
    storage = target.open()
    yield storage
    storage.close()


def chunks(data: bytes, size: int = MiB) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_round_trip(store: Storage) -> None:
    store.put("wal/00000001/000000010000000000000001", b"segment", metadata={"sha256": "ab" * 32})
    assert store.get("wal/00000001/000000010000000000000001") == b"segment"
    with store.open("wal/00000001/000000010000000000000001") as handle:
        assert handle.read() == b"segment"
    info = store.stat("wal/00000001/000000010000000000000001")
    assert info.size == 7 and info.mtime > time.time() - 3600
    assert info.metadata.get("sha256") in (None, "ab" * 32)  # kept where the backend can keep it
    store.put("empty", b"")
    assert store.get("empty") == b""
    store.put("streamed", iter([b"a", b"", b"bc"]))
    assert store.get("streamed") == b"abc"


def test_missing_key_is_not_found(store: Storage) -> None:
    store.put("present", b"x")
    for call in (store.get, store.open, store.stat):
        with pytest.raises(NotFound):
            call("absent")
        with pytest.raises(NotFound):
            call("no/such/dir/key")


def test_list_order_prefix_and_start_after(store: Storage) -> None:
    # No key is also a "directory" of another (a file tree cannot hold both "a" and "a/b").
    keys = ["b", "a.b", "a/b", "a/c/d", "a-z", "a0", "wal/00000002/x", "wal/00000001/y", "walkeeper.json"]
    for key in keys:
        store.put(key, key.encode())
    assert [i.key for i in store.list()] == sorted(keys)
    assert [i.key for i in store.list("a/")] == ["a/b", "a/c/d"]
    assert [i.key for i in store.list("a")] == sorted(k for k in keys if k.startswith("a"))
    assert [i.key for i in store.list("wal/")] == ["wal/00000001/y", "wal/00000002/x"]
    assert [i.key for i in store.list("wal")] == ["wal/00000001/y", "wal/00000002/x", "walkeeper.json"]
    assert [i.key for i in store.list("nothing/")] == []
    assert [i.key for i in store.list(start_after="a/b")] == [k for k in sorted(keys) if k > "a/b"]
    assert [i.key for i in store.list("wal/", start_after="wal/00000001/y")] == ["wal/00000002/x"]
    sizes = {i.key: i.size for i in store.list()}
    assert sizes["a/c/d"] == 5


def test_temp_objects_are_hidden(store: Storage, target: Target) -> None:
    store.put("wal/real", b"x")
    target.plant("wal/.tmp.real.1234", b"in flight")
    target.plant(".tmp.top.99", b"in flight")
    assert [i.key for i in store.list()] == ["wal/real"]
    with pytest.raises(InvalidName):
        store.get("wal/.tmp.real.1234")


def test_overwrite_false_refuses_and_keeps_the_object(store: Storage) -> None:
    store.put("k", b"one")
    store.put("k", b"two")  # overwrite=True replaces
    assert store.get("k") == b"two"
    with pytest.raises(AlreadyExists):
        store.put("k", b"three", overwrite=False)
    with pytest.raises(AlreadyExists):
        store.put("k", chunks(os.urandom(BIG)), overwrite=False)
    assert store.get("k") == b"two"
    store.put("fresh", b"new", overwrite=False)
    assert store.get("fresh") == b"new"


def test_delete_is_idempotent(store: Storage) -> None:
    store.put("d/one", b"1")
    store.put("d/two", b"2")
    store.delete(["d/one", "d/missing"])
    store.delete(["d/one"])
    store.delete([])
    with pytest.raises(NotFound):
        store.get("d/one")
    assert [i.key for i in store.list("d/")] == ["d/two"]


BAD_KEYS = ["", "/abs", "../up", "a/../b", "a//b", "a/", ".tmp.x", "a/.hidden", "a b", "a;rm -rf ~",
            "$(id)", "`id`", "x\n", "a/./b", "*", "é"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_rejected(store: Storage, key: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.open(key),
        lambda: store.stat(key), lambda: store.delete([key]),
    ]
    for call in calls:
        with pytest.raises(InvalidName):
            call()
    if key and key != "a/":  # "a/" is a fine prefix, only not a key
        with pytest.raises(InvalidName):
            list(store.list(key))


def test_object_above_the_multipart_threshold(store: Storage, target: Target) -> None:
    data = os.urandom(BIG)
    store.put("backups/b1/base.tar", chunks(data, 700_000), overwrite=False)
    assert store.stat("backups/b1/base.tar").size == len(data)
    with store.open("backups/b1/base.tar") as handle:
        assert handle.read(100) == data[:100]
        assert handle.read() == data[100:]
    if target.name == "s3":
        bucket, _, prefix = target.url[len("s3://"):].partition("/")
        head = target.s3.client().head_object(Bucket=bucket, Key=f"{prefix}/backups/b1/base.tar")  # type: ignore
        assert head["ETag"].endswith('-3"'), head["ETag"]  # really a three-part upload


def test_a_failed_upload_leaves_nothing(store: Storage, target: Target) -> None:
    def failing() -> Iterator[bytes]:
        yield from chunks(os.urandom(7 * MiB))
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        store.put("backups/b2/base.tar", failing())
    with pytest.raises(NotFound):
        store.get("backups/b2/base.tar")
    assert list(store.list()) == []
    if target.name == "s3":
        bucket = target.url[len("s3://"):].partition("/")[0]
        uploads = target.s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])  # type: ignore
        prefix = target.url[len("s3://"):].partition("/")[2]
        assert [u for u in uploads if u["Key"].startswith(prefix)] == []  # aborted, not left to rot
    if target.root is not None and target.root.exists():
        assert [p.name for p in target.root.rglob("*") if p.is_file()] == []


def test_a_killed_upload_leaves_nothing(store: Storage, target: Target) -> None:
    """SIGKILL in the middle of a streamed put: no object, no listing entry, ever."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from walkeeper.core.config import load_config
        from walkeeper.storage import open_storage
        config = load_config({str(target.config_file())!r}, env={{}})
        storage = open_storage(config.repo, config)
        def endless():
            for n in range(10_000):
                yield os.urandom(1024 * 1024)
                if n == 7:
                    print("streaming", flush=True)
                time.sleep(0.05)
        storage.put("backups/b3/base.tar", endless())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "streaming"
        time.sleep(1.0)  # parts in flight on S3
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.5)
    with pytest.raises(NotFound):
        store.get("backups/b3/base.tar")
    assert list(store.list()) == []
    # What the killed writer left (ssh: nothing remote yet, the stream was still being spooled) is
    # listed with the space it holds, and goes with remove_leftover.
    left = [item for item in store.list_leftovers() if item.kind != "dir"]
    if target.name != "ssh":
        assert [(item.kind, item.path.rpartition("/")[0]) for item in left] == [
            ("upload" if target.name == "s3" else "temp", "backups/b3")], left
        assert left[0].size >= 5 * MiB and left[0].mtime > time.time() - 600
    assert remove_all_leftovers(store) >= len(left)
    assert list(store.list_leftovers()) == [] and list(store.list()) == []


def remove_all_leftovers(store: Storage) -> int:
    """Remove leftovers until none is left (a directory emptied by a removal is one in the next round)."""
    removed = 0
    for _round in range(6):
        items = list(store.list_leftovers())
        if not items:
            return removed
        for item in items:
            store.remove_leftover(item)
            store.remove_leftover(item)  # idempotent
        removed += len(items)
    raise AssertionError(f"leftovers keep coming back: {items}")


def test_leftovers_are_listed_and_removed(store: Storage, target: Target) -> None:
    store.put("backups/b4/base.tar", b"done")
    store.put("wal/00000001/000000010000000000000001", b"segment")
    target.plant("backups/b4/.tmp.base.tar.1a2b", b"x" * 1000)
    target.plant("wal/00000001/.tmp.000000010000000000000002.3c4d", b"y" * 10)
    expected = {("temp", "backups/b4/.tmp.base.tar.1a2b", 1000),
                ("temp", "wal/00000001/.tmp.000000010000000000000002.3c4d", 10)}
    if target.name == "s3":
        bucket, _, prefix = target.url[len("s3://"):].partition("/")
        client = target.s3.client()  # type: ignore[attr-defined]
        upload = client.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/backups/b5/base.tar")["UploadId"]
        client.upload_part(Bucket=bucket, Key=f"{prefix}/backups/b5/base.tar", UploadId=upload, PartNumber=1,
                           Body=b"z" * 100)
        expected.add(("upload", "backups/b5/base.tar", 100))
    else:
        assert target.root is not None
        (target.root / "backups" / "b6").mkdir(parents=True)
        expected.add(("dir", "backups/b6", 0))
    before = [i.key for i in store.list()]
    items = list(store.list_leftovers())
    assert {(i.kind, i.path, i.size) for i in items} == expected
    assert [i.path for i in items] == sorted(i.path for i in items)
    assert all(time.time() - 600 < i.mtime < time.time() + 60 for i in items)
    under = {p for _k, p, _s in expected if p.startswith("backups/")}
    assert {i.path for i in store.list_leftovers("backups/")} == under
    assert list(store.list_leftovers("nothing/")) == []
    # Only hidden names inside the repository (or directories) can be removed this way.
    for bad in (Leftover("temp", "backups/b4/base.tar", 4, 0.0), Leftover("temp", "../outside/.tmp.x", 1, 0.0),
                Leftover("temp", "backups/../../.tmp.x", 1, 0.0), Leftover("dir", "a/../..", 0, 0.0)):
        with pytest.raises(InvalidName):
            store.remove_leftover(bad)
    remove_all_leftovers(store)
    assert [i.key for i in store.list()] == before  # the objects themselves untouched
    assert store.get("backups/b4/base.tar") == b"done"


def test_transient_failure_then_success(store: Storage, target: Target) -> None:
    if target.forwarder is None:
        pytest.skip("a local directory has no network to cut")
    store.put("before", b"x")  # connection (and, for ssh, the shared master) established
    target.forwarder.stop()
    threading.Timer(1.0, target.forwarder.start).start()
    started = time.monotonic()
    try:
        retrying = target.open(attempts=10)
        retrying.put("during", b"made it")
        assert retrying.get("during") == b"made it"
        assert time.monotonic() - started >= 0.9
    finally:
        deadline = time.monotonic() + 5
        while not target.forwarder.running and time.monotonic() < deadline:
            time.sleep(0.05)
    assert store.get("during") == b"made it"
    # A stream cannot be replayed by the retry wrapper: the backend retries its own steps.
    data = os.urandom(BIG)
    target.forwarder.stop()
    threading.Timer(1.0, target.forwarder.start).start()
    target.open(attempts=10).put("streamed", chunks(data))
    assert store.get("streamed") == data


def test_persistent_failure_is_an_error_not_not_found(target: Target) -> None:
    if target.name == "local":
        path = target.work / "not-a-dir"
        path.write_text("a file where the repository should be a directory")
        store = target.open(url=str(path))
        with pytest.raises(StorageError):
            store.put("k", b"x")
        return
    closed = free_port()  # nothing listens here
    if target.name == "s3":
        url, tables = target.url, target.tables.replace(str(target.forwarder.port), str(closed))  # type: ignore
    else:
        url, tables = target.url.replace(f":{target.forwarder.port}/", f":{closed}/"), None  # type: ignore
    store = target.open(url=url, tables=tables, attempts=2)
    for call in (lambda: store.get("k"), lambda: store.stat("k"), lambda: list(store.list())):
        with pytest.raises(TransientError) as caught:
            call()
        assert not isinstance(caught.value, NotFound)
        assert "127.0.0.1" in str(caught.value)
    with pytest.raises(TransientError):
        store.put("k", b"x")
    store.close()

"""Mutated objects: every reader ends with a clear walkeeper error, never a crash, hang or memory blow-up.

In process, a seeded mutation loop (the same cases every run) feeds the decoder flipped bits, cuts at
and around every frame boundary, wrong and huge lengths, unknown method names, headers that are not
JSON objects and fields of the wrong type; both the one-shot (WAL) and the streaming (backup) decoder
must raise IntegrityError or KeyMaterialError, nothing else. Crafted unencrypted objects check the
memory bounds: a trailer claiming 2^40 bytes and a zstd stream that expands a thousandfold must not
be allocated or held at once. End to end, a few of the same mutations go through the installed
`walkeeper wal-fetch` (exit 205, or 204 for a key problem), `verify --deep` (5) and `restore` (5).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import tarfile
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import Setup
from tests.contract.test_wal_contract import fetch, stored
from tests.postgres.test_operate import add_backup, push_segments, seg
from walkeeper.codec import CodecSettings, Decoder, Keyring, decode_bytes, encode_bytes
from walkeeper.codec.compress import Compression
from walkeeper.codec.format import _FRAME, _PREAMBLE, _TRAILER, MAGIC, VERSION
from walkeeper.core.errors import IntegrityError, KeyMaterialError, WalkeeperError

KEY = Keyring([b"k" * 32])
OTHER_KEY = Keyring([b"o" * 32])
SEED = 20261130
ALLOWED = (IntegrityError, KeyMaterialError)


def encode(method: str, cipher: str, data: bytes, name: str = "obj") -> bytes:
    settings = CodecSettings(Compression(method, 3), cipher, KEY if cipher != "none" else None)
    return encode_bytes(settings, name, data)[0]


def stream_decode(blob: bytes, keyring: Keyring | None = KEY) -> bytes:
    return b"".join(Decoder(keyring).decode(io.BytesIO(blob).read))


def one_shot(blob: bytes, keyring: Keyring | None = KEY) -> bytes:
    return decode_bytes(keyring, blob)[1]


def frame_offsets(blob: bytes) -> list[int]:
    """Where each frame starts (and where the object ends): the boundaries a cut can fall on."""
    (header_length,) = struct.unpack_from(">I", blob, 9)
    pos, offsets = _PREAMBLE.size + header_length, []
    while pos < len(blob):
        offsets.append(pos)
        pos += _FRAME.size + struct.unpack_from(">I", blob, pos + 1)[0]
    return [*offsets, len(blob)]


def with_header(blob: bytes, header: bytes) -> bytes:
    (length,) = struct.unpack_from(">I", blob, 9)
    return blob[:9] + struct.pack(">I", len(header)) + header + blob[_PREAMBLE.size + length:]


def header_fields(blob: bytes) -> dict:
    (length,) = struct.unpack_from(">I", blob, 9)
    return json.loads(blob[_PREAMBLE.size:_PREAMBLE.size + length])


def mutations(blob: bytes, rng: random.Random, flips: int) -> Iterator[tuple[str, bytes]]:
    """Every kind of damage the brief names, as (label, mutated object)."""
    for i in range(flips):
        b = bytearray(blob)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        yield f"flip-{i}", bytes(b)
    for off in frame_offsets(blob):
        for cut in (off - 1, off, off + 1, off + _FRAME.size):
            if 0 <= cut < len(blob):
                yield f"cut-{cut}", blob[:cut]
    for length in (0, 1, 2**16, 2**32 - 1):
        yield f"header-length-{length}", blob[:9] + struct.pack(">I", length) + blob[13:]
    first = frame_offsets(blob)[0]
    for length in (0, 17 * 2**20, 2**31, 2**32 - 1):
        yield f"frame-length-{length}", blob[:first + 1] + struct.pack(">I", length) + blob[first + 5:]
    yield "frame-flags", blob[:first] + b"\x80" + blob[first + 1:]
    yield "version-2", blob[:8] + bytes([VERSION + 1]) + blob[9:]
    fields = header_fields(blob)
    for value in ([], "x", 1, None, [fields], "[" * 5000, "{" * 5000, '"\\ud800"'):
        raw = value.encode() if isinstance(value, str) and value[:1] in "[{\"" else json.dumps(value).encode()
        yield f"header-not-an-object-{str(value)[:8]}", with_header(blob, raw)
    yield "header-not-utf8", with_header(blob, b"\xff\xfe{}")
    for key in ("name", "compression", "cipher", "key_id", "salt", "sha256", "size", "extra"):
        for value in ([], {}, 7, -1, 2**70, True, 1.5, "zz", "abc", None, "", ["x"]):
            yield f"field-{key}-{value!r:.10}", with_header(blob, json.dumps({**fields, key: value}).encode())
    for key, value in (("compression", "lz4"), ("compression", "ZSTD"), ("cipher", "chacha20"),
                       ("cipher", "AES-256-GCM"), ("key_id", "0" * 16), ("salt", "ab")):
        yield f"unknown-{key}-{value}", with_header(blob, json.dumps({**fields, key: value}).encode())
    yield "trailing-byte", blob + b"\0"
    yield "empty", b""
    yield "magic-only", MAGIC


def assert_clean_failure(decode: Callable[[bytes], bytes], label: str, blob: bytes, original: bytes) -> None:
    try:
        plain = decode(blob)
    except ALLOWED as exc:
        assert str(exc) and "\n" not in str(exc), (label, str(exc))
        return
    except WalkeeperError as exc:  # pragma: no cover - reported below with the label
        raise AssertionError(f"{label}: {type(exc).__name__} is not an integrity or key error: {exc}") from None
    except Exception as exc:  # pragma: no cover
        raise AssertionError(f"{label}: crashed with {type(exc).__name__}: {exc}") from exc
    # Only a mutation that changes nothing the reader depends on may decode, and then to the original.
    assert plain == original, f"{label}: decoded to different bytes without an error"


PLAIN = os.urandom(4096) + bytes(2_500_000) + os.urandom(1_500_000)  # several frames, compressible or not


@pytest.mark.parametrize("method", ["zstd", "none"])
@pytest.mark.parametrize("cipher", ["aes-256-gcm", "none"])
@pytest.mark.parametrize("reader", ["one-shot", "stream"])
def test_mutated_objects_fail_cleanly(method: str, cipher: str, reader: str) -> None:
    blob = encode(method, cipher, PLAIN)
    assert len(frame_offsets(blob)) >= 3
    decode = one_shot if reader == "one-shot" else stream_decode
    rng = random.Random(f"{SEED}-{method}-{cipher}-{reader}")
    started = time.monotonic()
    cases = 0
    for label, bad in mutations(blob, rng, flips=400):
        assert_clean_failure(decode, label, bad, PLAIN)
        cases += 1
    assert cases > 500 and time.monotonic() - started < 60  # no mutation makes the decoder hang


def test_small_objects_with_every_single_bit_flipped() -> None:
    """Exhaustive on a small WAL-like object: each of its bits flipped in turn."""
    data = b"hello WAL " * 50
    for cipher in ("aes-256-gcm", "none"):
        blob = encode("zstd", cipher, data)
        for bit in range(len(blob) * 8):
            bad = bytearray(blob)
            bad[bit // 8] ^= 1 << (bit % 8)
            assert_clean_failure(one_shot, f"{cipher}-bit-{bit}", bytes(bad), data)


def test_wrong_or_missing_key_is_a_key_error() -> None:
    blob = encode("zstd", "aes-256-gcm", b"x" * 1000)
    with pytest.raises(KeyMaterialError):
        one_shot(blob, OTHER_KEY)
    with pytest.raises(KeyMaterialError):
        stream_decode(blob, None)


# -- memory bounds: crafted unencrypted objects (anyone able to write the repository can make them) ------

def craft(compressed: bytes, *, size: int, digest: bytes = bytes(32), name: str = "obj") -> bytes:
    """A cipher-"none" object with the given compressed stream and a trailer claiming ``size`` bytes."""
    header = json.dumps({"name": name, "compression": "zstd", "cipher": "none", "key_id": None,
                         "salt": None, "frame_size": 2**20}).encode()
    out = [_PREAMBLE.pack(MAGIC, VERSION, len(header)), header]
    for start in range(0, len(compressed), 2**20):
        piece = compressed[start:start + 2**20]
        out.append(_FRAME.pack(0, len(piece)) + piece)
    trailer = _TRAILER.pack(digest, size)
    out.append(_FRAME.pack(1, len(trailer)) + trailer)
    return b"".join(out)


def peak_bytes(func: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError):
            func()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_trailer_claiming_2_to_the_40_is_never_allocated() -> None:
    import zstandard

    undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(b"tiny" * 1000)
    declared = zstandard.ZstdCompressor().compress(b"tiny" * 1000)
    for compressed in (undeclared, declared):
        for size in (2**40, 2**64 - 1, 900 * 2**20):
            blob = craft(compressed, size=size)
            assert peak_bytes(lambda b=blob: one_shot(b, None)) < 16 * 2**20  # type: ignore[misc]
            assert peak_bytes(lambda b=blob: stream_decode(b, None)) < 16 * 2**20  # type: ignore[misc]


def test_a_decompression_bomb_is_read_out_a_piece_at_a_time() -> None:
    """256 MiB of zeros in a few kilobytes: the streaming decoder never holds more than a few MiB of it."""
    import zstandard

    bomb = zstandard.ZstdCompressor(level=19, write_content_size=False).compress(bytes(256 * 2**20))
    assert len(bomb) < 64 * 1024
    blob = craft(bomb, size=2**40)
    largest = 0
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match="does not match its checksum"):
            for piece in Decoder(None).decode(io.BytesIO(blob).read):
                largest = max(largest, len(piece))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert largest <= 2**20 and peak < 24 * 2**20, (largest, peak)
    # The one-shot (WAL) decoder refuses the claim before decompressing anything.
    with pytest.raises(IntegrityError, match="claims 1099511627776 bytes"):
        one_shot(blob, None)


def test_a_consistent_crafted_object_still_decodes() -> None:
    """The bounds reject nothing legitimate: an undeclared-size stream with a true trailer decodes."""
    import zstandard

    data = os.urandom(1000) * 300
    blob = craft(zstandard.ZstdCompressor(write_content_size=False).compress(data), size=len(data),
                 digest=hashlib.sha256(data).digest())
    assert one_shot(blob, None) == data and stream_decode(blob, None) == data


# -- end to end: the installed walkeeper on a local repository ------------------------------------------

def one_line(proc_stderr: str) -> str:
    lines = proc_stderr.strip().splitlines()
    assert len(lines) == 1, proc_stderr
    assert "Traceback" not in proc_stderr and "internal error" not in proc_stderr, proc_stderr
    return lines[0]


def wal_mutations(blob: bytes) -> dict[str, bytes]:
    first = frame_offsets(blob)[0]
    return {
        "flip": blob[:len(blob) // 2] + bytes([blob[len(blob) // 2] ^ 0x10]) + blob[len(blob) // 2 + 1:],
        "cut-at-frame": blob[:frame_offsets(blob)[-2]],
        "huge-frame": blob[:first + 1] + struct.pack(">I", 2**32 - 1) + blob[first + 5:],
        "header-list": with_header(blob, b"[1, 2]"),
        "unknown-compression": with_header(blob, json.dumps({**header_fields(blob), "compression": "lz4"}).encode()),
    }


def test_wal_fetch_of_mutated_objects_stops_recovery(setup: Setup) -> None:
    push_segments(setup, 1, [2])
    path = stored(setup, seg(1, 2))
    original = path.read_bytes()
    for label, bad in wal_mutations(original).items():
        path.write_bytes(bad)
        proc, dest = fetch(setup, seg(1, 2))
        assert proc.returncode == 205, (label, proc.returncode, proc.stderr)
        assert not dest.exists(), label
        one_line(proc.stderr)
    path.write_bytes(with_header(original, json.dumps({**header_fields(original), "key_id": "0" * 16}).encode()))
    proc, _ = fetch(setup, seg(1, 2))
    assert proc.returncode == 204, proc.stderr  # a key it does not have: a key problem
    assert "key" in one_line(proc.stderr)


def base_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in (("PG_VERSION", b"15\n"), ("base/1/1234", os.urandom(2_500_000)),
                              ("global/pg_control", bytes(8192))):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_verify_deep_and_restore_of_mutated_backup_objects(setup: Setup) -> None:
    push_segments(setup, 1, range(1, 4))
    add_backup(setup, "20260101T000000Z", 1, 1, 2, ended=time.time() - 60, data=base_tar())
    [obj] = [p for p in (setup.repo / "backups").rglob("*") if p.is_file() and "base.tar" in p.name]
    original = obj.read_bytes()
    assert len(frame_offsets(original)) >= 4  # several frames: a cut can fall between them
    target = setup.work / "restored"
    proc = setup.wk("restore", "-D", target)
    assert proc.returncode == 0, proc.stderr  # the untouched backup restores
    cases = {**wal_mutations(original), "cut-first-frame": original[:frame_offsets(original)[1]]}
    for label, bad in cases.items():
        obj.write_bytes(bad)
        proc = setup.wk("verify", "--deep")
        assert proc.returncode == 5, (label, proc.returncode, proc.stdout, proc.stderr)
        assert "base.tar" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr, (label, proc.stdout)
        target = setup.work / f"restored-{label}"
        proc = setup.wk("restore", "-D", target)
        assert proc.returncode == 5, (label, proc.returncode, proc.stderr)
        one_line(proc.stderr)
        assert not (target / "global" / "pg_control").exists(), label  # never a startable half-restore



def test_damaged_repository_file_is_an_integrity_error() -> None:
    """walkeeper.json is plain JSON: each damage to it reads as "not a valid repository file"."""
    from walkeeper.repo.repository import RepoMeta

    good = RepoMeta(system_identifier="7300000000000000001", wal_segment_size=2**24, pg_version=15).to_json()
    fields = json.loads(good)
    rng = random.Random(SEED)
    damaged = [b"", b"[]", b"null", b"7", b"[" * 5000, b"\xff", good[:len(good) // 2]]
    damaged += [json.dumps({**fields, key: value}).encode() for key in fields
                for value in ([], {}, "x", 1.5, True, 2**70)]
    for _ in range(200):
        b = bytearray(good)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        damaged.append(bytes(b))
    for data in damaged:
        try:
            RepoMeta.from_json(data, "walkeeper.json")
        except IntegrityError:
            continue
        except Exception as exc:  # pragma: no cover
            raise AssertionError(f"{data[:40]!r}: crashed with {type(exc).__name__}: {exc}") from exc

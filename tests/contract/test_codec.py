from __future__ import annotations

import io
import os
import struct

import pytest

from walkeeper.codec import CodecSettings, Decoder, Encoder, Keyring, decode_bytes, encode_bytes, read_header
from walkeeper.codec.compress import Compression
from walkeeper.codec.format import FRAME_SIZE, MAGIC
from walkeeper.core.errors import ConfigError, IntegrityError, KeyMaterialError

KEY_A = Keyring([os.urandom(32)])
KEY_B = Keyring([os.urandom(32)])


def settings(method: str = "zstd", cipher: str = "aes-256-gcm", keyring: Keyring | None = KEY_A) -> CodecSettings:
    return CodecSettings(compression=Compression(method, 3), cipher=cipher, keyring=keyring)


def sample(size: int) -> bytes:
    chunk = os.urandom(512) + b"\0" * 3584
    return (chunk * (size // len(chunk) + 1))[:size]


@pytest.mark.parametrize("method", ["zstd", "none"])
@pytest.mark.parametrize("cipher", ["aes-256-gcm", "none"])
@pytest.mark.parametrize("size", [0, 1, 4096, 3 * FRAME_SIZE + 17])
def test_round_trip(method: str, cipher: str, size: int) -> None:
    data = sample(size)
    blob, sha = encode_bytes(settings(method, cipher), "obj", data)
    assert blob.startswith(MAGIC)
    header, plain = decode_bytes(KEY_A, blob, expected_name="obj")
    assert plain == data and header.sha256 == sha and header.compression == method and header.cipher == cipher


def test_streaming_round_trip_matches_one_shot() -> None:
    data = os.urandom(FRAME_SIZE * 2 + 5)  # incompressible: forces several frames
    encoder = Encoder(settings(), "stream")
    blob = b"".join(encoder.encode_chunks(data[i:i + 65536] for i in range(0, len(data), 65536)))
    assert encoder.plain_size == len(data) and encoder.stored_size == len(blob)
    decoder = Decoder(KEY_A)
    assert b"".join(decoder.decode(io.BytesIO(blob).read)) == data
    assert decoder.sha256 == encoder.sha256


def test_encrypted_object_hides_plaintext() -> None:
    data = b"secret row contents " * 1000
    blob, _ = encode_bytes(settings("none"), "obj", data)
    assert b"secret row" not in blob


def test_wrong_key_is_reported_as_key_error() -> None:
    blob, _ = encode_bytes(settings(), "obj", sample(10000))
    with pytest.raises(KeyMaterialError, match="key id"):
        decode_bytes(KEY_B, blob)
    with pytest.raises(KeyMaterialError, match="no key"):
        decode_bytes(None, blob)


def test_every_tampered_byte_is_detected() -> None:
    blob, _ = encode_bytes(settings(), "obj", sample(5000))
    for pos in range(len(blob)):
        tampered = bytearray(blob)
        tampered[pos] ^= 0x01
        with pytest.raises((IntegrityError, KeyMaterialError)):
            decode_bytes(KEY_A, bytes(tampered))


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "none"])
def test_every_truncation_is_detected(cipher: str) -> None:
    data = os.urandom(FRAME_SIZE + 1000)
    blob, _ = encode_bytes(settings("none", cipher), "obj", data)
    cuts = sorted({*range(0, 300), *range(len(blob) - 300, len(blob)), FRAME_SIZE // 2})
    for cut in cuts:
        with pytest.raises(IntegrityError):
            decode_bytes(KEY_A, blob[:cut])


def test_extra_bytes_after_last_frame_are_detected() -> None:
    blob, _ = encode_bytes(settings(), "obj", sample(100))
    with pytest.raises(IntegrityError, match="after its final frame"):
        decode_bytes(KEY_A, blob + b"x")


def _frames(blob: bytes) -> tuple[bytes, list[bytes]]:
    header = read_header(io.BytesIO(blob).read)
    pos, frames = header.length, []
    while pos < len(blob):
        _flags, length = struct.unpack_from(">BI", blob, pos)
        frames.append(blob[pos:pos + 5 + length])
        pos += 5 + length
    return blob[:header.length], frames


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "none"])
def test_reordered_or_dropped_frames_are_detected(cipher: str) -> None:
    blob, _ = encode_bytes(settings("none", cipher), "obj", os.urandom(3 * FRAME_SIZE))
    head, frames = _frames(blob)
    assert len(frames) == 4
    swapped = head + frames[1] + frames[0] + frames[2] + frames[3]
    dropped = head + frames[0] + frames[2] + frames[3]
    for bad in (swapped, dropped):
        with pytest.raises(IntegrityError):
            decode_bytes(KEY_A, bad)


def test_object_is_bound_to_its_name() -> None:
    blob, _ = encode_bytes(settings(), "000000010000000000000001", sample(100))
    with pytest.raises(IntegrityError, match="swapped"):
        decode_bytes(KEY_A, blob, expected_name="000000010000000000000002")


def test_header_readable_without_key_and_records_checksum() -> None:
    data = sample(3000)
    blob, sha = encode_bytes(settings(), "obj", data)
    header = read_header(io.BytesIO(blob).read)
    assert header.sha256 == sha and header.size == len(data) and header.key_id == KEY_A.active_id


def test_encryption_needs_a_key() -> None:
    with pytest.raises(ConfigError):
        CodecSettings(cipher="aes-256-gcm", keyring=None)
    with pytest.raises(ConfigError):
        CodecSettings(cipher="rot13", keyring=KEY_A)


def test_key_file_permissions_and_content(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from walkeeper.codec import generate_key

    good = tmp_path / "key"
    good.write_text(generate_key() + "\n")
    good.chmod(0o600)
    assert Keyring.from_file(good).active_id == Keyring.from_file(good).active_id
    good.chmod(0o640)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        Keyring.from_file(good)
    short = tmp_path / "short"
    short.write_text("tooshort")
    short.chmod(0o600)
    with pytest.raises(KeyMaterialError, match="too short"):
        Keyring.from_file(short)
    with pytest.raises(KeyMaterialError, match="does not exist"):
        Keyring.from_file(tmp_path / "missing")


def test_key_never_in_repr_or_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from walkeeper.codec import generate_key

    key = generate_key()
    path = tmp_path / "key"
    path.write_text(key)
    path.chmod(0o644)
    with pytest.raises(KeyMaterialError) as info:
        Keyring.from_file(path)
    assert key not in str(info.value)
    path.chmod(0o600)
    assert key not in repr(Keyring.from_file(path))


def test_a_wrong_precomputed_digest_cannot_produce_a_readable_object() -> None:
    blob, _ = encode_bytes(settings(), "obj", sample(5000), sha256="00" * 32)
    with pytest.raises(IntegrityError, match="checksum"):
        decode_bytes(KEY_A, blob)


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "none"])
def test_self_check_accepts_only_an_object_that_decodes_to_the_same_bytes(cipher: str) -> None:
    import hashlib

    from walkeeper.codec import check_round_trip

    codec = settings(cipher=cipher)
    data = sample(300_000)
    sha = hashlib.sha256(data).hexdigest()
    blob, _ = encode_bytes(codec, "obj", data, sha256=sha)
    keyring = KEY_A if cipher != "none" else None
    check_round_trip(keyring, blob, name="obj", plain=data, sha256=sha)  # a good object passes
    other = bytearray(data)
    other[123_456] ^= 1
    with pytest.raises(IntegrityError, match="self-check"):
        check_round_trip(keyring, blob, name="obj", plain=bytes(other), sha256=sha)
    with pytest.raises(IntegrityError, match="checksum"):  # a digest that is not the data's
        bad, _ = encode_bytes(codec, "obj", data, sha256="00" * 32)
        check_round_trip(keyring, bad, name="obj", plain=data, sha256=sha)
    with pytest.raises(IntegrityError):
        check_round_trip(keyring, blob[:-40], name="obj", plain=data, sha256=sha)
    with pytest.raises(IntegrityError, match="swapped"):
        check_round_trip(keyring, blob, name="other", plain=data, sha256=sha)


def test_one_shot_decode_refuses_a_stream_that_claims_more_than_its_trailer() -> None:
    import zstandard

    from walkeeper.codec.compress import decompress_all

    big = zstandard.ZstdCompressor().compress(b"x" * 100_000)
    with pytest.raises(IntegrityError, match="claims 100000 bytes"):
        decompress_all("zstd", big, 1000)
    with pytest.raises(IntegrityError, match="corrupted or truncated"):
        decompress_all("zstd", big[:-4], 100_000)
    assert decompress_all("zstd", big, 100_000) == b"x" * 100_000

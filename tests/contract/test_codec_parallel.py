"""The codec with workers > 1 (backups and restores on all cores): same bytes out, same format, same
checks, bounded memory. Through the public Encoder/Decoder only; slow sinks and sources are real
generators and readers, not mocks of our code."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator

import pytest

from walkeeper.codec import CodecSettings, Decoder, Encoder, Keyring, decode_bytes
from walkeeper.codec.compress import Compression
from walkeeper.codec.format import _FRAME, FRAME_SIZE, VERSION
from walkeeper.core.errors import IntegrityError

KEY = Keyring([os.urandom(32)])
MIB = 1024 * 1024


def settings(method: str = "zstd", cipher: str = "aes-256-gcm") -> CodecSettings:
    return CodecSettings(compression=Compression(method, 1), cipher=cipher, keyring=KEY)


def mixed(size: int) -> bytes:
    """Half random, half zeros per 8 KiB page: compresses about 2:1, like many tables."""
    page = os.urandom(4096) + b"\0" * 4096
    return (page * (size // len(page) + 1))[:size]


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def encode(data: bytes, workers: int, method: str = "zstd", cipher: str = "aes-256-gcm",
           chunk: int = 64 * 1024) -> tuple[bytes, Encoder]:
    encoder = Encoder(settings(method, cipher), "base.tar", extra={"backup": "x"}, workers=workers)
    return b"".join(encoder.encode_chunks(pieces(data, chunk))), encoder


def decode(blob: bytes, workers: int) -> bytes:
    decoder = Decoder(KEY, expected_name="base.tar")
    return b"".join(decoder.decode(io.BytesIO(blob).read, workers=workers))


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("size", [0, 1, FRAME_SIZE - 1, FRAME_SIZE, FRAME_SIZE + 1, 3 * FRAME_SIZE + 17])
@pytest.mark.parametrize("kind", ["random", "mixed"])
def test_parallel_encoder_round_trips_around_frame_boundaries(workers: int, size: int, kind: str) -> None:
    data = os.urandom(size) if kind == "random" else mixed(size)
    blob, encoder = encode(data, workers)
    assert encoder.plain_size == size and encoder.stored_size == len(blob)
    for decode_workers in (1, 2):
        assert decode(blob, decode_workers) == data


@pytest.mark.parametrize("method,cipher", [("none", "aes-256-gcm"), ("zstd", "none"), ("none", "none")])
def test_parallel_encoder_other_methods(method: str, cipher: str) -> None:
    data = mixed(2 * FRAME_SIZE + 3)
    blob, _ = encode(data, 2, method, cipher)
    assert decode(blob, 1) == decode(blob, 2) == data


def test_objects_written_with_one_and_four_workers_are_the_same_format() -> None:
    """workers only changes who compresses: version 1, one zstd frame, readable by the one-thread reader."""
    data = mixed(5 * FRAME_SIZE + 1234)
    one, enc_one = encode(data, 1)
    four, enc_four = encode(data, 4)
    assert one[8] == four[8] == VERSION == 1
    assert enc_one.sha256 == enc_four.sha256
    for blob in (one, four):
        assert decode(blob, 1) == decode(blob, 4) == data
        header, plain = decode_bytes(KEY, blob, expected_name="base.tar")  # the one-shot reader, too
        assert plain == data and header.extra == {"backup": "x"}
        import zstandard

        decoder = Decoder(KEY)
        compressed = b"".join(decoder.payloads(io.BytesIO(blob).read))
        params = zstandard.get_frame_parameters(compressed)
        assert params.content_size in (0, zstandard.CONTENTSIZE_UNKNOWN)
        reader = zstandard.ZstdDecompressor().stream_reader(compressed, read_across_frames=False)
        assert reader.read() == data  # a single zstd frame: what every earlier walkeeper reads


def frame_offsets(blob: bytes) -> list[int]:
    pos = 13 + int.from_bytes(blob[9:13], "big")
    offsets = []
    while pos < len(blob):
        offsets.append(pos)
        _flags, length = _FRAME.unpack_from(blob, pos)
        pos += _FRAME.size + length
    return offsets


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "none"])
@pytest.mark.parametrize("where", ["first", "middle", "trailer", "truncated"])
def test_corruption_in_a_parallel_written_object_is_detected(cipher: str, where: str) -> None:
    data = os.urandom(4 * FRAME_SIZE + 99)
    blob, _ = encode(data, 4, cipher=cipher)
    offsets = frame_offsets(blob)
    assert len(offsets) >= 5
    damaged = bytearray(blob)
    if where == "truncated":
        damaged = damaged[:offsets[2]]
    else:
        frame = {"first": 0, "middle": 2, "trailer": len(offsets) - 1}[where]
        damaged[offsets[frame] + _FRAME.size + 7] ^= 0x40
    for workers in (1, 2):
        with pytest.raises(IntegrityError):
            decode(bytes(damaged), workers)


def test_decoder_threads_end_with_the_stream_and_on_early_stop() -> None:
    blob, _ = encode(os.urandom(6 * FRAME_SIZE), 2)
    before = threading.active_count()
    stream = Decoder(KEY).decode(io.BytesIO(blob).read, workers=2)
    next(stream)
    assert threading.active_count() > before
    stream.close()  # a consumer that stops early (tar end marker, an error of its own)
    assert threading.active_count() == before
    assert decode(blob, 2) and threading.active_count() == before


@pytest.mark.parametrize("workers", [2, 4])
def test_encoder_memory_is_bounded_with_a_slow_sink(workers: int) -> None:
    """Incompressible input, a sink slower than the encoder: what was read but not yet written out
    stays within (2 x workers + 12) frames, whatever the input's size."""
    taken = 0

    def source() -> Iterator[bytes]:
        nonlocal taken
        for _ in range(48):
            taken += MIB
            yield os.urandom(MIB)

    encoder = Encoder(settings(), "base.tar", workers=workers)
    written = 0
    held = 0
    for frame in encoder.encode_chunks(source()):
        written += len(frame)
        held = max(held, taken - written)
        time.sleep(0.01)  # the storage is slow
    assert encoder.plain_size == 48 * MIB
    assert held <= (2 * workers + 12) * FRAME_SIZE, f"{held / MIB:.1f} MiB held"


def test_decoder_memory_is_bounded_with_a_slow_consumer() -> None:
    """The read-ahead threads hold a few frames, not the object: a slow consumer does not make them read on."""
    blob, _ = encode(os.urandom(40 * MIB), 2)
    source = io.BytesIO(blob)
    consumed = 0
    held = 0
    for plain in Decoder(KEY).decode(source.read, workers=2):
        consumed += len(plain)
        held = max(held, source.tell() - consumed)
        time.sleep(0.01)  # tar extraction and file writes are slow
    assert consumed == 40 * MIB
    assert held <= 14 * FRAME_SIZE, f"{held / MIB:.1f} MiB held"

"""Compression methods, chosen by name from an object's header (never from a file extension)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from walkeeper.core.errors import ConfigError, IntegrityError

METHODS = ("zstd", "none")


class StreamCompressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


@dataclass(frozen=True)
class Compression:
    method: str = "zstd"
    level: int = 3
    threads: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown compression method {self.method!r} (expected one of {METHODS})")

    def compressor(self, workers: int = 1, job_size: int = 0) -> StreamCompressor:
        """A streaming compressor; ``workers`` > 1 compresses jobs of ``job_size`` on that many threads.

        zstd's own multithreading still writes one frame, which any zstd decoder (and every walkeeper
        version) reads as before; the job size bounds what it holds (about 2 jobs per worker, plus 4).
        """
        if self.method == "none":
            return _Identity()
        import zstandard

        if workers > 1:
            params = zstandard.ZstdCompressionParameters.from_level(self.level, threads=workers, job_size=job_size)
            return zstandard.ZstdCompressor(compression_params=params).compressobj()
        return zstandard.ZstdCompressor(level=self.level, threads=self.threads).compressobj()

    def compress_all(self, data: bytes) -> bytes:
        """One-shot compression of an in-memory object (a WAL segment): faster than streaming."""
        if self.method == "none":
            return data
        import zstandard

        return zstandard.ZstdCompressor(level=self.level, threads=self.threads).compress(data)


def decompress_all(method: str, data: bytes, size: int) -> bytes:
    """One-shot decompression of a whole in-memory object whose trailer says it is ``size`` bytes.

    The caller still checks length and digest: this only refuses to allocate more than ``size``,
    and never allocates ``size`` up front for a stream that does not declare its own length (zstd
    would otherwise reserve all of a corrupted trailer's claim before reading a byte).
    """
    _check_method(method)
    if method == "none":
        return data
    import zstandard

    try:
        declared = zstandard.frame_content_size(data)
        if declared > size:
            raise IntegrityError(f"compressed data claims {declared} bytes, but the object records {size}")
        if declared < 0:  # unknown: grow with what the data really holds, up to ``size``
            return b"".join(decompress_chunks(method, data, size))
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"compressed data is corrupted or truncated ({exc})") from None


def _check_method(method: object) -> None:
    """Objects name their compression; anything but a known name (or not even a string) is corruption."""
    if not isinstance(method, str) or method not in METHODS:
        raise IntegrityError(f"object uses unknown compression {method!r}")


class _ChunkReader:
    """A file-like ``read(n)`` over an iterator of byte strings, for zstandard's stream_reader."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._view = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        while not self._view:
            nxt = next(self._chunks, None)
            if nxt is None:
                return b""
            self._view = memoryview(nxt)
        size = len(self._view) if size < 0 else size
        out, self._view = self._view[:size], self._view[size:]
        return bytes(out)

    def drain(self) -> None:
        """Consume what is left (the producer's own checks run at its end)."""
        self._view = memoryview(b"")
        for _ in self._chunks:
            pass


def decompress_stream(method: str, chunks: Iterable[bytes], piece: int = 1024 * 1024) -> Iterator[bytes]:
    """The plaintext of a compressed stream given in chunks, in pieces of at most ``piece`` bytes.

    Memory stays bounded whatever the stream claims or holds (a few highly compressible bytes can
    expand to gigabytes: they are read out a piece at a time). ``chunks`` is consumed to its end,
    so that checks its producer makes after the last chunk (the trailer) always run.
    """
    _check_method(method)
    if method == "none":
        yield from chunks
        return
    import zstandard

    source = _ChunkReader(chunks)
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=False, closefd=False)
        while data := reader.read(piece):
            yield data
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"compressed data is corrupted ({exc})") from None
    source.drain()


def decompress_chunks(method: str, data: bytes, size: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """The decompressed ``data`` in pieces of at most ``chunk`` bytes, never more than ``size`` in all."""
    _check_method(method)
    if method == "none":
        for start in range(0, len(data), chunk):
            yield data[start:start + chunk]
        return
    import zstandard

    total = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False) as reader:
            while piece := reader.read(chunk):
                total += len(piece)
                if total > size:
                    raise IntegrityError(f"compressed data holds more than the {size} bytes the object records")
                yield piece
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"compressed data is corrupted or truncated ({exc})") from None

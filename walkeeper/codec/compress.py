"""Compression methods, chosen by name from an object's header (never from a file extension)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from walkeeper.errors import ConfigError, IntegrityError

METHODS = ("zstd", "none")


class StreamCompressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class StreamDecompressor(Protocol):
    def decompress(self, data: bytes) -> bytes: ...
    def finish(self) -> None: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""

    def finish(self) -> None:
        return None


class _ZstdDecompressor:
    def __init__(self) -> None:
        import zstandard

        self._error = zstandard.ZstdError
        self._obj = zstandard.ZstdDecompressor().decompressobj()

    def decompress(self, data: bytes) -> bytes:
        try:
            return self._obj.decompress(data)
        except self._error as exc:
            raise IntegrityError(f"compressed data is corrupted ({exc})") from None

    def finish(self) -> None:
        if not self._obj.eof:
            raise IntegrityError("compressed data ends early (truncated zstd stream)")


@dataclass(frozen=True)
class Compression:
    method: str = "zstd"
    level: int = 3
    threads: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown compression method {self.method!r} (expected one of {METHODS})")

    def compressor(self) -> StreamCompressor:
        if self.method == "none":
            return _Identity()
        import zstandard

        return zstandard.ZstdCompressor(level=self.level, threads=self.threads).compressobj()

    def compress_all(self, data: bytes) -> bytes:
        """One-shot compression of an in-memory object (a WAL segment): faster than streaming."""
        if self.method == "none":
            return data
        import zstandard

        return zstandard.ZstdCompressor(level=self.level, threads=self.threads).compress(data)


def decompress_all(method: str, data: bytes, size: int) -> bytes:
    """One-shot decompression of a whole in-memory object whose trailer says it is ``size`` bytes.

    The caller still checks length and digest: this only refuses to allocate more than ``size``.
    """
    if method == "none":
        return data
    if method != "zstd":
        raise IntegrityError(f"object uses unknown compression {method!r}")
    import zstandard

    try:
        declared = zstandard.frame_content_size(data)
        if declared > size:
            raise IntegrityError(f"compressed data claims {declared} bytes, but the object records {size}")
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"compressed data is corrupted or truncated ({exc})") from None


def decompress_chunks(method: str, data: bytes, size: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """The decompressed ``data`` in pieces of at most ``chunk`` bytes, never more than ``size`` in all."""
    if method == "none":
        for start in range(0, len(data), chunk):
            yield data[start:start + chunk]
        return
    if method != "zstd":
        raise IntegrityError(f"object uses unknown compression {method!r}")
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


def decompressor(method: str) -> StreamDecompressor:
    factories: dict[str, Callable[[], StreamDecompressor]] = {"zstd": _ZstdDecompressor, "none": _Identity}
    try:
        return factories[method]()
    except KeyError:
        raise IntegrityError(f"object uses unknown compression {method!r}") from None

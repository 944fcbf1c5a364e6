"""Object envelope: magic, version, JSON header (bound as AEAD associated data), frames, trailer.

Layout (docs/format.md has the full description)::

    MAGIC (8) | version u8 | header length u32be | header JSON
    frame*: flags u8 | length u32be | payload        (flags bit 0 set only on the last frame)

Data frames carry the compressed stream; the last frame carries SHA-256 and length of the
plaintext. With AES-256-GCM each payload is sealed with a per-object key (HKDF of the master key
and the header's salt), the nonce is frame index (u64be) | flags | 3 zero bytes, and the
associated data is the header, so tampering, reordering, truncation and swapping objects between
names are all detected.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from walkeeper.codec.compress import Compression, decompress_all, decompress_chunks, decompress_stream
from walkeeper.codec.header import (  # noqa: F401 - MAGIC, VERSION, _PREAMBLE, parse_header: the format's names
    _PREAMBLE,
    AEAD_CIPHERS,
    CIPHERS,
    FRAME_SIZE,
    MAGIC,
    VERSION,
    CodecSettings,
    ObjectHeader,
    _build_header,
    _read_exact,
    parse_header,
    read_header,
)
from walkeeper.codec.keys import Keyring
from walkeeper.core.errors import IntegrityError, KeyMaterialError

MAX_FRAME = 16 * 1024 * 1024 + 64
# decode_bytes holds a whole plaintext in memory: WAL files (at most 1 GiB, PostgreSQL's largest
# wal_segment_size) and small metadata. A trailer claiming more is corrupt, whatever it says.
MAX_ONE_SHOT = 1024 * 1024 * 1024
FLAG_LAST = 0x01
TAG_SIZE = 16
AHEAD = 4  # items a pipeline stage (workers > 1) runs ahead of the next: 4 frames or chunks of 1 MiB
_FRAME = struct.Struct(">BI")
_TRAILER = struct.Struct(">32sQ")


def _nonce(index: int, flags: int) -> bytes:
    return index.to_bytes(8, "big") + bytes([flags]) + b"\0\0\0"


class Encoder:
    """Turns plaintext into an object, chunk by chunk, with bounded memory.

    ``workers`` > 1 (backups): zstd compresses on that many threads (jobs of FRAME_SIZE, one zstd
    frame as before, so the format and every reader stay the same) while the input is read ahead in
    another; memory stays within a few frames per worker (README "Speed").
    """

    def __init__(self, settings: CodecSettings, name: str, *, sha256: str | None = None,
                 size: int | None = None, extra: dict[str, Any] | None = None, workers: int = 1) -> None:
        self.settings = settings
        self.workers = max(1, workers)
        self.header, object_key = _build_header(settings, name, sha256, size, extra)
        self._aead = None
        if settings.cipher in AEAD_CIPHERS:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            assert object_key is not None
            self._aead = AESGCM(object_key)
        self._index = 0
        self.plain_size = 0
        self.stored_size = 0
        self._hash = hashlib.sha256()
        # A digest the caller already computed saves hashing the data again in encode_all;
        # if it were wrong, the decoder's trailer check would reject the object.
        self._known_digest = bytes.fromhex(sha256) if sha256 is not None else None
        self._final_digest: bytes | None = None

    def _frame(self, payload: bytes, flags: int) -> bytes:
        if self._aead is not None:
            payload = self._aead.encrypt(_nonce(self._index, flags), payload, self.header)
        self._index += 1
        out = _FRAME.pack(flags, len(payload)) + payload
        self.stored_size += len(out)
        return out

    def _frames(self, compressed: bytes) -> Iterator[bytes]:
        for start in range(0, len(compressed), FRAME_SIZE):
            yield self._frame(compressed[start:start + FRAME_SIZE], 0)

    def _trailer(self, digest: bytes) -> bytes:
        self._final_digest = digest
        return self._frame(_TRAILER.pack(digest, self.plain_size), FLAG_LAST)

    @property
    def sha256(self) -> str:
        """The plaintext SHA-256 recorded in the trailer (once the object has been encoded)."""
        return self._final_digest.hex() if self._final_digest is not None else self._hash.hexdigest()

    def encode_chunks(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Yield the object's bytes: header, data frames, trailer."""
        self.stored_size = len(self.header)
        yield self.header
        chunks = self._hashed(chunks)
        if self.workers > 1:  # reading the input and hashing it run in a thread of their own
            from walkeeper.codec.pipeline import run_ahead

            chunks = run_ahead(chunks, AHEAD, "walkeeper-encode-read")
        compressor = self.settings.compression.compressor(self.workers, FRAME_SIZE)
        pending = bytearray()
        for chunk in chunks:
            pending += compressor.compress(chunk)
            while len(pending) >= FRAME_SIZE:
                yield self._frame(bytes(pending[:FRAME_SIZE]), 0)
                del pending[:FRAME_SIZE]
        pending += compressor.flush()
        yield from self._frames(bytes(pending))
        yield self._trailer(self._hash.digest())

    def _hashed(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self._hash.update(chunk)
            self.plain_size += len(chunk)
            yield chunk

    def encode_all(self, data: bytes) -> bytes:
        """Encode an in-memory object in one go (the WAL fast path)."""
        if self._known_digest is None:
            self._hash.update(data)
            digest = self._hash.digest()
        else:
            digest = self._known_digest
        self.plain_size = len(data)
        self.stored_size = len(self.header)
        parts = [self.header, *self._frames(self.settings.compression.compress_all(data)), self._trailer(digest)]
        return b"".join(parts)


class Decoder:
    """Reads an object back, verifying everything; plaintext is yielded chunk by chunk.

    Plaintext from a stream is only trustworthy once the iteration ends without an error: the
    trailer (checksum, length, "this was the last frame") comes last.
    """

    def __init__(self, keyring: Keyring | None, *, expected_name: str | None = None) -> None:
        self.keyring = keyring
        self.expected_name = expected_name
        self.header: ObjectHeader | None = None
        self.sha256: str | None = None
        self.size = 0
        self.trailer: tuple[bytes, int] | None = None

    def _open_aead(self, header: ObjectHeader) -> Any:
        if header.cipher == "none":
            return None
        if header.cipher not in AEAD_CIPHERS:
            raise IntegrityError(f"object uses unknown cipher {header.cipher!r}")
        if self.keyring is None:
            raise KeyMaterialError(
                f"object {header.name} is encrypted (key id {header.key_id}) but no key is configured",
                hint="set [encryption] key_file, key_files or key_command",
            )
        if header.salt is None or header.key_id is None:
            raise IntegrityError("encrypted object lacks its salt or key id: corrupted")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(self.keyring.open_key(header.key_id, header.salt, header.epk, what=f"object {header.name}"))

    def payloads(self, read: Callable[[int], bytes]) -> Iterator[bytes]:
        """The authenticated payloads of the data frames: the compressed stream, in order.

        Once the iteration ends, ``trailer`` holds the recorded (SHA-256, size) of the plaintext; checking
        the plaintext against it is the caller's part (``decode`` and ``decode_bytes`` do).
        """
        header = read_header(read)
        self.header = header
        if self.expected_name is not None and header.name != self.expected_name:
            raise IntegrityError(
                f"object stored as {self.expected_name} says it is {header.name}: renamed or swapped"
            )
        aead = self._open_aead(header)
        if aead is not None:
            from cryptography.exceptions import InvalidTag
        index = 0
        while True:
            frame_head = read(_FRAME.size)
            if not frame_head:
                raise IntegrityError("object is truncated: its final frame is missing")
            if len(frame_head) < _FRAME.size:
                frame_head += _read_exact(read, _FRAME.size - len(frame_head), "frames")
            flags, length = _FRAME.unpack(frame_head)
            if flags & ~FLAG_LAST or length > MAX_FRAME:
                raise IntegrityError(f"object is corrupted: bad frame {index} header")
            payload = _read_exact(read, length, "frames")
            if aead is not None:
                try:
                    payload = aead.decrypt(_nonce(index, flags), payload, header.raw)
                except InvalidTag:
                    raise IntegrityError(
                        f"object {header.name} failed authentication at frame {index}: tampered, "
                        "corrupted, or encrypted with a different key of the same id"
                    ) from None
            index += 1
            if flags & FLAG_LAST:
                break
            yield payload
        if len(payload) != _TRAILER.size:
            raise IntegrityError("object is corrupted: bad trailer")
        if read(1):
            raise IntegrityError("object has data after its final frame: corrupted")
        self.trailer = _TRAILER.unpack(payload)

    def check(self, digest: bytes, size: int) -> None:
        """Compare the plaintext's digest and size with the trailer and the header."""
        assert self.header is not None and self.trailer is not None
        want_digest, want_size = self.trailer
        if want_size != size or want_digest != digest:
            raise IntegrityError(
                f"object {self.header.name} does not match its checksum (sha256 {digest.hex()}, "
                f"recorded {want_digest.hex()})"
            )
        if self.header.sha256 is not None and self.header.sha256 != digest.hex():
            raise IntegrityError(f"object {self.header.name} does not match the checksum in its header")
        self.size = size
        self.sha256 = digest.hex()

    def decode(self, read: Callable[[int], bytes], *, workers: int = 1) -> Iterator[bytes]:
        """Plaintext chunk by chunk, in bounded memory (backups, dumps), whatever the object claims.

        ``workers`` > 1: reading and decrypting frames, and decompressing and hashing, each run in
        their own thread, up to AHEAD items ahead of the caller (who extracts the tar meanwhile).
        """
        if workers <= 1:
            return self._plaintext(self.payloads(read))
        from walkeeper.codec.pipeline import run_ahead

        frames = run_ahead(self.payloads(read), AHEAD, "walkeeper-decode-read")
        return run_ahead(self._plaintext(frames), AHEAD, "walkeeper-decode-inflate")

    def _plaintext(self, payloads: Iterator[bytes]) -> Iterator[bytes]:
        first = next(payloads, None)  # reads and checks the header: it names the compression
        assert self.header is not None
        digest = hashlib.sha256()
        size = 0
        chunks = payloads if first is None else itertools.chain((first,), payloads)
        for plain in decompress_stream(self.header.compression, chunks):
            digest.update(plain)
            size += len(plain)
            yield plain
        self.check(digest.digest(), size)


def encode_bytes(settings: CodecSettings, name: str, data: bytes, *, sha256: str | None = None,
                 extra: dict[str, Any] | None = None) -> tuple[bytes, str]:
    """Encode a whole in-memory object; returns (object bytes, plaintext sha256).

    Pass ``sha256`` when the caller has already hashed ``data`` (WAL push does, for its duplicate check).
    """
    sha = sha256 if sha256 is not None else hashlib.sha256(data).hexdigest()
    encoder = Encoder(settings, name, sha256=sha, size=len(data), extra=extra)
    return encoder.encode_all(data), sha


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, size: int) -> bytes:
        chunk = self._view[self._pos:self._pos + size]
        self._pos += len(chunk)
        return bytes(chunk)


def decode_bytes(keyring: Keyring | None, data: bytes, *,
                 expected_name: str | None = None) -> tuple[ObjectHeader, bytes]:
    """Decode and verify a whole in-memory object (a WAL file): one-shot, so the plaintext is allocated once."""
    decoder = Decoder(keyring, expected_name=expected_name)
    compressed = b"".join(decoder.payloads(_BytesReader(data).read))
    assert decoder.header is not None and decoder.trailer is not None
    if decoder.trailer[1] > MAX_ONE_SHOT:
        raise IntegrityError(f"object {decoder.header.name} claims {decoder.trailer[1]} bytes, more than any "
                             f"WAL file or metadata object ({MAX_ONE_SHOT}): corrupted")
    plain = decompress_all(decoder.header.compression, compressed, decoder.trailer[1])
    del compressed
    decoder.check(hashlib.sha256(plain).digest(), len(plain))
    return decoder.header, plain


def check_round_trip(keyring: Keyring | None, blob: bytes, *, name: str, plain: bytes, sha256: str) -> None:
    """Prove that ``blob`` decodes to exactly ``plain`` before it is stored (wal-push's self-check).

    A byte comparison with the original replaces a second SHA-256 pass: if the decoded bytes equal
    ``plain`` and the trailer and header record ``sha256`` (the caller's digest of ``plain``), a later
    full decode will verify. Decoded in chunks and compared as it goes, so no second copy of
    ``plain`` is ever held.
    """
    decoder = Decoder(keyring, expected_name=name)
    compressed = b"".join(decoder.payloads(_BytesReader(blob).read))
    assert decoder.header is not None and decoder.trailer is not None
    pos = 0
    for chunk in decompress_chunks(decoder.header.compression, compressed, decoder.trailer[1]):
        if not plain.startswith(chunk, pos):  # a memcmp in place: no copy of the slice
            raise IntegrityError(f"self-check failed for {name}: the encoded object does not decode back to the file")
        pos += len(chunk)
    if pos != len(plain):
        raise IntegrityError(f"self-check failed for {name}: the encoded object decodes to {pos} bytes, "
                             f"the file has {len(plain)}")
    decoder.check(bytes.fromhex(sha256), len(plain))


def reseal(keyring: Keyring, read: Callable[[int], bytes], *, expected_name: str | None = None) -> Iterator[bytes]:
    """Re-encrypt an object under the keyring's active key without decompressing it (``rekey``).

    Format 1 derives each object's key from the master key (HKDF with the header's salt): there is
    no wrapped data key to re-wrap, so the frames are re-sealed instead. The authenticated
    compressed payloads are carried over unchanged with a new header (new key id and salt, same
    name, compression, checksum, size and extra fields) and the same trailer, so the plaintext
    cannot change; callers still decode the result and compare checksums before replacing.
    """
    decoder = Decoder(keyring, expected_name=expected_name)
    payloads = decoder.payloads(read)
    first = next(payloads, None)  # reads the header
    header = decoder.header
    assert header is not None
    cipher = "x25519-aes-256-gcm" if keyring.active_kind == "x25519" else "aes-256-gcm"
    settings = CodecSettings(compression=Compression(header.compression), cipher=cipher, keyring=keyring)
    encoder = Encoder(settings, header.name, sha256=header.sha256, size=header.size, extra=header.extra or None)
    yield encoder.header
    for payload in itertools.chain(() if first is None else (first,), payloads):
        yield encoder._frame(payload, 0)
    assert decoder.trailer is not None
    digest, size = decoder.trailer
    encoder.plain_size = size
    yield encoder._trailer(digest)

"""The stored object format: header, compression, encryption, frames. Knows nothing of storage.

See docs/format.md for the byte layout.
"""

from walkeeper.codec.format import (
    MAGIC,
    CodecSettings,
    Decoder,
    Encoder,
    ObjectHeader,
    check_round_trip,
    decode_bytes,
    encode_bytes,
    read_header,
)
from walkeeper.codec.keys import Keyring, generate_key

__all__ = [
    "MAGIC",
    "CodecSettings",
    "Decoder",
    "Encoder",
    "Keyring",
    "ObjectHeader",
    "check_round_trip",
    "decode_bytes",
    "encode_bytes",
    "generate_key",
    "read_header",
]

"""docs/format.md must be enough to decode an object without walkeeper: run its example against one."""

from __future__ import annotations

import os
import re
from pathlib import Path

from walkeeper.codec import CodecSettings, Keyring, encode_bytes, generate_key
from walkeeper.codec.compress import Compression

DOC = Path(__file__).resolve().parents[2] / "docs" / "format.md"


def test_documented_decoder_reads_a_real_object(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)  # type: ignore[union-attr]
    key_file = tmp_path / "key"
    key_file.write_text(generate_key() + "\n")
    key_file.chmod(0o600)
    data = os.urandom(3000) * 700  # compressible, several frames of compressed data after all
    codec = CodecSettings(Compression("zstd", 3), "aes-256-gcm", Keyring.from_file(key_file))
    blob, _ = encode_bytes(codec, "000000010000000000000003", data)
    target = tmp_path / "repo" / "wal" / "00000001" / "000000010000000000000003"
    target.parent.mkdir(parents=True)
    target.write_bytes(blob)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(code, str(DOC), "exec"), scope)
    assert scope["plain"] == data

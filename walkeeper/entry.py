"""Console entry point. Kept to the standard library so that fast paths can answer before the
CLI (click), the codec (zstandard, cryptography) or an SDK is imported.

The fast paths (walkeeper.accel.fastpath) answer a wal-push whose segment an earlier call already pushed
ahead, and a wal-fetch whose segment the prefetcher already has in its spool, at the cost of about
one bare interpreter start. Anything else, including every failure, goes to the full CLI.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "wal-push" in args or "wal-fetch" in args:
        from walkeeper.accel.fastpath import try_fast_path

        code = try_fast_path(args)
        if code is not None:
            return code
    from walkeeper.cli.main import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())

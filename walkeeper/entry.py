"""Console entry point. Kept to the standard library so that fast paths can answer before the
CLI (click), the codec (zstandard, cryptography) or an SDK is imported."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from walkeeper.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())

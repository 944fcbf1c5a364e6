"""README's exit-code table lists exactly the codes walkeeper/core/errors.py defines, and wal-fetch's column
is 200 + code for every failure but "not found" (the contract with PostgreSQL's restore_command)."""

from __future__ import annotations

import re
from pathlib import Path

from walkeeper.core import errors

README = Path(__file__).resolve().parents[2] / "README.md"


def documented() -> dict[int, str]:
    """{code: wal-fetch column} of the table under '## Exit codes'."""
    section = README.read_text().split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| *(\d+) *\| *(\d*) *\|", section, re.MULTILINE)
    assert rows, "no table under ## Exit codes"
    codes = [int(code) for code, _ in rows]
    assert len(codes) == len(set(codes)), f"a code listed twice: {codes}"
    return {int(code): fetch for code, fetch in rows}


def defined() -> set[int]:
    classes = {value.code for value in vars(errors).values()
               if isinstance(value, type) and issubclass(value, errors.WalkeeperError)}
    return classes | {0, errors.USAGE_ERROR_CODE, errors.INTERNAL_ERROR_CODE, errors.CLOSED_PIPE_CODE}


def test_the_table_lists_every_code_and_no_other() -> None:
    table = documented()
    assert set(table) == defined(), (f"missing from README: {sorted(defined() - set(table))}; "
                                    f"not defined: {sorted(set(table) - defined())}")


def test_wal_fetch_column_is_fatal_base_plus_code() -> None:
    for code, fetch in documented().items():
        if code in (0, errors.NotFound.code):
            assert fetch == str(code), (code, fetch)
        elif fetch:
            assert int(fetch) == errors.FATAL_BASE + code, (code, fetch)

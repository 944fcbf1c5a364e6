"""Which PostgreSQL client program drives a server of a given major (postgres/client.choose_tool): pure."""

from __future__ import annotations

import pytest

from walkeeper.core.errors import PostgresError
from walkeeper.postgres.client import choose_tool

D15, D16, D17, W18 = ("/usr/lib/postgresql/15/bin/pg_basebackup", "/usr/lib/postgresql/16/bin/pg_basebackup",
                      "/usr/lib/postgresql/17/bin/pg_basebackup", "/opt/pg18/bin/pg_basebackup")


@pytest.mark.parametrize(("server", "found", "chosen"), [
    (15, [(15, D15)], D15),
    (15, [(18, W18), (15, D15)], D15),  # the server's own major, not the newest
    (15, [(17, D17), (18, W18)], D17),  # else the oldest newer one
    (16, [(15, D15), (17, D17), (18, W18)], D17),  # an older one is never taken while a newer exists
    (18, [(15, D15), (18, W18)], W18),
    (17, [(17, D17), (17, "/usr/bin/pg_basebackup")], D17),  # ties: the first found
])
def test_choice(server: int, found: list[tuple[int, str]], chosen: str) -> None:
    assert choose_tool("pg_basebackup", server, found, pinned=False) == chosen


@pytest.mark.parametrize(("found", "pinned", "expected"), [
    ([(15, D15)], False, f"pg_basebackup 15 ({D15}) is older than the server (PostgreSQL 18), which it refuses"),
    ([(15, D15), (16, D16)], False, f"pg_basebackup 16 ({D16}) is older than the server (PostgreSQL 18)"),
    ([(15, D15)], True, f"[backup] pg_bin_dir: pg_basebackup 15 ({D15}) is older than the server"),
    ([], False, "pg_basebackup not found"),
])
def test_older_tools_are_one_clear_line(found: list[tuple[int, str]], pinned: bool, expected: str) -> None:
    with pytest.raises(PostgresError) as caught:
        choose_tool("pg_basebackup", 18, found, pinned=pinned)
    text = str(caught.value)
    assert expected in text and "\n" not in text
    assert "[backup] pg_bin_dir" in text
    if found:
        assert "install PostgreSQL 18's client programs" in text

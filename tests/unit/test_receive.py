"""wal-receive's pure decisions: what wal-fetch serves at the end of the archive, what a pg_receivewal
failure means, the received-partial key names."""

from __future__ import annotations

import pytest

from walkeeper.commands.wal_receive import heartbeat_targets
from walkeeper.core.errors import ConfigError, RefusedError
from walkeeper.core.wal import parse_wal_name
from walkeeper.postgres.receivewal import Failure, classify_failure
from walkeeper.postgres.standby import format_conninfo, parse_conninfo, pgpass_serves, streaming_settings
from walkeeper.repo.layout import parse_received_partial_key, received_partial_key
from walkeeper.repo.received import (
    MissingChoice,
    missing_segment_choice,
    partial_holders,
    receive_lag,
    received_length,
)

NF, GAP, SERVE = MissingChoice.NOT_FOUND, MissingChoice.WAIT_FOR_GAP, MissingChoice.SERVE_PARTIAL


@pytest.mark.parametrize(("wanted", "later", "partials", "expected"), [
    # nothing stored at or after the segment: the end of the archive, exit 1
    (5, False, [], (NF, None)),
    (5, False, [(3, 100), (4, 200)], (NF, None)),  # leftovers of earlier segments never serve a later one
    # a complete later segment: the gap rules (wait, then exit 208), whatever partials say
    (5, True, [], (GAP, None)),
    (5, True, [(5, 8192)], (GAP, None)),
    # a partial of a later segment: the segment must be stored (in flight or a gap), never served short
    (5, False, [(6, 8192)], (GAP, None)),
    (5, False, [(5, 8192), (6, 100)], (GAP, None)),
    # the last thing in the archive is this segment's partial: serve the newest (greatest length)
    (5, False, [(5, 8192)], (SERVE, 8192)),
    (5, False, [(5, 8192), (5, 65536), (5, 16384)], (SERVE, 65536)),
    (5, False, [(4, 1 << 24), (5, 8192)], (SERVE, 8192)),
    (5, False, [(5, 0)], (NF, None)),  # an empty upload holds nothing to replay
])
def test_missing_segment_choice(wanted: int, later: bool, partials: list[tuple[int, int]],
                                expected: tuple[MissingChoice, int | None]) -> None:
    assert missing_segment_choice(wanted, later, partials) == expected


@pytest.mark.parametrize(("lines", "kind"), [
    (['pg_receivewal: error: replication slot "walkeeper" does not exist'], Failure.SLOT_MISSING),
    (['pg_receivewal: error: could not send replication command "START_REPLICATION": ERROR:  replication '
      'slot "x" does not exist'], Failure.SLOT_MISSING),
    (['pg_receivewal: error: connection to server on socket "/tmp/.s.PGSQL.5432" failed: FATAL:  no '
      'pg_hba.conf entry for replication connection from host "[local]", user "postgres", no encryption'],
     Failure.REFUSED),
    (['pg_receivewal: error: connection to server at "127.0.0.1", port 5432 failed: FATAL:  pg_hba.conf '
      'rejects replication connection for host "127.0.0.1", user "rep", no encryption'], Failure.REFUSED),
    (["FATAL:  must be superuser or replication role to start walsender"], Failure.REFUSED),
    (['pg_receivewal: error: connection to server on socket "/tmp/.s.PGSQL.5432" failed: No such file or '
      'directory', "\tIs the server running locally and accepting connections on that socket?"], Failure.OTHER),
    (["pg_receivewal: error: unexpected termination of replication stream: FATAL:  terminating connection "
      "due to administrator command", "pg_receivewal: error: disconnected"], Failure.OTHER),
    ([], Failure.OTHER),
])
def test_classify_failure(lines: list[str], kind: Failure) -> None:
    assert classify_failure(lines)[0] is kind


def test_classify_failure_reports_the_last_line() -> None:
    assert classify_failure(["a", "b", ""]) == (Failure.OTHER, "b")


def test_received_partial_keys_sort_by_length() -> None:
    seg = parse_wal_name("000000010000000000000005")
    keys = [received_partial_key(seg, n) for n in (8192, 0x10000, 0xFFFFFF, 0x1000000)]
    assert keys == sorted(keys)
    assert keys[0] == "received/00000001/000000010000000000000005.partial.00002000"
    assert [parse_received_partial_key(k) for k in keys] == [
        ("000000010000000000000005", n) for n in (8192, 0x10000, 0xFFFFFF, 0x1000000)]


@pytest.mark.parametrize("key", [
    "received/00000001/000000010000000000000005.partial",  # no length
    "received/00000001/000000010000000000000005.partial.2000",  # not fixed width
    "received/00000001/000000010000000000000005.partial.0000200g",
    "wal/00000001/000000010000000000000005.partial.00002000",  # not under received/
    "received/receiver.json",
    "received/00000001/x/000000010000000000000005.partial.00002000",
])
def test_parse_received_partial_key_rejects(key: str) -> None:
    assert parse_received_partial_key(key) is None


@pytest.mark.parametrize(("data", "length"), [
    (b"", 0), (b"\0" * 10, 0), (b"ab" + b"\0" * 10, 2), (b"\0a\0b" + b"\0" * 3, 4), (b"abc", 3),
])
def test_received_length(data: bytes, length: int) -> None:
    assert received_length(data) == length


@pytest.mark.parametrize(("state", "now", "lag"), [
    (None, 100.0, None), ({"updated": 90.0}, 100.0, 10.0), ({"updated": 110.0}, 100.0, 0.0),
])
def test_receive_lag(state: dict | None, now: float, lag: float | None) -> None:
    assert receive_lag(state, now) == lag


# -- pitr --standby --primary-conninfo (postgres/standby.py) ----------------------------------------------


@pytest.mark.parametrize(("text", "fields"), [
    ("host=primary port=5432 user=rep", {"host": "primary", "port": "5432", "user": "rep"}),
    ("host = primary  user='re p' password='a\\'b'", {"host": "primary", "user": "re p", "password": "a'b"}),
    ("postgresql://rep:s%40cret@db.example:5433/postgres?sslmode=require",
     {"user": "rep", "password": "s@cret", "host": "db.example", "port": "5433", "dbname": "postgres",
      "sslmode": "require"}),
    ("", {}),
])
def test_parse_conninfo(text: str, fields: dict[str, str]) -> None:
    assert parse_conninfo(text) == fields


@pytest.mark.parametrize("text", ["host=a 'b'", "host='open", "=x"])
def test_parse_conninfo_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_conninfo(text)


def test_format_conninfo_round_trips() -> None:
    fields = {"host": "primary", "user": "re p", "application_name": "a'b\\c"}
    assert parse_conninfo(format_conninfo(fields)) == fields


@pytest.mark.parametrize(("lines", "serves"), [
    (["primary:5432:replication:rep:pw"], True),
    (["*:*:*:*:pw"], True),
    (["primary:5432:postgres:rep:pw"], False),  # a replication connection asks for database "replication"
    (["primary:5433:replication:rep:pw"], False),
    (["# primary:5432:replication:rep:pw", ""], False),
    (["other:*:*:rep:pw", "primary:*:replication:*:pw"], True),
])
def test_pgpass_serves(lines: list[str], serves: bool) -> None:
    assert pgpass_serves(lines, "primary", "5432", "rep") is serves


def test_streaming_settings_strip_a_password_a_pgpass_serves(tmp_path) -> None:
    (tmp_path / ".pgpass").write_text("primary:5432:replication:rep:secret\n")
    settings = streaming_settings("host=primary port=5432 user=rep password=secret", "standby1",
                                  env={}, home=str(tmp_path))
    assert "secret" not in settings.primary_conninfo and "password" not in settings.primary_conninfo
    assert settings.note and ".pgpass" in settings.note
    assert settings.settings() == [
        ("primary_conninfo", "host=primary port=5432 user=rep application_name=walkeeper_standby"),
        ("primary_slot_name", "standby1")]


def test_streaming_settings_refuse_a_password_nothing_serves(tmp_path) -> None:
    with pytest.raises(RefusedError, match="never writes"):
        streaming_settings("host=primary user=rep password=secret", None, env={}, home=str(tmp_path))
    passfile = tmp_path / "pw"
    passfile.write_text("*:*:replication:rep:secret\n")
    ok = streaming_settings("host=primary user=rep password=secret", None, env={"PGPASSFILE": str(passfile)},
                            home=str(tmp_path))
    assert "secret" not in (ok.primary_conninfo or "") and str(passfile) in (ok.note or "")


# -- several repositories --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("wanted", "listings", "expected"), [
    (5, [[], []], (NF, None, [])),
    # the newest upload anywhere is served, by the repositories that hold exactly that upload
    (5, [[(5, 8192)], []], (SERVE, 8192, [0])),
    (5, [[], [(5, 8192)]], (SERVE, 8192, [1])),
    (5, [[(5, 8192)], [(5, 65536)]], (SERVE, 65536, [1])),  # the first repository lags: not its older one
    (5, [[(5, 65536)], [(5, 65536)]], (SERVE, 65536, [0, 1])),
    # a later partial in any repository: gap rules, even when another holds this segment's partial
    (5, [[(5, 8192)], [(6, 100)]], (GAP, None, [])),
    (5, [[(6, 100)], [(5, 8192)]], (GAP, None, [])),
    (5, [[(4, 1 << 24)], [(5, 0)]], (NF, None, [])),
])
def test_partial_holders_across_repositories(wanted: int, listings: list[list[tuple[int, int]]],
                                             expected: tuple[MissingChoice, int | None, list[int]]) -> None:
    assert partial_holders(wanted, listings) == expected


@pytest.mark.parametrize(("stored_in", "unsettled", "behind", "expected"), [
    ({"a": True, "b": True}, set(), set(), ["a", "b"]),
    ({"a": True, "b": False}, set(), set(), ["a"]),  # b's partial upload failed this round
    ({"a": True, "b": True}, {"b"}, set(), ["a"]),  # b did not take a completed segment (recorded behind)
    ({"a": True, "b": True}, set(), {"b"}, ["a"]),  # b still has a backlog to catch up
    ({"a": True, "b": True}, {"a", "b"}, set(), []),  # a completed segment did not count as archived
    ({}, set(), set(), []),
])
def test_heartbeat_only_where_everything_received_is(stored_in: dict[str, bool], unsettled: set[str],
                                                     behind: set[str], expected: list[str]) -> None:
    assert heartbeat_targets(["a", "b"], stored_in, unsettled, behind) == expected

"""Several repositories, in process on local repositories (no root, seconds): what wal-fetch serves from which
repository and what it must report (repo/fallback.py), and what wal-push stores where under require = "all" and
"any", with the backlog and its catch-up in WAL order (repo/fanout.py, repo/lagbook.py). The real-cluster
scenarios (S3 and ssh outages) are in tests/postgres/test_several_repositories.py.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.walfactory import MiB, make_segment, write_segment
from walkeeper.core.config import load_config
from walkeeper.core.errors import ConflictError, GapError, IntegrityError, NotFound, StorageError
from walkeeper.core.wal import parse_wal_name
from walkeeper.repo.fallback import Source, fetch_first
from walkeeper.repo.fanout import Fanout, Target
from walkeeper.repo.lagbook import LagBook
from walkeeper.repo.repository import Repository, open_repository

SYSID = 7300000000000000001
SEG = "0000000{}000000000000000{}".format
PLAIN = {"WALKEEPER_ENCRYPTION_METHOD": "none", "WALKEEPER_COMPRESSION_METHOD": "none"}


def repository(root: Path) -> Repository:
    return open_repository(load_config(env=PLAIN, repo=str(root)))


def segment(tmp_path: Path, name: str) -> Path:
    pg_wal = tmp_path / "src" / "pg_wal"
    pg_wal.mkdir(parents=True, exist_ok=True)
    path = pg_wal / name
    if not path.exists():
        write_segment(pg_wal, int(name[:8], 16), int(name[16:24], 16), sysid=SYSID)
    return path


def store(tmp_path: Path, repo: Repository, name: str) -> None:
    Fanout([Target("x", repo)]).push(segment(tmp_path, name))


def world(tmp_path: Path, contents: dict[str, list[str]]) -> list[Source]:
    """Repositories a, b (, c) holding the given segments; "corrupt:NAME" stores a damaged object; "nometa"
    makes a directory without walkeeper.json (an unusable repository)."""
    sources = []
    for repo_name, names in contents.items():
        root = tmp_path / repo_name
        repo = repository(root)
        repo.ensure_identity(SYSID, MiB, 15)
        for name in names:
            if name == "nometa":
                (root / "walkeeper.json").unlink()
            elif name.startswith("corrupt:"):
                store(tmp_path, repo, name[8:])
                obj = root / "wal" / name[8:16] / name[8:]
                data = bytearray(obj.read_bytes())
                data[-100] ^= 0xFF
                obj.write_bytes(bytes(data))
            else:
                store(tmp_path, repo, name)
        sources.append(Source(repo_name, repository(root)))
    return sources


@pytest.mark.parametrize(("contents", "wanted", "outcome"), [
    # served by the first that has a good copy
    ({"a": [SEG(1, 3)], "b": [SEG(1, 3)]}, SEG(1, 3), "a"),
    ({"a": [], "b": [SEG(1, 3)]}, SEG(1, 3), "b"),
    ({"a": [f"corrupt:{SEG(1, 3)}"], "b": [SEG(1, 3)]}, SEG(1, 3), "b"),
    ({"a": ["nometa"], "b": [SEG(1, 3)]}, SEG(1, 3), "b"),
    ({"a": [], "b": [], "c": [SEG(1, 3)]}, SEG(1, 3), "c"),
    # missing in one while later ones are there, present in the other: no gap, no wait
    ({"a": [SEG(1, 3), SEG(1, 5)], "b": [SEG(1, 4)]}, SEG(1, 4), "b"),
    # in none, nothing later anywhere: "not found" (exit 1)
    ({"a": [SEG(1, 3)], "b": [SEG(1, 3)]}, SEG(1, 4), "not found"),
    # in none, a later one in either: a gap judged across both (exit 208), never "not found"
    ({"a": [SEG(1, 3), SEG(1, 5)], "b": [SEG(1, 3)]}, SEG(1, 4), "gap"),
    ({"a": [SEG(1, 3)], "b": [SEG(1, 5)]}, SEG(1, 4), "gap"),
    # in none, one failed: its error (exit 200+), never "not found": the file may be just there
    ({"a": [f"corrupt:{SEG(1, 3)}"], "b": []}, SEG(1, 3), IntegrityError),
    ({"a": [], "b": ["nometa"]}, SEG(1, 3), StorageError),
    ({"a": ["nometa"], "b": [SEG(1, 5)]}, SEG(1, 4), StorageError),
])
def test_fetch_from_the_first_repository_that_has_it(tmp_path: Path, contents: dict[str, list[str]], wanted: str,
                                                      outcome: str | type) -> None:
    sources = world(tmp_path, contents)
    name = parse_wal_name(wanted)
    if outcome == "not found":
        with pytest.raises(NotFound):
            fetch_first(sources, name, gap_wait=5.0)
    elif outcome == "gap":
        with pytest.raises(GapError, match="in any repository"):
            fetch_first(sources, name, gap_wait=0.2)
    elif isinstance(outcome, type):
        with pytest.raises(outcome) as caught:
            fetch_first(sources, name, gap_wait=5.0)
        assert not isinstance(caught.value, NotFound) and str(caught.value).startswith("repository ")
        assert "so it may be only where it cannot be read" in str(caught.value) and "--repo" in str(caught.value)
    else:
        fetched = fetch_first(sources, name)
        assert fetched.source == outcome and fetched.data == segment(tmp_path, wanted).read_bytes()


def test_gap_wait_sees_a_store_in_flight_in_any_repository(tmp_path: Path) -> None:
    sources = world(tmp_path, {"a": [SEG(1, 3), SEG(1, 5)], "b": [SEG(1, 3)]})
    storer = threading.Timer(0.4, store, (tmp_path, repository(tmp_path / "b"), SEG(1, 4)))
    storer.start()
    began = time.monotonic()
    try:
        assert fetch_first(sources, parse_wal_name(SEG(1, 4)), gap_wait=5.0).source == "b"
    finally:
        storer.join()
    assert 0.4 <= time.monotonic() - began < 5.0


@pytest.mark.parametrize(("flag", "order"), [(None, ["a", "b"]), ("b", ["b", "a"]), ("a", ["a", "b"])])
def test_fetch_order_follows_configuration_and_repo_flag(tmp_path: Path, flag: str | None,
                                                         order: list[str]) -> None:
    path = tmp_path / "walkeeper.toml"
    path.write_text('[[repository]]\nname = "a"\nrepo = "/ra"\n[[repository]]\nname = "b"\nrepo = "/rb"\n')
    config = load_config(str(path), env={}, repo=flag)
    assert [c.repository_name for c in config.fetch_repositories()] == order
    assert [c.repository_name for c in config.push_repositories()] == ([flag] if flag else ["a", "b"])


# -- wal-push into several repositories ------------------------------------------------------------------


def break_repository(root: Path) -> None:
    """Make stores fail (a storage error, as an unreachable target gives): the wal/ tree becomes a file."""
    if (root / "wal").exists():
        (root / "wal").rename(root / "wal.away")
    (root / "wal").write_text("not a directory")


def mend_repository(root: Path) -> None:
    (root / "wal").unlink()
    if (root / "wal.away").exists():
        (root / "wal.away").rename(root / "wal")


def fanout(tmp_path: Path, require: str, *, interval: float = 0.0) -> Fanout:
    targets = []
    for name in ("a", "b"):
        repo = repository(tmp_path / name)
        repo.ensure_identity(SYSID, MiB, 15)
        book_dir = tmp_path / f"lag-{name}"
        book_dir.mkdir(exist_ok=True)
        targets.append(Target(name, repo, LagBook(str(book_dir)) if require == "any" else None))
    return Fanout(targets, require=require, pg_wal=tmp_path / "src" / "pg_wal", catch_up_interval=interval)


def stored(tmp_path: Path, repo_name: str) -> list[str]:
    wal = tmp_path / repo_name / "wal" / "00000001"
    return sorted(os.listdir(wal)) if wal.is_dir() else []


def test_require_all_fails_while_one_repository_is_down(tmp_path: Path) -> None:
    fan = fanout(tmp_path, "all")
    fan.push(segment(tmp_path, SEG(1, 1)))
    break_repository(tmp_path / "b")
    with pytest.raises(StorageError, match=r"^repository b: "):
        fan.push(segment(tmp_path, SEG(1, 2)))
    assert stored(tmp_path, "a") == [SEG(1, 1), SEG(1, 2)]  # stored where it could be: a retry finds it there
    mend_repository(tmp_path / "b")
    result = fan.push(segment(tmp_path, SEG(1, 2)))  # PostgreSQL's retry
    assert result.stored == ["a", "b"] and not result.behind
    assert stored(tmp_path, "b") == [SEG(1, 1), SEG(1, 2)]


def test_require_any_records_the_lag_and_catches_up_in_order(tmp_path: Path) -> None:
    fan = fanout(tmp_path, "any", interval=3600.0)
    fan.push(segment(tmp_path, SEG(1, 1)))
    break_repository(tmp_path / "b")
    result = fan.push(segment(tmp_path, SEG(1, 2)))
    assert result.stored == ["a"] and list(result.behind) == ["b"]
    began = time.monotonic()
    for n in (3, 4):  # b rests: no retries, no waiting, each file joins its backlog
        assert fan.push(segment(tmp_path, SEG(1, n))).stored == ["a"]
    assert time.monotonic() - began < 1.0
    book_b = fan.targets[1].lag
    assert book_b is not None and book_b.pending() == [SEG(1, 2), SEG(1, 3), SEG(1, 4)]
    assert "wal" in (book_b.reason(SEG(1, 2)) or "")
    mend_repository(tmp_path / "b")
    assert fan.catch_up() == {"b": 0}  # still resting
    book_b.recovered()  # the interval is over
    # the files are gone from pg_wal (recycled): catch-up takes them from repository a, verified
    (tmp_path / "src" / "pg_wal" / SEG(1, 2)).unlink()
    assert fan.catch_up() == {"b": 3}
    assert book_b.pending() == []
    assert stored(tmp_path, "b") == stored(tmp_path, "a") == [SEG(1, n) for n in (1, 2, 3, 4)]
    wal_b = tmp_path / "b" / "wal" / "00000001"
    by_time = sorted(stored(tmp_path, "b")[1:], key=lambda n: ((wal_b / n).stat().st_mtime_ns, n))
    assert by_time == [SEG(1, 2), SEG(1, 3), SEG(1, 4)]  # stored in WAL order
    assert repository(tmp_path / "b").fetch_wal(parse_wal_name(SEG(1, 2))) == \
        repository(tmp_path / "a").fetch_wal(parse_wal_name(SEG(1, 2)))
    assert fan.push(segment(tmp_path, SEG(1, 5))).stored == ["a", "b"]


def test_require_any_with_a_backlog_stores_new_files_after_it(tmp_path: Path) -> None:
    fan = fanout(tmp_path, "any")
    break_repository(tmp_path / "b")
    fan.push(segment(tmp_path, SEG(1, 1)))
    mend_repository(tmp_path / "b")
    # the next call catches b up first, then its own file goes in after (interval 0: no rest)
    result = fan.push(segment(tmp_path, SEG(1, 2)))
    assert result.stored == ["a", "b"] and stored(tmp_path, "b") == [SEG(1, 1), SEG(1, 2)]


def test_require_any_fails_when_no_repository_stores_it(tmp_path: Path) -> None:
    fan = fanout(tmp_path, "any")
    break_repository(tmp_path / "a")
    break_repository(tmp_path / "b")
    with pytest.raises(StorageError, match=r"^repository a: "):
        fan.push(segment(tmp_path, SEG(1, 1)))
    # nothing counts as archived: no backlog keeps the file (PostgreSQL calls again)
    assert [t.lag.pending() for t in fan.targets if t.lag] == [[], []]


def test_different_content_fails_in_both_modes(tmp_path: Path) -> None:
    for require in ("all", "any"):
        root = tmp_path / require
        root.mkdir()
        fan = fanout(root, require)
        other = tmp_path / "other"
        other.mkdir(exist_ok=True)
        write_segment(other, 1, 1, sysid=SYSID, seed=99)
        fan.targets[1].repo.push_wal(parse_wal_name(SEG(1, 1)), (other / SEG(1, 1)).read_bytes())
        with pytest.raises(ConflictError, match=r"^repository b: "):
            fan.push(segment(root, SEG(1, 1)))

    # a repository behind never gets a copy of a refused file through its backlog
    root = tmp_path / "behind"
    root.mkdir()
    fan = fanout(root, "any", interval=3600.0)
    break_repository(root / "a")
    fan.push(segment(root, SEG(1, 1)))  # b stores it; a is behind
    fan.targets[1].repo.push_wal(parse_wal_name(SEG(1, 2)), make_segment(1, 2, sysid=SYSID, seed=7)[1])
    with pytest.raises(ConflictError, match=r"^repository b: "):
        fan.push(segment(root, SEG(1, 2)))
    assert fan.targets[0].lag is not None and fan.targets[0].lag.pending() == [SEG(1, 1)]


# -- the lag per repository (status, check, Prometheus) -----------------------------------------------------


@pytest.mark.parametrize(("mine", "others", "expected"), [
    (set(), [], 0),
    ({SEG(1, 3)}, [{SEG(1, 3)}], 0),
    ({SEG(1, 3)}, [{SEG(1, 1), SEG(1, 2), SEG(1, 3), SEG(1, 4), SEG(1, 5)}], 2),
    (set(), [{SEG(1, 1), SEG(1, 2)}], 2),
    ({SEG(1, 5)}, [{SEG(1, 2)}], 0),  # ahead of the other: not behind (the other is)
    ({SEG(1, 5)}, [{SEG(1, 6)}, {SEG(1, 6), SEG(1, 7)}], 2),  # counted once across the others
    ({SEG(1, 9)}, [{SEG(2, 9)}], 1),  # a later timeline is later
    # older segments expired in one repository only are no lag
    ({SEG(1, 8), SEG(1, 9)}, [{SEG(1, n) for n in range(1, 10)}], 0),
])
def test_behind_by(mine: set[str], others: list[set[str]], expected: int) -> None:
    from walkeeper.repo.lag import behind_by

    assert behind_by(mine, others) == expected


def test_repository_lags_count_backlog_and_listings(tmp_path: Path) -> None:
    from walkeeper.repo.lag import repository_lags

    fan = fanout(tmp_path, "any", interval=3600.0)
    fan.push(segment(tmp_path, SEG(1, 1)))
    break_repository(tmp_path / "b")
    for n in (2, 3, 4):
        fan.push(segment(tmp_path, SEG(1, n)))
    path = tmp_path / "walkeeper.toml"
    path.write_text(f'[[repository]]\nname = "a"\nrepo = "{tmp_path / "a"}"\n'
                    f'[[repository]]\nname = "b"\nrepo = "{tmp_path / "b"}"\n')
    config = load_config(str(path), env=PLAIN)
    (tmp_path / "b" / "walkeeper.json").rename(tmp_path / "b" / "walkeeper.away")  # and unreadable
    lags = {lag.name: lag for lag in repository_lags(config, lambda url: str(tmp_path / f"lag-{url[-1]}"))}
    assert (lags["a"].segments, lags["a"].backlog, lags["a"].error) == (0, 0, None)
    b = lags["b"]
    # b's listing fails (its wal/ is broken): the backlog still says how far behind it is, and why
    assert (b.segments, b.backlog, b.oldest_missing) == (3, 3, SEG(1, 2))
    assert b.error and "walkeeper.json is missing" in b.error
    assert b.last_failure and "Not a directory" in b.last_failure
    mend_repository(tmp_path / "b")
    (tmp_path / "b" / "walkeeper.away").rename(tmp_path / "b" / "walkeeper.json")
    lags = {lag.name: lag for lag in repository_lags(config, lambda url: str(tmp_path / f"lag-{url[-1]}"))}
    assert (lags["b"].segments, lags["b"].newest_segment, lags["b"].error) == (3, SEG(1, 1), None)


@pytest.mark.parametrize(("segments", "oldest", "failure", "error", "problems"), [
    (0, None, None, None, []),
    (3, SEG(1, 2), "connection refused", None,
     [f"repository b is 3 segments behind, missing since {SEG(1, 2)}; last error: connection refused"]),
    (1, None, None, None, ["repository b is 1 segment behind"]),
    (0, None, None, "cannot connect", ["repository b cannot be read now: cannot connect"]),
    (2, SEG(1, 2), "refused", "cannot connect",
     [f"repository b is 2 segments behind, missing since {SEG(1, 2)}; cannot be read now: cannot connect"]),
])
def test_lag_problems_and_metric(segments: int, oldest: str | None, failure: str | None, error: str | None,
                                 problems: list[str]) -> None:
    from walkeeper.repo.lag import RepositoryLag, lag_metric, lag_problems

    lags = [RepositoryLag("a", "/a", 0, 0, None, SEG(1, 5), None, None),
            RepositoryLag("b", "s3://b/p", segments, segments if oldest else 0, oldest, None, failure, error)]
    assert lag_problems(lags) == problems
    assert lag_metric(lags)[2:] == ['walkeeper_repository_lag_segments{repo="a"} 0',
                                    f'walkeeper_repository_lag_segments{{repo="b"}} {segments}']

"""Push-ahead, prefetch and the stdlib-only fast paths, on real WAL, under faults.

The WAL comes from a real cluster whose archiving was left paused (archive_mode = on with an empty
archive_command), so its pg_wal holds real segments and PostgreSQL's own archive_status/*.ready
files. wal-push and wal-fetch run as PostgreSQL runs them: as postgres, with the data directory as
working directory and %p relative to it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import PG_BIN, WALKEEPER_BIN, Cluster, as_pg, give_to_pg, pg_workdir, run_pg, walkeeper_cmd
from walkeeper.accel import state
from walkeeper.core.walformat import is_wal_name

pytestmark = pytest.mark.postgres
HEAVY = ("click", "zstandard", "cryptography", "boto3", "botocore")


@pytest.fixture(scope="module")
def wal_source() -> Iterator[Path]:
    """A stopped cluster's data directory with 6+ real segments waiting as .ready."""
    work = pg_workdir("wk-speed-src-")
    cluster = Cluster(work / "data").initdb()
    cluster.configure({**cluster.base_settings(), "archive_mode": "on", "archive_command": "",
                       "wal_level": "replica", "wal_keep_size": "1GB"})
    cluster.start()
    try:
        run_pg([PG_BIN / "pgbench", "-i", "-s", "1", "-q", *cluster.conninfo(), "postgres"])
        for i in range(6):
            cluster.psql(f"create table t{i} as select g, md5(g::text) from generate_series(1, 20000) g")
            cluster.switch_wal()
    finally:
        cluster.stop()
    yield cluster.datadir
    shutil.rmtree(work, ignore_errors=True)


def ready(datadir: Path) -> list[str]:
    return sorted(p.name[:-6] for p in (datadir / "pg_wal" / "archive_status").glob("*.ready")
                  if re.fullmatch(r"[0-9A-F]{24}", p.name[:-6]))


def copy_datadir(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return give_to_pg(dest)


def configure(setup: Setup, archive: str = "", restore: str = "") -> None:
    setup.extra_config = (f'[archive]\nstatus_dir = "{setup.work}/status"\n{archive}\n'
                          f'[restore]\nspool_dir = "{setup.work}/spool"\n{restore}\n')
    setup.write_config()


def status_records(setup: Setup) -> list[str]:
    """The push-ahead records (named like the WAL file); markers, locks and logs are not records."""
    base = setup.work / "status"
    return sorted(p.name for p in base.glob("*/*") if is_wal_name(p.name))


def pusher_pids(setup: Setup) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"walkeeper.commands.pusher {setup.work}/status"],
                         capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def stored(setup: Setup, name: str) -> bool:
    return (setup.repo / "wal" / name[:8] / name).exists()


def fetch_bytes(setup: Setup, name: str) -> bytes:
    out = setup.work / f"check-{name}"
    proc = setup.wk("wal-fetch", name, out, env={"WALKEEPER_RESTORE_PREFETCH": "0"})
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    out.unlink()
    return data


# -- the entry point's fast path stays light ----------------------------------------------------------------


def imported_modules(proc: subprocess.CompletedProcess[str]) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", proc.stderr, re.M)}


def test_fast_paths_import_no_heavy_module(setup: Setup, wal_source: Path) -> None:
    configure(setup, "push_ahead = 4", "prefetch = 4")
    data = copy_datadir(wal_source, setup.work / "data")
    first, second = ready(data)[:2]
    assert setup.wk("wal-push", f"pg_wal/{first}", cwd=data).returncode == 0
    python = str(Path(WALKEEPER_BIN).parent / "python")
    runner = "import sys; from walkeeper.entry import main; sys.exit(main())"

    def entry(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        cmd = as_pg([python, "-X", "importtime", "-c", runner, "--config", str(setup.config), "-v", *args])
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)

    proc = entry("wal-push", f"pg_wal/{second}", cwd=data)
    assert proc.returncode == 0 and "fast path" in proc.stderr, proc.stderr[-2000:]
    modules = imported_modules(proc)
    assert "walkeeper.accel.fastpath" in modules and not [m for m in modules if m.split(".")[0] in HEAVY]

    # The full path does import them: the check above can fail.
    proc = entry("wal-push", f"pg_wal/{first}", cwd=data)
    assert proc.returncode == 0 and "click" in imported_modules(proc)

    # wal-fetch from the prefetch spool.
    restore = copy_datadir(wal_source, setup.work / "restore")
    (restore / "recovery.signal").touch()
    give_to_pg(restore)
    assert setup.wk("wal-fetch", first, "pg_wal/RECOVERYXLOG", cwd=restore).returncode == 0
    wait_for(lambda: spool_has(setup, second))
    proc = entry("wal-fetch", second, "pg_wal/RECOVERYXLOG", cwd=restore)
    assert proc.returncode == 0 and "fast path" in proc.stderr, proc.stderr[-2000:]
    modules = imported_modules(proc)
    assert not [m for m in modules if m.split(".")[0] in HEAVY], modules
    assert (restore / "pg_wal" / "RECOVERYXLOG").read_bytes() == (wal_source / "pg_wal" / second).read_bytes()
    (restore / "recovery.signal").unlink()


# -- push-ahead ---------------------------------------------------------------------------------------------


def test_push_ahead_then_fast_path_for_each_later_call(setup: Setup, wal_source: Path) -> None:
    configure(setup, "push_ahead = 16\nworkers = 2\nidle_timeout = 2")
    data = copy_datadir(wal_source, setup.work / "data")
    names = ready(data)
    assert len(names) >= 6
    proc = setup.wk("-v", "wal-push", f"pg_wal/{names[0]}", cwd=data)
    assert proc.returncode == 0, proc.stderr
    assert stored(setup, names[0])
    # The background pusher stores the others and records each one, never the starting call's own file.
    wait_for(lambda: status_records(setup) == names[1:])
    assert all(stored(setup, n) for n in names), "every .ready segment is stored ahead"
    for name in names[1:]:
        proc = setup.wk("-v", "wal-push", f"pg_wal/{name}", cwd=data)
        assert proc.returncode == 0 and "fast path" in proc.stderr, proc.stderr
        (data / "pg_wal" / "archive_status" / f"{name}.ready").rename(
            data / "pg_wal" / "archive_status" / f"{name}.done")  # as PostgreSQL does
    assert status_records(setup) == []
    for name in names:
        assert fetch_bytes(setup, name) == (data / "pg_wal" / name).read_bytes()
    wait_for(lambda: not pusher_pids(setup), timeout=20)  # it stops by itself with nothing to push


def test_config_through_a_symlink_with_relative_state_dirs(setup: Setup, wal_source: Path) -> None:
    """Relative status_dir/spool_dir are relative to the real file for the full and the fast path alike:
    with the file reached through a link in another directory, the fast path still finds the records."""
    real_dir, link_dir = setup.work / "conf", setup.work / "elsewhere"
    for directory in (real_dir, link_dir):
        directory.mkdir()
        give_to_pg(directory)
    real = real_dir / "walkeeper.toml"
    setup.config.rename(real)
    real.write_text(real.read_text() + '[archive]\npush_ahead = 4\nstatus_dir = "state/status"\nidle_timeout = 2\n'
                    '[restore]\nprefetch = 4\nspool_dir = "state/spool"\n')
    (link_dir / "walkeeper.toml").symlink_to(real)
    setup.config = link_dir / "walkeeper.toml"
    data = copy_datadir(wal_source, setup.work / "data")
    first, second = ready(data)[:2]
    assert setup.wk("wal-push", f"pg_wal/{first}", cwd=data).returncode == 0
    wait_for(lambda: [p.name for p in (real_dir / "state" / "status").glob(f"*/{second}")] == [second])
    proc = setup.wk("-v", "wal-push", f"pg_wal/{second}", cwd=data)
    assert proc.returncode == 0 and "fast path" in proc.stderr, proc.stderr
    assert not (link_dir / "state").exists()

    restore = copy_datadir(wal_source, setup.work / "restore")
    (restore / "recovery.signal").touch()
    give_to_pg(restore)
    assert setup.wk("wal-fetch", first, "pg_wal/RECOVERYXLOG", cwd=restore).returncode == 0
    wait_for(lambda: any((real_dir / "state" / "spool").glob(f"*/{second}.meta")))
    proc = setup.wk("-v", "wal-fetch", second, "pg_wal/RECOVERYXLOG", cwd=restore)
    assert proc.returncode == 0 and "fast path" in proc.stderr, proc.stderr
    (restore / "recovery.signal").unlink()
    assert not (link_dir / "state").exists()


def test_fast_path_waits_for_the_segment_the_pusher_is_storing(setup: Setup, wal_source: Path) -> None:
    configure(setup, "push_ahead = 16\nworkers = 1\nidle_timeout = 2")
    data = copy_datadir(wal_source, setup.work / "data")
    names = ready(data)
    slow = {"WALKEEPER_TEST_PUSH_AHEAD_DELAY": "1.5"}  # inherited by the pusher: each push ends 1.5 s late
    assert setup.wk("wal-push", f"pg_wal/{names[0]}", cwd=data, env=slow).returncode == 0
    wait_for(lambda: any(p.name == f"{names[1]}.pushing" for p in (setup.work / "status").glob("*/*")))
    assert names[1] not in status_records(setup)
    start = time.monotonic()
    proc = setup.wk("-v", "wal-push", f"pg_wal/{names[1]}", cwd=data)
    waited = time.monotonic() - start
    # Answered from the pusher's record once it was written: not pushed a second time, not early.
    assert proc.returncode == 0 and "fast path" in proc.stderr, proc.stderr
    assert "already archived" not in proc.stderr and waited > 0.3
    assert fetch_bytes(setup, names[1]) == (data / "pg_wal" / names[1]).read_bytes()
    for pid in pusher_pids(setup):
        os.kill(pid, signal.SIGTERM)


def test_call_waiting_for_a_pusher_that_dies_pushes_the_file_itself(setup: Setup, wal_source: Path) -> None:
    configure(setup, "push_ahead = 16\nworkers = 1")
    data = copy_datadir(wal_source, setup.work / "data")
    names = ready(data)
    slow = {"WALKEEPER_TEST_PUSH_AHEAD_DELAY": "60"}  # stores names[1], then stalls before its record
    assert setup.wk("wal-push", f"pg_wal/{names[0]}", cwd=data, env=slow).returncode == 0
    wait_for(lambda: stored(setup, names[1]) and any(
        p.name == f"{names[1]}.pushing" for p in (setup.work / "status").glob("*/*")))
    cmd = as_pg([str(WALKEEPER_BIN), "--config", str(setup.config), "-v", "wal-push", f"pg_wal/{names[1]}"])
    call = subprocess.Popen(cmd, cwd=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert call.poll() is None, "the call waits for the pusher's record"
    for pid in pusher_pids(setup):
        os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    _out, err = call.communicate(timeout=20)
    # Not 30 s of waiting for a dead pusher, and not a fast-path "yes": the full path finds the object.
    assert call.returncode == 0 and time.monotonic() - start < 5, err
    assert "fast path" not in err and "already archived with identical content" in err, err
    assert names[1] not in status_records(setup)


def test_changed_file_is_not_taken_for_pushed(setup: Setup, wal_source: Path) -> None:
    configure(setup, "push_ahead = 16")
    data = copy_datadir(wal_source, setup.work / "data")
    names = ready(data)
    assert setup.wk("wal-push", f"pg_wal/{names[0]}", cwd=data).returncode == 0
    wait_for(lambda: names[1] in status_records(setup))  # pushed ahead and recorded, then changed
    victim = data / "pg_wal" / names[1]
    with open(victim, "r+b") as handle:  # same size, same inode: only mtime/ctime tell
        handle.seek(100_000)
        handle.write(b"\xff" * 16)
    proc = setup.wk("-v", "wal-push", f"pg_wal/{names[1]}", cwd=data)
    assert proc.returncode != 0 and "fast path" not in proc.stderr
    assert "different content" in proc.stderr


def test_segment_pushed_twice(setup: Setup, wal_source: Path) -> None:
    configure(setup, "push_ahead = 16")
    data = copy_datadir(wal_source, setup.work / "data")
    names = ready(data)
    for _ in range(2):
        assert setup.wk("wal-push", f"pg_wal/{names[0]}", cwd=data).returncode == 0
    wait_for(lambda: names[1] in status_records(setup))
    # A fast-path answer, then PostgreSQL asks again (crash before .done): the full path says yes.
    assert "fast path" in setup.wk("-v", "wal-push", f"pg_wal/{names[1]}", cwd=data).stderr
    proc = setup.wk("-v", "wal-push", f"pg_wal/{names[1]}", cwd=data)
    assert proc.returncode == 0 and "fast path" not in proc.stderr
    assert fetch_bytes(setup, names[1]) == (data / "pg_wal" / names[1]).read_bytes()


def test_worker_killed_mid_push_leaves_no_record(setup: Setup, wal_source: Path) -> None:
    configure(setup, "push_ahead = 16\nworkers = 2")
    data = copy_datadir(wal_source, setup.work / "data")
    names = ready(data)
    # The pusher stores each object, then stalls before writing its record; it is killed there.
    slow = {"WALKEEPER_TEST_PUSH_AHEAD_DELAY": "60"}
    assert setup.wk("wal-push", f"pg_wal/{names[0]}", cwd=data, env=slow).returncode == 0
    try:
        wait_for(lambda: sum(stored(setup, n) for n in names) >= 3, timeout=60)
    finally:
        for pid in pusher_pids(setup):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pusher_pids(setup))
    assert status_records(setup) == [], "a killed push leaves no record"
    markers = [p.name for p in (setup.work / "status").glob("*/*.pushing")]
    assert f"{names[1]}.pushing" in markers, "the killed pusher left its markers behind"
    leftovers = [p for p in setup.repo.rglob("*") if p.is_file() and p.name.startswith(".")]
    # PostgreSQL's next call: a dead pusher's marker is not waited for; the full path pushes (or finds) it.
    proc = setup.wk("-v", "wal-push", f"pg_wal/{names[1]}", cwd=data, env={"WALKEEPER_ARCHIVE_PUSH_AHEAD": "0"})
    assert proc.returncode == 0 and "fast path" not in proc.stderr, proc.stderr
    for name in names:  # PostgreSQL's own calls, push-ahead on again: all succeed, nothing lost
        assert setup.wk("wal-push", f"pg_wal/{name}", cwd=data).returncode == 0
        (data / "pg_wal" / "archive_status" / f"{name}.ready").rename(
            data / "pg_wal" / "archive_status" / f"{name}.done")
    for name in names:
        assert fetch_bytes(setup, name) == (data / "pg_wal" / name).read_bytes()
    assert all(p.name.startswith(".") for p in leftovers)  # at most hidden temp files, never a partial object


def test_repository_failing_reports_nothing_archived(setup: Setup, wal_source: Path) -> None:
    configure(setup, "push_ahead = 16\nidle_timeout = 2")
    data = copy_datadir(wal_source, setup.work / "data")
    names = ready(data)
    # The repository exists but its WAL directory refuses writes for a while.
    assert setup.wk("wal-push", f"pg_wal/{names[0]}", cwd=data, env={"WALKEEPER_ARCHIVE_PUSH_AHEAD": "0"}
                    ).returncode == 0
    tli_dir = setup.repo / "wal" / names[0][:8]
    tli_dir.chmod(0o500)
    try:
        for name in names[1:3]:
            proc = setup.wk("wal-push", f"pg_wal/{name}", cwd=data)
            assert proc.returncode != 0 and proc.returncode <= 125, proc.stderr
        # The pusher the calls started has tried the others too, and failed.
        wait_for(lambda: "push-ahead of" in "".join(p.read_text() for p in (setup.work / "status").glob("*/push.log")))
        # Only names[0] (stored before the outage) may carry a record.
        assert set(status_records(setup)) <= {names[0]} and stored(setup, names[0])
        assert not any(stored(setup, n) for n in names[1:])
        # A pusher whose every push fails stops after idle_timeout (2 s here) instead of retrying forever.
        wait_for(lambda: not pusher_pids(setup), timeout=20)
        assert "every push has failed" in "".join(p.read_text() for p in (setup.work / "status").glob("*/push.log"))
    finally:
        tli_dir.chmod(0o700)
    for name in names[1:]:
        assert setup.wk("wal-push", f"pg_wal/{name}", cwd=data).returncode == 0
    for name in names:
        assert fetch_bytes(setup, name) == (data / "pg_wal" / name).read_bytes()


# -- prefetch -----------------------------------------------------------------------------------------------


def wait_for(predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def spool_files(setup: Setup) -> list[str]:
    return sorted(p.name for p in (setup.work / "spool").glob("*/*") if re.fullmatch(r"[0-9A-F]{24}", p.name))


def spool_has(setup: Setup, name: str) -> bool:
    return any((p / f"{name}.meta").exists() for p in (setup.work / "spool").glob("*"))


def prefetcher_pids(setup: Setup) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"walkeeper.commands.prefetch {setup.work}/spool"],
                         capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture
def archived(setup: Setup, wal_source: Path) -> Iterator[tuple[Path, list[str]]]:
    """A repository holding the source's segments, and a restore-like data directory in recovery."""
    configure(setup, "push_ahead = 16", "prefetch = 3\nidle_timeout = 20")
    data = copy_datadir(wal_source, setup.work / "data")
    names = ready(data)
    assert setup.wk("wal-push", f"pg_wal/{names[0]}", cwd=data).returncode == 0
    for name in names[1:]:
        assert setup.wk("wal-push", f"pg_wal/{name}", cwd=data).returncode == 0
    restore = setup.work / "restore"
    restore.mkdir()
    (restore / "global").mkdir()
    shutil.copy(data / "global" / "pg_control", restore / "global" / "pg_control")
    (restore / "pg_wal").mkdir()
    (restore / "recovery.signal").touch()
    give_to_pg(restore)
    yield data, names
    (restore / "recovery.signal").unlink(missing_ok=True)
    wait_for(lambda: not prefetcher_pids(setup), timeout=10)


def fetch(setup: Setup, name: str, dest: str = "pg_wal/RECOVERYXLOG") -> subprocess.CompletedProcess[str]:
    return setup.wk("-v", "wal-fetch", name, dest, cwd=setup.work / "restore")


def test_prefetch_serves_next_segments_through_fast_path(setup: Setup, archived: tuple[Path, list[str]]) -> None:
    data, names = archived
    dest = setup.work / "restore" / "pg_wal" / "RECOVERYXLOG"
    proc = fetch(setup, names[0])
    assert proc.returncode == 0 and "fast path" not in proc.stderr
    for name in names[1:]:
        wait_for(lambda n=name: spool_has(setup, n))
        assert len(spool_files(setup)) <= 3, "bounded by prefetch"
        proc = fetch(setup, name)
        assert proc.returncode == 0 and "fast path" in proc.stderr, proc.stderr
        assert dest.read_bytes() == (data / "pg_wal" / name).read_bytes()
    assert len(prefetcher_pids(setup)) == 1
    # Past the end of the archive: a quiet "not found", as PostgreSQL expects.
    after = f"{names[-1][:16]}{int(names[-1][16:], 16) + 1:08X}"
    assert fetch(setup, after).returncode == 1
    # Recovery ends: the prefetcher stops by itself and empties the spool.
    (setup.work / "restore" / "recovery.signal").unlink()
    wait_for(lambda: not prefetcher_pids(setup), timeout=10)
    assert spool_files(setup) == []


def test_fetch_waits_for_the_prefetcher_instead_of_fetching_twice(
        setup: Setup, archived: tuple[Path, list[str]]) -> None:
    """PostgreSQL asks faster than the spool fills: later calls wait for the prefetcher (fast path)."""
    data, names = archived
    dest = setup.work / "restore" / "pg_wal" / "RECOVERYXLOG"
    assert fetch(setup, names[0]).returncode == 0
    for name in names[1:]:  # no waiting between calls
        proc = fetch(setup, name)
        assert proc.returncode == 0 and "fast path" in proc.stderr, proc.stderr
        assert dest.read_bytes() == (data / "pg_wal" / name).read_bytes()


def test_corrupted_prefetched_file_is_not_served(setup: Setup, archived: tuple[Path, list[str]]) -> None:
    data, names = archived
    assert fetch(setup, names[0]).returncode == 0
    wait_for(lambda: spool_has(setup, names[1]))
    (spooled,) = [p for p in (setup.work / "spool").glob(f"*/{names[1]}")]
    with open(spooled, "r+b") as handle:
        handle.seek(1_000_000)
        handle.write(b"\x00corrupt\x00")
    proc = fetch(setup, names[1])
    assert proc.returncode == 0 and "failed verification" in proc.stderr, proc.stderr
    assert (setup.work / "restore" / "pg_wal" / "RECOVERYXLOG").read_bytes() == \
        (data / "pg_wal" / names[1]).read_bytes()


def test_spool_file_of_another_system_is_not_served(setup: Setup, archived: tuple[Path, list[str]]) -> None:
    """A stale spool (another cluster's data directory with the same path) never reaches PostgreSQL."""
    _data, names = archived
    assert fetch(setup, names[0]).returncode == 0
    wait_for(lambda: spool_has(setup, names[1]))
    control = setup.work / "restore" / "global" / "pg_control"
    raw = bytearray(control.read_bytes())
    raw[0] ^= 0xFF  # another system identifier
    control.write_bytes(bytes(raw))
    proc = fetch(setup, names[1])
    assert "fast path" not in proc.stderr and "failed verification" in proc.stderr


def test_spool_file_from_before_a_reboot_is_not_served(setup: Setup, archived: tuple[Path, list[str]]) -> None:
    """After a crash a spool file may never have reached the disk whole: its record names the boot."""
    data, names = archived
    assert fetch(setup, names[0]).returncode == 0
    wait_for(lambda: spool_has(setup, names[1]))
    (meta,) = list((setup.work / "spool").glob(f"*/{names[1]}.meta"))
    doc = state.read_record(str(meta))
    assert doc and doc["boot_id"]
    doc["boot_id"] = "00000000-0000-0000-0000-000000000000"
    state.write_record(str(meta), doc)
    give_to_pg(meta)
    proc = fetch(setup, names[1])
    assert proc.returncode == 0 and "failed verification" in proc.stderr, proc.stderr
    assert (setup.work / "restore" / "pg_wal" / "RECOVERYXLOG").read_bytes() == \
        (data / "pg_wal" / names[1]).read_bytes()


def test_two_fetches_at_once(setup: Setup, archived: tuple[Path, list[str]]) -> None:
    data, names = archived
    assert fetch(setup, names[0]).returncode == 0
    wait_for(lambda: spool_has(setup, names[1]))
    procs = [subprocess.Popen(as_pg([str(WALKEEPER_BIN), "--config", str(setup.config), "-v", "wal-fetch",
                                     names[1], f"pg_wal/OUT{i}"]), cwd=setup.work / "restore",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [(*p.communicate(timeout=60), p.returncode) for p in procs]
    assert [r[2] for r in results] == [0, 0], results
    want = (data / "pg_wal" / names[1]).read_bytes()
    for i in range(2):
        assert (setup.work / "restore" / "pg_wal" / f"OUT{i}").read_bytes() == want
    assert len(prefetcher_pids(setup)) == 1


def test_timeline_switch_while_prefetching(setup: Setup, archived: tuple[Path, list[str]]) -> None:
    """Timeline 2 forks at names[2]; its segments differ from timeline 1's (a marker in the body)."""
    data, names = archived
    tl2 = {}
    for name in names[2:]:
        body = bytearray((data / "pg_wal" / name).read_bytes())
        body[50_000:50_008] = b"TIMELN#2"
        tl2_name = "00000002" + name[8:]
        path = data / "pg_wal" / tl2_name
        path.write_bytes(bytes(body))
        give_to_pg(path)
        assert setup.wk("wal-push", f"pg_wal/{tl2_name}", cwd=data,
                        env={"WALKEEPER_ARCHIVE_PUSH_AHEAD": "0"}).returncode == 0
        tl2[tl2_name] = bytes(body)
    dest = setup.work / "restore" / "pg_wal" / "RECOVERYXLOG"
    assert fetch(setup, names[0]).returncode == 0
    assert fetch(setup, names[1]).returncode == 0
    wait_for(lambda: spool_has(setup, names[2]) and spool_has(setup, names[3]))  # timeline 1 prefetched
    for tl2_name, body in tl2.items():
        proc = fetch(setup, tl2_name)
        assert proc.returncode == 0, proc.stderr
        assert dest.read_bytes() == body, f"{tl2_name}: a timeline-1 file was served"
        assert not [f for f in spool_files(setup) if f.startswith("00000001")] or \
            wait_for(lambda: not [f for f in spool_files(setup) if f.startswith("00000001")]) is None
    assert fetch(setup, list(tl2)[-1]).returncode == 0


def test_prefetcher_stops_when_idle(setup: Setup, archived: tuple[Path, list[str]]) -> None:
    configure(setup, "", "prefetch = 2\nidle_timeout = 1")
    assert fetch(setup, archived[1][0]).returncode == 0
    wait_for(lambda: len(prefetcher_pids(setup)) == 1, timeout=10)
    wait_for(lambda: not prefetcher_pids(setup), timeout=15)
    assert spool_files(setup) == []


# -- with PostgreSQL itself -----------------------------------------------------------------------------------


def test_postgres_push_ahead_outage_and_pitr_through_prefetch(setup: Setup, pg_major: Path) -> None:
    configure(setup, "push_ahead = 8\nworkers = 2", "prefetch = 8\nidle_timeout = 30")
    primary = Cluster(setup.work / "primary", bin_dir=pg_major).initdb()
    command = f"{walkeeper_cmd(setup.config)} -v wal-push %p"
    primary.configure({**primary.base_settings(), "archive_mode": "on", "archive_command": "",
                       "wal_level": "replica", "wal_keep_size": "2GB"})
    primary.start()
    try:
        run_pg([primary.bin("pgbench"), "-i", "-s", "1", "-q", *primary.conninfo(), "postgres"])
        backup = setup.work / "backup"
        # Archiving paused: .ready files pile up, as behind a busy primary.
        for i in range(5):
            primary.psql(f"create table a{i} as select g, md5(g::text) from generate_series(1, 30000) g")
            primary.switch_wal()
        primary.psql(f"alter system set archive_command = '{command}'")
        primary.psql("select pg_reload_conf()")
        primary.wait_archived(primary.switch_wal())
        run_pg([primary.bin("pg_basebackup"), "-D", backup, "-X", "none", "-c", "fast", *primary.conninfo()])
        log = primary.log()
        assert "pushed" in log and "ahead" in log, log[-3000:]
        assert "already pushed ahead (fast path)" in log, log[-3000:]

        # The repository fails for a while: nothing may be reported archived that is not stored.
        wal_dir = setup.repo / "wal" / "00000001"
        wal_dir.chmod(0o500)
        try:
            for i in range(4):
                primary.psql(f"create table b{i} as select g, md5(g::text) from generate_series(1, 30000) g")
                primary.switch_wal()
            deadline = time.time() + 30
            while time.time() < deadline and int(primary.psql("select failed_count from pg_stat_archiver")) < 2:
                time.sleep(0.2)
            last_ok = primary.psql("select coalesce(last_archived_wal, '') from pg_stat_archiver")
            assert all(stored(setup, n) for n in status_records(setup))
            done = sorted(p.name[:-5] for p in (primary.datadir / "pg_wal" / "archive_status").glob("*.done"))
            assert all(stored(setup, n) for n in done if len(n) == 24), "a .done segment is missing"
        finally:
            wal_dir.chmod(0o700)
        run_pg([primary.bin("pgbench"), "-t", "300", "-n", *primary.conninfo(), "postgres"])
        expected = primary.psql("select sum(abalance), (select count(*) from b3) from pgbench_accounts")
        last = primary.switch_wal()
        primary.wait_archived(last, timeout=120)
        assert last > last_ok
        for path in sorted((primary.datadir / "pg_wal").iterdir()):
            if re.fullmatch(r"[0-9A-F]{24}", path.name) and path.name <= last:
                assert fetch_bytes(setup, path.name) == path.read_bytes(), path.name
        listing = setup.wk("wal-list").stdout
        assert "GAP" not in listing, listing
    finally:
        primary.stop()

    # PITR-style replay through the prefetcher.
    restored = Cluster.from_backup(backup, setup.work / "restored",
                                   f"{walkeeper_cmd(setup.config)} -v wal-fetch %f %p", bin_dir=pg_major)
    restored.start()
    try:
        restored.wait_recovery_done(timeout=180)
        assert restored.psql("select sum(abalance), (select count(*) from b3) from pgbench_accounts") == expected
        log = restored.log()
        assert log.count("from the prefetch spool (fast path)") >= 3, log[-4000:]
        assert f'restored log file "{last}" from archive' in log
    finally:
        restored.stop()
    wait_for(lambda: not prefetcher_pids(setup), timeout=15)
    assert spool_files(setup) == []


# -- the fast path reads the configuration as walkeeper.core.config does -----------------------------------------


@pytest.mark.parametrize("env", [{}, {"WALKEEPER_ARCHIVE_PUSH_AHEAD": "0", "WALKEEPER_RESTORE_PREFETCH": "3",
                                      "WALKEEPER_REPO": "/elsewhere"}])
@pytest.mark.parametrize("body", ["", "[archive]\npush_ahead = 4\nstatus_dir = \"st\"\n"
                                      "[restore]\nprefetch = 9\nspool_dir = \"/abs/spool\"\n"])
def test_fast_path_settings_match_the_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    env: dict[str, str], body: str) -> None:
    from walkeeper.accel import settings
    from walkeeper.core.config import load_config

    monkeypatch.setenv("WALKEEPER_STATE_ROOT", str(tmp_path / "state"))
    config_file = tmp_path / "wk.toml"
    config_file.write_text(f'repo = "/some/repo"\n{body}')
    for _ in range(2):  # parsed, then from the cache
        fast = settings.load_settings(str(config_file), None, env)
        full = load_config(str(config_file), env=env)
        assert (fast.repo, fast.push_ahead, fast.prefetch, fast.status_dir, fast.spool_dir) == (
            full.repo, full.archive.push_ahead, full.restore.prefetch, full.archive.status_dir, full.restore.spool_dir)
    config_file.write_text('repo = "/changed"\n')  # a changed file is read again
    assert settings.load_settings(str(config_file), None, {}).repo == "/changed"


def test_state_inside_the_data_directory_is_refused(setup: Setup, wal_source: Path) -> None:
    """A spool or status directory inside the data directory would end up in base backups and pg_rewind."""
    data = copy_datadir(wal_source, setup.work / "data")
    setup.extra_config = (f'[archive]\nstatus_dir = "{data}/wk-status"\n'
                          f'[restore]\nspool_dir = "{data}/pg_wal/wk-spool"\n')
    setup.write_config()
    names = ready(data)
    proc = setup.wk("-v", "wal-push", f"pg_wal/{names[0]}", cwd=data)
    assert proc.returncode == 0 and "inside the data directory" in proc.stderr, proc.stderr
    assert not (data / "wk-status").exists()
    (data / "recovery.signal").touch()
    give_to_pg(data)
    out = setup.wk("-v", "wal-fetch", names[0], "pg_wal/RECOVERYXLOG", cwd=data)
    assert out.returncode == 0 and "inside the data directory" in out.stderr, out.stderr
    assert not (data / "pg_wal" / "wk-spool").exists()


def test_postgres_timeline_switch_while_prefetching(setup: Setup) -> None:
    """A real fork: recovery to the end of the latest timeline passes the switch point while the prefetcher
    holds the old timeline's later segments; only the new timeline's WAL may be replayed."""
    configure(setup, "push_ahead = 8", "prefetch = 8\nidle_timeout = 30")
    wk = walkeeper_cmd(setup.config)
    primary = Cluster(setup.work / "primary").initdb()
    primary.configure({**primary.base_settings(), "archive_mode": "on", "wal_level": "replica",
                       "archive_command": f"{wk} wal-push %p"})
    primary.start()
    backup = setup.work / "backup"
    try:
        primary.psql("create table marks(note text)")
        primary.wait_archived(primary.switch_wal())
        run_pg([PG_BIN / "pg_basebackup", "-D", backup, "-X", "none", "-c", "fast", *primary.conninfo()])
        for i in range(3):
            primary.psql(f"insert into marks values ('before-{i}')")
            primary.psql(f"create table fill{i} as select g, md5(g::text) from generate_series(1, 60000) g")
            primary.switch_wal()
        primary.psql("select pg_create_restore_point('fork')")
        for i in range(4):  # timeline 1 goes on after the fork point: these must never be replayed below
            primary.psql(f"insert into marks values ('tl1-after-fork-{i}')")
            primary.psql(f"create table late{i} as select g, md5(g::text) from generate_series(1, 60000) g")
            primary.switch_wal()
        primary.wait_archived(primary.switch_wal())
    finally:
        primary.stop()

    def restore(name: str, settings: dict[str, str | int], *, warm: bool = False) -> Cluster:
        cluster = Cluster.from_backup(backup, setup.work / name, f"{wk} -v wal-fetch %f %p", settings)
        if warm:  # the prefetcher runs ahead on timeline 1 (past the fork) before PostgreSQL asks anything
            start = re.search(r"START WAL LOCATION: .*\(file ([0-9A-F]{24})\)",
                              (cluster.datadir / "backup_label").read_text()).group(1)
            assert setup.wk("wal-fetch", start, "pg_wal/PROBE", cwd=cluster.datadir).returncode == 0
            (cluster.datadir / "pg_wal" / "PROBE").unlink()
            wait_for(lambda: len(spool_files(setup)) >= 8, timeout=60)
        cluster.start()
        cluster.wait_recovery_done(timeout=180)
        return cluster

    # The fork: recover to the restore point, promote to timeline 2, write and archive there.
    fork = restore("fork", {"recovery_target_name": "fork", "recovery_target_action": "promote",
                            "archive_mode": "on", "wal_level": "replica", "archive_command": f"{wk} wal-push %p"})
    try:
        assert fork.psql("select count(*) from marks where note like 'tl1-after%'") == "0"
        fork.psql("insert into marks values ('tl2')")
        fork.psql("create table tl2fill as select g, md5(g::text) from generate_series(1, 60000) g")
        fork.wait_archived(fork.switch_wal())
        tl = fork.psql("select timeline_id from pg_control_checkpoint()")
        assert int(tl) >= 2
    finally:
        fork.stop()
    wait_for(lambda: not prefetcher_pids(setup), timeout=40)

    # Recovery to the latest timeline through the prefetcher.
    final = restore("final", {"archive_mode": "off", "recovery_target_timeline": "latest"}, warm=True)
    try:
        notes = final.psql("select string_agg(note, ',' order by note) from marks")
        assert notes == "before-0,before-1,before-2,tl2", notes
        log = final.log()
        assert "from the prefetch spool (fast path)" in log, log[-4000:]
        restored = re.findall(r'restored log file "([0-9A-F]{24})" from archive', log)
        assert any(n.startswith("00000002") for n in restored), restored
        # The prefetcher did hold timeline 1 past the fork (segments PostgreSQL took from timeline 2).
        from walkeeper.accel.state import instance_key

        spool_log = setup.work / "spool" / instance_key(str(setup.repo), str(final.datadir)) / "prefetch.log"
        prefetched = set(re.findall(r"prefetched ([0-9A-F]{24})", spool_log.read_text()))
        overtaken = {n for n in prefetched if n.startswith("00000001") and "00000002" + n[8:] in restored}
        assert overtaken, (sorted(prefetched), restored)
    finally:
        final.stop()
    wait_for(lambda: not prefetcher_pids(setup), timeout=40)
    assert spool_files(setup) == []

#!/usr/bin/env python3
"""Recovery point after kill -9 of the primary: archive_command alone, archive_timeout, wal-receive.

Run as root from the repository root (PostgreSQL runs as the postgres user)::

    /opt/walkeeper-venv/bin/python benchmarks/recovery_point.py [--seconds 25] [--timeout-seconds 75]

For each setup: a fresh primary (synchronous_commit = on), a walkeeper base backup, then one
transaction every 0.2 s, each row stamped with clock_timestamp() just before its COMMIT. After the
given time the primary is killed -9 with all its processes (no shutdown, no segment switch); in the
"receiver lost too" rows wal-receive is killed -9 at the same moment (the whole host is gone), in the
others it survives and stops normally. Then `walkeeper pitr --target-latest` from the repository
alone, start, and count: the recovery point is the time between the last recovered commit and the
kill (0 when every committed transaction came back).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from tests.conftest import make_key
from tests.helpers.pgharness import WALKEEPER_BIN, Cluster, as_pg, give_to_pg, pg_workdir, walkeeper_cmd


def kill9(cluster: Cluster) -> None:
    pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    for p in [pid, *map(int, children.split())]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def wk(config: Path, *args: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}
    return subprocess.run(as_pg([WALKEEPER_BIN, "--config", config, *map(str, args)]), capture_output=True,
                          text=True, env=env)


def writer(primary: Cluster, stop: threading.Event) -> None:
    while not stop.is_set():
        primary.psql("insert into t(at) values (clock_timestamp())", check=False)
        time.sleep(0.2)


def run(name: str, seconds: float, *, archive_timeout: int = 0, receive: list[str] | None = None,
        receiver_lost: bool = False, sync: bool = False) -> tuple[str, float, int, int]:
    work = pg_workdir("wk-rpo-")
    try:
        key = make_key(work / "key")
        config = work / "walkeeper.toml"
        config.write_text(f'repo = "{work}/repo"\n[encryption]\nkey_file = "{key}"\n'
                          f'[receive]\nspool_dir = "{work}/spool"\n')
        give_to_pg(config)
        primary = Cluster(work / "primary").initdb()
        primary.configure({**primary.base_settings(), "wal_level": "replica", "max_wal_senders": 5,
                           "synchronous_commit": "on", "archive_mode": "on", "archive_timeout": archive_timeout,
                           "archive_command": f"{walkeeper_cmd(config)} wal-push %p"})
        primary.start()
        primary.psql("create table t(id serial primary key, at timestamptz not null)")
        conn = ["-h", primary.sockdir, "-p", primary.port, "-U", "postgres"]
        assert wk(config, "backup", *conn, "--fast-checkpoint").returncode == 0
        receiver = None
        if receive is not None:
            log = open(work / "receive.log", "wb")  # noqa: SIM115
            env = {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}
            receiver = subprocess.Popen(as_pg([WALKEEPER_BIN, "--config", config, "wal-receive", *conn,
                                               "--create-slot", *receive]), stdout=log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)
            time.sleep(2)
            if sync:
                primary.psql("alter system set synchronous_standby_names = 'walkeeper_receive'")
                primary.psql("select pg_reload_conf()")
                time.sleep(1)
        stop = threading.Event()
        start = time.time()
        thread = threading.Thread(target=writer, args=(primary, stop))
        thread.start()
        time.sleep(seconds)
        stop.set()
        thread.join()
        committed = primary.psql("select count(*), extract(epoch from max(at)) from t").split("|")
        kill_at = float(primary.psql("select extract(epoch from clock_timestamp())"))
        kill9(primary)
        if receiver is not None:
            if receiver_lost:
                os.killpg(receiver.pid, signal.SIGKILL)
            else:
                time.sleep(12)  # the next partial upload
                ps = subprocess.run(["ps", "-o", "pid=", "--ppid", str(receiver.pid)], capture_output=True,
                                    text=True).stdout.split()
                for pid in ps:
                    os.kill(int(pid), signal.SIGTERM)
            receiver.wait(60)
        recovered = Cluster(work / "recovered")
        proc = wk(config, "pitr", "--pgdata", recovered.datadir, "--target-latest")
        assert proc.returncode == 0, proc.stderr
        recovered.configure({**recovered.base_settings(), "archive_mode": "off"})
        recovered.start()
        recovered.wait_recovery_done()
        got = recovered.psql("select count(*), coalesce(extract(epoch from max(at)), 0) from t").split("|")
        recovered.destroy()
        primary.destroy()
        total, lost = int(committed[0]), int(committed[0]) - int(got[0])
        point = 0.0 if lost == 0 else kill_at - (float(got[1]) if int(got[0]) else start)
        return name, point, lost, total
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="workload before the kill")
    parser.add_argument("--timeout-seconds", type=float, default=75.0, help="workload with archive_timeout = 60")
    args = parser.parse_args()
    rows = [
        run("archive_command alone (archive_timeout = 0)", args.seconds),
        run("archive_command, archive_timeout = 60", args.timeout_seconds, archive_timeout=60),
        run("wal-receive, partial_interval 10 s, receiver lost with the host", args.seconds, receive=[],
            receiver_lost=True),
        run("wal-receive, partial_interval 10 s, receiver survives", args.seconds, receive=[]),
        run("wal-receive --synchronous (synchronous_standby_names), receiver survives", args.seconds,
            receive=["--synchronous"], sync=True),
    ]
    print(f"{'setup':<75} {'recovery point':>15} {'lost tx':>8} {'of':>5}")
    for name, point, lost, total in rows:
        print(f"{name:<75} {point:>13.1f} s {lost:>8} {total:>5}")


if __name__ == "__main__":
    main()

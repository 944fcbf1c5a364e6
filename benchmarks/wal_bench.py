#!/usr/bin/env python3
"""WAL archive/restore benchmark: walkeeper beside plain cp, pgBackRest and barman-cloud, in one run.

Run as root from the repository root (PostgreSQL runs as the postgres user)::

    /opt/walkeeper-venv/bin/python benchmarks/wal_bench.py [--segments 40] [--pitr-segments 110] [--s3]

1. A throwaway cluster (pgbench) writes real WAL with archiving paused (archive_mode = on, empty
   archive_command), so pg_wal fills with segments and PostgreSQL's own archive_status/*.ready files.
2. For every tool, a driver running as postgres calls the archive command exactly as PostgreSQL
   does: via ``sh -c``, one call per segment, serially, working directory = the data directory,
   ``%p`` = ``pg_wal/NAME``, and renames ``.ready`` to ``.done`` after each success. Then the restore
   command, ``%p`` = ``pg_wal/RECOVERYXLOG`` (removed before each call, as PostgreSQL does) in a directory
   with recovery.signal. Every restored
   file is compared with the original (outside the timing).
3. A PITR of ``--pitr-segments`` segments from a base backup, from a plain ``cp`` archive and from
   walkeeper with its defaults, timed from pg_ctl start to the end of recovery.

CPU and peak RSS are those of the calls (wait4 of each ``sh -c``); background helpers that detach
(pgBackRest's async process, walkeeper's pusher and prefetcher) are not in the CPU column. walkeeper's
helpers log their peak RSS when they stop; a second table lists it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SEG = 16 * 1024 * 1024


# -- the driver (runs as postgres) -------------------------------------------------------------------------


def run_call(cmd: str, cwd: str, env: dict[str, str]) -> tuple[int, float, float, int]:
    """(exit status, wall s, cpu s, maxrss KiB) of one ``sh -c`` call."""
    start = time.perf_counter()
    proc = subprocess.Popen(["sh", "-c", cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def drive(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    datadir = spec["datadir"]
    status = Path(datadir) / "pg_wal" / "archive_status"
    env = {**os.environ, **spec.get("env", {})}
    out: dict[str, object] = {}
    if spec["action"] == "archive":
        # PostgreSQL's state before archiving: exactly these segments are .ready, the others .done.
        wanted = set(spec["names"])
        for entry in os.listdir(status):
            name, _, suffix = entry.partition(".")
            if suffix == "ready" and name not in wanted:
                os.rename(status / entry, status / f"{name}.done")
            elif suffix == "done" and name in wanted:
                os.rename(status / entry, status / f"{name}.ready")
        calls = []
        t0 = time.perf_counter()
        for name in spec["names"]:
            cmd = spec["cmd"].replace("%p", f"pg_wal/{name}").replace("%f", name)
            code, wall, cpu, rss = run_call(cmd, datadir, env)
            if code != 0:
                raise SystemExit(f"archive command failed ({code}) for {name}: {cmd}")
            ready = status / f"{name}.ready"
            if ready.exists():
                ready.rename(status / f"{name}.done")
            calls.append((wall, cpu, rss))
        out = {"total": time.perf_counter() - t0, "calls": calls}
    elif spec["action"] == "restore":
        target = Path(spec["restore_dir"])
        (target / "recovery.signal").touch()
        calls = []
        for name in spec["names"]:
            cmd = spec["cmd"].replace("%p", "pg_wal/RECOVERYXLOG").replace("%f", name)
            # PostgreSQL removes RECOVERYXLOG before each call (RestoreArchivedFile); replacing an existing
            # file instead would make ext4 (auto_da_alloc) start writing the new one back at once.
            (target / "pg_wal" / "RECOVERYXLOG").unlink(missing_ok=True)
            code, wall, cpu, rss = run_call(cmd, str(target), env)
            if code != 0:
                raise SystemExit(f"restore command failed ({code}) for {name}: {cmd}")
            calls.append((wall, cpu, rss))
            got = (target / "pg_wal" / "RECOVERYXLOG").read_bytes()
            if hashlib.sha256(got).hexdigest() != spec["sha"][name]:
                raise SystemExit(f"restore of {name} returned wrong content")
        out = {"total": sum(c[0] for c in calls), "calls": calls}
        (target / "recovery.signal").unlink()
    Path(spec["result"]).write_text(json.dumps(out))


# -- orchestration (root) ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=40, help="segments per tool in the table (>= 32)")
    parser.add_argument("--pitr-segments", type=int, default=110, help="segments replayed by the PITR timing")
    parser.add_argument("--s3", action="store_true", help="also walkeeper and barman-cloud on a loopback S3 (moto)")
    parser.add_argument("--no-peers", action="store_true", help="skip pgBackRest and barman-cloud")
    parser.add_argument("--no-pitr", action="store_true")
    parser.add_argument("--levels", default="", help="extra walkeeper zstd levels to compare, e.g. 1,6")
    parser.add_argument("--self-check-row", action="store_true",
                        help="also walkeeper with [archive] self_check = true (local, and S3 with --s3)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--reuse", metavar="DIR", help="reuse the WAL generated by an earlier --keep run in DIR")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive)
        return
    installed = subprocess.run([str(Path(sys.executable).parent / "python"), "-c",
                                "import walkeeper, sys; sys.stdout.write(walkeeper.__file__)"],
                               capture_output=True, text=True, cwd="/").stdout
    if "site-packages" not in installed or list(Path(installed).parents[1].glob("__editable__*")):
        raise SystemExit(f"walkeeper is not installed as a regular package in {sys.prefix} ({installed or 'missing'}):"
                         " an editable install adds an import hook to every call. Run: "
                         f"{sys.prefix}/bin/pip install .")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    Bench(args).run()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from tests.helpers import pgharness

        self.h = pgharness
        self.args = args
        self.work = Path(args.reuse) if args.reuse else pgharness.pg_workdir("wk-bench-")
        self.script = self.work / "wal_bench.py"
        shutil.copy(__file__, self.script)
        self.h.give_to_pg(self.script)
        self.rows: list[dict[str, object]] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []
        self.sha: dict[str, str] = {}

    # -- helpers --

    def pg_write(self, path: Path, text: str, mode: int = 0o644) -> Path:
        path.write_text(text)
        path.chmod(mode)
        return self.h.give_to_pg(path)

    def call_driver(self, spec: dict[str, object]) -> dict[str, object]:
        result = self.work / f"result-{time.monotonic_ns()}.json"
        spec["result"] = str(result)
        spec_path = self.pg_write(self.work / f"spec-{time.monotonic_ns()}.json", json.dumps(spec))
        self.h.run_pg([sys.executable, self.script, "--drive", spec_path], timeout=3600)
        return json.loads(result.read_text())

    def restore_dir(self, tag: str) -> Path:
        target = self.work / f"restore-{tag}"
        (target / "global").mkdir(parents=True)
        (target / "pg_wal").mkdir()
        shutil.copy(self.src.datadir / "global" / "pg_control", target / "global" / "pg_control")
        shutil.copy(self.src.datadir / "PG_VERSION", target / "PG_VERSION")
        return self.h.give_to_pg(target)

    @staticmethod
    def stored_bytes(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    # -- phases --

    def run(self) -> None:
        try:
            if self.args.reuse:
                self.load_generated()
            else:
                self.generate()
            self.tools()
            if not self.args.no_pitr:
                self.pitr()
            self.report()
        finally:
            for proc in self.procs:
                proc.terminate()
                proc.wait()
            if not self.args.keep and not self.args.reuse:
                shutil.rmtree(self.work, ignore_errors=True)

    def generate(self) -> None:
        # As an installed package would have: byte-compiled modules (postgres cannot write __pycache__ here).
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(__file__).resolve().parent.parent /
                                                                       "walkeeper")], check=False)
        want = max(self.args.segments, self.args.pitr_segments) + 2
        self.src = src = self.h.Cluster(self.work / "src").initdb()
        src.configure({**src.base_settings(), "archive_mode": "on", "archive_command": "", "wal_level": "replica",
                       "max_wal_size": "8GB", "wal_keep_size": "8GB", "checkpoint_timeout": "5min"})
        src.start()
        pgbench = [self.h.PG_BIN / "pgbench", *src.conninfo()]
        self.h.run_pg([*pgbench, "-i", "-s", "5", "-q", "postgres"])
        self.backup = self.work / "backup"
        self.h.run_pg([self.h.PG_BIN / "pg_basebackup", "-D", self.backup, "-X", "fetch", "-c", "fast",
                       *src.conninfo()])
        first_after = src.psql("select pg_walfile_name(pg_current_wal_lsn())")
        t0 = time.time()
        while True:
            self.h.run_pg([*pgbench, "-n", "-c", "2", "-j", "2", "-T", "5", "postgres"], timeout=600)
            current = src.psql("select pg_walfile_name(pg_current_wal_lsn())")
            if int(current[8:], 16) - int(first_after[8:], 16) >= want:
                break
        self.expected = src.psql("select sum(delta), count(*) from pgbench_history")
        src.switch_wal()
        src.stop()
        status = src.datadir / "pg_wal" / "archive_status"
        self.all_names = sorted(p.name[:-6] for p in status.glob("*.ready") if len(p.name) == 30)
        self.names = self.all_names[-self.args.segments:]
        for name in self.all_names:
            self.sha[name] = hashlib.sha256((src.datadir / "pg_wal" / name).read_bytes()).hexdigest()
        (self.work / "generated.json").write_text(json.dumps(
            {"port": src.port, "names": self.all_names, "sha": self.sha, "expected": self.expected,
             "first_after": first_after}))
        print(f"generated {len(self.all_names)} segments of real pgbench WAL in {time.time() - t0:.0f} s "
              f"({len(self.all_names) - self.all_names.index(first_after)} after the base backup)", flush=True)

    def load_generated(self) -> None:
        """Start from the WAL of an earlier run; everything the tools wrote is removed first."""
        info = json.loads((self.work / "generated.json").read_text())
        for path in self.work.iterdir():
            if path.name.startswith(("repo-", "cp-archive", "pgbr-", "restore-", "pitr-", "result-", "spec-",
                                     "wk-")):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        self.src = self.h.Cluster(self.work / "src", port=info["port"])
        self.backup = self.work / "backup"
        self.all_names, self.sha, self.expected = info["names"], info["sha"], info["expected"]
        self.names = self.all_names[-self.args.segments:]
        print(f"reusing {len(self.all_names)} segments from {self.work}", flush=True)

    def walkeeper_config(self, tag: str, extra: str = "", repo: str | None = None) -> Path:
        from tests.helpers.pgharness import WALKEEPER_BIN

        key = self.work / "wk.key"
        if not key.exists():
            proc = subprocess.run([str(WALKEEPER_BIN), "key", "generate"], capture_output=True, text=True, check=True)
            self.pg_write(key, proc.stdout, 0o600)
        repo = repo or str(self.work / f"repo-{tag}")
        # State inside the work directory, so that the helpers' logs (with their peak RSS) can be read;
        # short idle timeouts, so that they have exited when the report is written.
        state = self.work / f"wk-state-{tag}"
        state.mkdir(mode=0o700, exist_ok=True)
        self.h.give_to_pg(state)
        archive = f'[archive]\nstatus_dir = "{state}"\nidle_timeout = 3\n'
        restore = f'[restore]\nspool_dir = "{state}"\nidle_timeout = 3\n'
        for section in ("[archive]\n", "[restore]\n"):
            if section in extra:
                extra = extra.replace(section, archive if section == "[archive]\n" else restore)
            else:
                extra += "\n" + (archive if section == "[archive]\n" else restore)
        return self.pg_write(self.work / f"wk-{tag}.toml",
                             f'repo = "{repo}"\n[encryption]\nkey_file = "{key}"\n{extra}\n')

    def helper_rss(self, label: str) -> str:
        """Peak RSS of walkeeper's detached pusher and prefetcher for one row, from their logs."""
        tag = self.tags.get(label)
        if tag is None:
            return ""
        state = self.work / f"wk-state-{tag}"
        deadline = time.time() + 30
        while time.time() < deadline and subprocess.run(["pgrep", "-f", str(state)],
                                                         capture_output=True).returncode == 0:
            time.sleep(0.2)
        peaks = {"pusher": 0, "prefetcher": 0}
        cpu = {"pusher": 0.0, "prefetcher": 0.0}
        for log in state.rglob("*.log"):
            kind = "pusher" if log.name == "push.log" else "prefetcher"
            for line in log.read_text(errors="replace").splitlines():
                if "peak RSS" in line:  # "stopped (peak RSS 80 MiB, CPU 3.10 s)"
                    rss, _, used = line.rsplit("peak RSS ", 1)[1].partition(", CPU ")
                    peaks[kind] = max(peaks[kind], int(rss.split()[0]))
                    cpu[kind] += float(used.split()[0])
        return " | ".join(f"{peaks[k]} | {cpu[k]:.2f}" for k in ("pusher", "prefetcher"))

    def tools(self) -> None:
        from tests.helpers.pgharness import WALKEEPER_BIN

        wk = str(WALKEEPER_BIN)
        arch = self.work / "cp-archive"
        arch.mkdir()
        self.h.give_to_pg(arch)
        tools: list[tuple[str, str, str, Path | None, dict[str, str]]] = [
            ("cp (baseline)", f"test ! -f {arch}/%f && cp %p {arch}/%f", f"cp {arch}/%f %p", arch, {}),
        ]
        self.tags: dict[str, str] = {}
        one = self.walkeeper_config("one", "[archive]\npush_ahead = 0\n[restore]\nprefetch = 0")
        tools.append(("walkeeper, 1 segment/call", f"{wk} --config {one} wal-push %p",
                      f"{wk} --config {one} wal-fetch %f %p", self.work / "repo-one", {}))
        default = self.walkeeper_config("default")
        self.tags["walkeeper defaults (push-ahead, prefetch)"] = "default"
        tools.append(("walkeeper defaults (push-ahead, prefetch)", f"{wk} --config {default} wal-push %p",
                      f"{wk} --config {default} wal-fetch %f %p", self.work / "repo-default", {}))
        for level in [int(x) for x in self.args.levels.split(",") if x]:
            cfg = self.walkeeper_config(f"l{level}", f"[compression]\nlevel = {level}")
            self.tags[f"walkeeper defaults, zstd level {level}"] = f"l{level}"
            tools.append((f"walkeeper defaults, zstd level {level}", f"{wk} --config {cfg} wal-push %p",
                          f"{wk} --config {cfg} wal-fetch %f %p", self.work / f"repo-l{level}", {}))
        if self.args.self_check_row:
            cfg = self.walkeeper_config("check", "[archive]\nself_check = true")
            self.tags["walkeeper, self_check = true"] = "check"
            tools.append(("walkeeper, self_check = true", f"{wk} --config {cfg} wal-push %p",
                          f"{wk} --config {cfg} wal-fetch %f %p", self.work / "repo-check", {}))
        if not self.args.no_peers:
            tools += self.pgbackrest_tools()
        if self.args.s3:
            tools += self.s3_tools(wk)
        python = Path(sys.executable)
        tools.insert(1, (f"(bare interpreter: {python.name} -c pass)", f"{python} -c pass", "", None, {}))
        for label, push, fetch, store, env in tools:
            print(f"running {label} ...", flush=True)
            server = [self.server_cpu()]
            a = self.call_driver({"action": "archive", "datadir": str(self.src.datadir), "names": self.names,
                                  "cmd": push, "env": env})
            ratio = (len(self.names) * SEG / self.stored_bytes(store)) if store else None
            server.append(self.server_cpu())
            r = self.call_driver({"action": "restore", "restore_dir": str(self.restore_dir(str(len(self.rows)))),
                                  "names": self.names, "cmd": fetch, "env": env, "sha": self.sha,
                                  "datadir": str(self.src.datadir)}) if fetch else None
            server.append(self.server_cpu())
            self.rows.append({"label": label, "archive": a, "restore": r, "ratio": ratio,
                              "helpers": self.helper_rss(label),
                              "server": (server[1] - server[0], server[2] - server[1]) if env else None})
            time.sleep(0.5)

    def pgbackrest_tools(self) -> list[tuple[str, str, str, Path | None, dict[str, str]]]:
        if not shutil.which("pgbackrest"):
            print("pgBackRest not installed (apt-get install -y pgbackrest): skipped", flush=True)
            return []
        out = []
        for tag, cipher, asyn in (("zst", False, False), ("zst-aes", True, False), ("zst-aes-async", True, True)):
            repo = self.work / f"pgbr-{tag}"
            spool = self.work / f"pgbr-spool-{tag}"
            for d in (repo, spool, self.work / f"pgbr-lock-{tag}"):
                d.mkdir()
                self.h.give_to_pg(d)
            lines = [f"repo1-path={repo}", "compress-type=zst", "log-level-console=warn", "log-level-file=off",
                     f"lock-path={self.work}/pgbr-lock-{tag}", f"spool-path={spool}"]
            if cipher:
                lines += ["repo1-cipher-type=aes-256-cbc", "repo1-cipher-pass=bench-passphrase-0123456789"]
            if asyn:
                lines += ["archive-async=y", "process-max=2", "archive-get-queue-max=268435456"]
            conf = self.pg_write(self.work / f"pgbr-{tag}.conf",
                                 "[global]\n" + "\n".join(lines) + f"\n[bench]\npg1-path={self.src.datadir}\n")
            self.h.run_pg(["pgbackrest", f"--config={conf}", "--stanza=bench", "--no-online", "stanza-create"])
            base = f"pgbackrest --config={conf} --stanza=bench"
            label = "pgBackRest zst" + (" + aes-256-cbc" if cipher else "") + (" async (process-max 2)" if asyn else "")
            # archive-get runs with pg1-path = the restore directory (where %p is)
            out.append((label, f"{base} archive-push %p", f"{base} --pg1-path=$PWD archive-get %f %p", repo, {}))
        return out

    def server_cpu(self) -> float:
        """CPU seconds the loopback S3 server (moto) has used so far: it runs on the same two cores."""
        total = 0.0
        for proc in self.procs:
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def start_moto(self) -> str:
        port = self.h.free_port()
        moto = Path(sys.executable).parent / "moto_server"
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        import urllib.request

        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        return f"http://127.0.0.1:{port}"

    def s3_tools(self, wk: str) -> list[tuple[str, str, str, Path | None, dict[str, str]]]:
        try:
            import boto3
        except ImportError:
            print("--s3: boto3 not installed: skipped", flush=True)
            return []
        endpoint = self.start_moto()
        env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(env)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        out = []
        if (Path(__file__).resolve().parent.parent / "walkeeper" / "storage" / "s3.py").exists():
            s3.create_bucket(Bucket="wk-bench")
            cfg = self.walkeeper_config("s3", f'[s3]\nendpoint_url = "{endpoint}"\nregion = "us-east-1"',
                                        repo="s3://wk-bench/wal")
            self.tags["walkeeper defaults, S3 (moto, loopback)"] = "s3"
            out.append(("walkeeper defaults, S3 (moto, loopback)", f"{wk} --config {cfg} wal-push %p",
                        f"{wk} --config {cfg} wal-fetch %f %p", None, env))
            if self.args.self_check_row:
                cfg = self.walkeeper_config("s3-check", f'[s3]\nendpoint_url = "{endpoint}"\nregion = "us-east-1"'
                                            "\n[archive]\nself_check = true", repo="s3://wk-bench/wal-check")
                self.tags["walkeeper, self_check = true, S3 (moto, loopback)"] = "s3-check"
                out.append(("walkeeper, self_check = true, S3 (moto, loopback)", f"{wk} --config {cfg} wal-push %p",
                            f"{wk} --config {cfg} wal-fetch %f %p", None, env))
        else:
            print("--s3: walkeeper's S3 backend (walkeeper/storage/s3.py, issue 4) does not exist yet: skipped")
        barman = Path("/opt/barman-venv/bin/barman-cloud-wal-archive")
        if barman.exists():
            s3.create_bucket(Bucket="barman-bench")
            opts = f"--endpoint-url {endpoint} s3://barman-bench/barman bench"
            out.append(("barman-cloud --zstd, S3 (moto, loopback)",
                        f"{barman} --zstd {opts} %p", f"{barman.parent}/barman-cloud-wal-restore {opts} %f %p",
                        None, env))
        else:
            print("barman-cloud not installed (python3 -m venv /opt/barman-venv && "
                  "/opt/barman-venv/bin/pip install 'barman[cloud]'): skipped", flush=True)
        return out

    def pitr(self) -> None:
        """Replay everything after the base backup, from the cp archive and from walkeeper (defaults)."""
        from tests.helpers.pgharness import WALKEEPER_BIN

        rest = [n for n in self.all_names if n not in self.names]
        arch = self.work / "cp-archive"
        default = self.work / "wk-default.toml"
        for cmd in (f"test ! -f {arch}/%f && cp %p {arch}/%f", f"{WALKEEPER_BIN} --config {default} wal-push %p"):
            self.call_driver({"action": "archive", "datadir": str(self.src.datadir), "names": rest, "cmd": cmd})
        self.pitr_rows = []
        for label, cmd in (("cp archive", f"cp {arch}/%f %p"),
                           ("walkeeper defaults", f"{WALKEEPER_BIN} --config {default} wal-fetch %f %p")):
            target = self.h.Cluster.from_backup(self.backup, self.work / f"pitr-{len(self.pitr_rows)}", cmd,
                                                {"fsync": "off", "recovery_target_action": "promote"})
            t0 = time.perf_counter()
            target.start(wait=False)
            deadline = time.time() + 1800
            while time.time() < deadline:
                if not (target.datadir / "recovery.signal").exists() and \
                        target.psql("select pg_is_in_recovery()", check=False) == "f":
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            got = target.psql("select sum(delta), count(*) from pgbench_history")
            replayed = target.log().count("restored log file")
            target.stop()
            if got != self.expected:
                raise SystemExit(f"PITR from {label} ended with {got}, expected {self.expected}")
            self.pitr_rows.append((label, elapsed, replayed))
            shutil.rmtree(target.datadir, ignore_errors=True)

    def report(self) -> None:
        load = os.getloadavg()
        lines = [f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at "
                 f"the end; {len(self.names)} segments of 16 MiB pgbench WAL per tool; one call per segment, "
                 "serially, as postgres", "",
                 "| tool | direction | seg/s | MiB/s | p50 ms/call | max ms/call | CPU s (calls) | peak RSS MiB "
                 "| ratio |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in self.rows:
            for direction in ("archive", "restore"):
                data = row[direction]
                if data is None:
                    continue
                calls = data["calls"]
                walls = [c[0] for c in calls]
                total = data["total"]
                n = len(calls)
                ratio = f"{row['ratio']:.2f}" if row["ratio"] and direction == "archive" else ""
                lines.append(
                    f"| {row['label']} | {direction} | {n / total:.1f} | {n * 16 / total:.0f} | "
                    f"{statistics.median(walls) * 1000:.0f} | {max(walls) * 1000:.0f} | "
                    f"{sum(c[1] for c in calls):.2f} | {max(c[2] for c in calls) / 1024:.0f} | {ratio} |")
        helpers = [(row["label"], row["helpers"]) for row in self.rows if row["helpers"]]
        if helpers:
            lines += ["", "| walkeeper's detached helpers | pusher peak RSS MiB | pusher CPU s "
                      "| prefetcher peak RSS MiB | prefetcher CPU s |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {label} | {text} |" for label, text in helpers]
        servers = [(row["label"], row["server"]) for row in self.rows if row["server"]]
        if servers:
            lines += ["", "| S3 server (moto) CPU, same machine | archive s | restore s | per segment ms |",
                      "|---|---:|---:|---:|"]
            n = len(self.names)
            lines += [f"| {label} | {a:.2f} | {r:.2f} | {a / n * 1000:.0f} + {r / n * 1000:.0f} |"
                      for label, (a, r) in servers]
        if getattr(self, "pitr_rows", None):
            lines += ["", "| PITR replay from a base backup | segments restored | seconds | vs cp |",
                      "|---|---:|---:|---:|"]
            base = self.pitr_rows[0][1]
            for label, elapsed, replayed in self.pitr_rows:
                lines.append(f"| {label} | {replayed} | {elapsed:.1f} | {elapsed / base:.2f} |")
        print("\n".join(lines))


if __name__ == "__main__":
    main()

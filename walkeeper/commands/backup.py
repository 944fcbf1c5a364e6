"""`walkeeper backup`: pg_basebackup's tar streamed through the codec into the repository.

Backup: ``pg_basebackup -D - -Ft`` writes the one tar of a cluster without tablespaces to stdout;
we pass it through a streaming tar reader (to pick ``backup_label``, ``backup_manifest`` and
``global/pg_control`` out of it on the way) into the encoder and the storage, in chunks: memory
stays bounded whatever the size of the database. With tablespaces pg_basebackup cannot stream,
so it writes its tars into a temporary directory which is then stored tar by tar.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from walkeeper import __version__
from walkeeper.codec import Encoder
from walkeeper.core.config import Config
from walkeeper.core.errors import (
    AlreadyExists,
    ConfigError,
    ForeignClusterError,
    NotFound,
    PostgresError,
    RefusedError,
    WalkeeperError,
)
from walkeeper.core.progress import Progress
from walkeeper.core.units import human_bytes, iso_time, plural, utc_now
from walkeeper.core.wal import format_lsn, parse_wal_name, segment_of_lsn
from walkeeper.postgres.basebackup import collect_facts, scan_tar
from walkeeper.postgres.client import (
    ConnOptions,
    ServerInfo,
    ToolProcess,
    pg_tool,
    server_info,
    server_next_xid,
    warn_clock_skew,
)
from walkeeper.postgres.incremental import check_incremental_server, explain_failure, parent_manifest
from walkeeper.repo.catalog import BackupMeta, BackupObject, Catalog
from walkeeper.repo.chains import FULL, INCREMENTAL, chain_length, chain_of, choose_parent, parent_map
from walkeeper.repo.layout import BACKUP_META, BACKUP_PREFIX, backup_key, wal_key
from walkeeper.repo.repository import Repository, open_repository
from walkeeper.repo.writers import Reservation, confirm_published, sweep_leftovers

log = logging.getLogger(__name__)

# -- taking a backup -----------------------------------------------------------------------------

@dataclass(frozen=True)
class BackupOptions:
    conn: ConnOptions = field(default_factory=ConnOptions)
    label: str | None = None
    fast_checkpoint: bool = False
    wal: str = "archive"  # or "include"
    progress: bool | None = None  # None: on a terminal only
    wal_wait_timeout: float | None = None
    incremental: bool = False  # PostgreSQL 17+: only the blocks changed since the parent (WAL summaries)
    parent: str | None = None  # --from: the parent of an incremental backup (default: walkeeper.repo.chains)


def _store_tar(repo: Repository, held: Reservation, tar_name: str, chunks: Iterable[bytes],
               progress: Progress, workers: int = 1) -> tuple[str, int, int, str]:
    key = backup_key(held.backup_id, tar_name)
    encoder = Encoder(repo.codec, key, extra={"backup": held.backup_id}, workers=workers)

    def counted() -> Iterator[bytes]:
        for chunk in chunks:
            progress.add(len(chunk))
            yield chunk

    held.put(key, encoder.encode_chunks(counted()), overwrite=False)
    return key, encoder.plain_size, encoder.stored_size, encoder.sha256


def take_backup(config: Config, options: BackupOptions) -> BackupMeta:
    repo = open_repository(config)
    catalog = Catalog(repo)
    info = server_info(config, options.conn)
    meta = repo.meta()
    if meta is not None and meta.system_identifier not in (None, info.system_identifier):
        raise ForeignClusterError(
            f"the server is database system {info.system_identifier}, but repository {repo.storage.url} "
            f"belongs to system {meta.system_identifier}; refusing to store another cluster's backup",
            hint="give each cluster its own repository",
        )
    repo.ensure_identity(int(info.system_identifier), info.segment_size, info.version_num // 10000)
    if options.wal not in ("archive", "include"):
        raise ConfigError(f"--wal must be archive or include, not {options.wal!r}")
    warn_clock_skew(info.clock_skew)
    parent: BackupMeta | None = None
    if options.incremental:
        parent, manifest = _choose_parent(config, options, info, catalog)
    elif options.parent is not None:
        raise ConfigError("--from names the parent of an incremental backup: give --incremental too")

    basebackup = pg_tool(config, "pg_basebackup", info.version_num // 10000)
    started = utc_now()
    # The id is reserved (no-clobber marker) before anything else is written: see repo/writers.py.
    held = Reservation.take(catalog, started.strftime("%Y%m%dT%H%M%SZ"))
    backup_id = held.backup_id
    label = options.label or f"walkeeper {backup_id}"
    cmd = [basebackup, *options.conn.args(), "-Ft", "-v", "-l", label,
           "-X", "fetch" if options.wal == "include" else "none"]
    if options.fast_checkpoint:
        cmd += ["-c", "fast"]
    manifest_file = None
    if parent is not None:
        manifest_file = tempfile.NamedTemporaryFile(prefix="walkeeper-parent-manifest-")  # noqa: SIM115
        manifest_file.write(manifest)
        manifest_file.flush()
        cmd += [f"--incremental={manifest_file.name}"]
    progress = Progress(f"backup {backup_id}", info.size_estimate or None, enabled=options.progress)
    captured: dict[str, bytes] = {}
    objects: list[BackupObject] = []
    stderr = ""
    try:
        held.start_heartbeat()
        _sweep_leftovers(repo, backup_id)
        if info.tablespaces == 0:
            proc = ToolProcess([*cmd, "-D", "-"])
            try:
                assert proc.proc.stdout is not None
                stdout = proc.proc.stdout

                def chunks() -> Iterator[bytes]:
                    yield from scan_tar(stdout.read, captured)
                    proc.wait()  # a failed pg_basebackup must fail the put, not store a short tar

                key, plain, stored, sha = _store_tar(repo, held, "base.tar", chunks(), progress,
                                                     config.backup.workers)
                objects.append(BackupObject(key, "base.tar", None, None, plain, stored, sha))
            except PostgresError as exc:
                raise explain_failure(exc, parent) if parent is not None else exc from None
            finally:
                proc.kill()
                if manifest_file is not None:
                    manifest_file.close()
            stderr = proc.stderr
        else:
            print(f"the cluster has {plural(info.tablespaces, 'tablespace')}: pg_basebackup cannot stream them; "
                  "staging the tars in a temporary directory first", file=sys.stderr)
            with tempfile.TemporaryDirectory(prefix="walkeeper-backup-") as tmp:
                proc = ToolProcess([*cmd, "-D", tmp])
                proc.wait()
                stderr = proc.stderr
                tars = sorted(Path(tmp).glob("*.tar"), key=lambda p: (p.name != "base.tar", p.name))
                for path in tars:
                    with open(path, "rb") as handle:
                        key, plain, stored, sha = _store_tar(
                            repo, held, path.name, scan_tar(handle.read, captured if path.name == "base.tar"
                                                                 else {}), progress, config.backup.workers)
                    oid = None if path.name == "base.tar" else path.stem
                    objects.append(BackupObject(key, path.name, oid, None, plain, stored, sha))
                    path.unlink()
                manifest = Path(tmp) / "backup_manifest"
                if manifest.exists():
                    captured["backup_manifest"] = manifest.read_bytes()
        progress.finish()
        stopped = utc_now()  # pg_basebackup has returned: the backup ended (WAL may still be in flight)
        stop_next_xid = server_next_xid(config, options.conn, info)
        facts = collect_facts(captured, stderr)
        if str(facts.system_identifier) != info.system_identifier:
            raise ForeignClusterError(
                f"the backup's pg_control says system {facts.system_identifier}, the server said "
                f"{info.system_identifier}")
        locations = {t["oid"]: t["location"] for t in facts.tablespaces}
        objects = [BackupObject(o.key, o.tar, o.tablespace_oid, locations.get(o.tablespace_oid or ""),
                                o.plain_size, o.stored_size, o.sha256) for o in objects]
        manifest_key = manifest_sha = None
        if "backup_manifest" in captured:  # alone too: the next incremental reads it without the whole backup
            manifest_key, manifest_sha = catalog.save_manifest(
                backup_id, captured["backup_manifest"], lambda key, blob: held.put(key, blob, overwrite=False))
        seg = info.segment_size
        start_wal = segment_of_lsn(facts.timeline, facts.start_lsn, seg)
        stop_wal = segment_of_lsn(facts.stop_timeline, max(facts.stop_lsn - 1, facts.start_lsn), seg)
        if options.wal == "archive":
            timeout = options.wal_wait_timeout if options.wal_wait_timeout is not None \
                else config.backup.wal_wait_timeout
            wait_for_wal(repo, stop_wal, timeout)
        backup = BackupMeta(
            id=backup_id, label=label, start_lsn=format_lsn(facts.start_lsn), stop_lsn=format_lsn(facts.stop_lsn),
            start_wal=start_wal, stop_wal=stop_wal, timeline=facts.timeline, stop_timeline=facts.stop_timeline,
            start_time=iso_time(started), stop_time=iso_time(stopped), pg_version=info.version_num,
            system_identifier=info.system_identifier, wal_segment_size=seg, wal_mode=options.wal,
            plain_size=sum(o.plain_size for o in objects), stored_size=sum(o.stored_size for o in objects),
            objects=objects, tablespaces=facts.tablespaces,
            checkpoint_lsn=format_lsn(facts.checkpoint_lsn) if facts.checkpoint_lsn is not None else None,
            checkpoint_next_xid=facts.checkpoint_next_xid, stop_next_xid=stop_next_xid,
            host=socket.gethostname(), walkeeper_version=__version__, clock_skew=info.clock_skew,
            type=INCREMENTAL if parent is not None else FULL, parent=parent.id if parent is not None else None,
            manifest_key=manifest_key, manifest_sha256=manifest_sha,
        )
        held.stop_heartbeat()  # no write into the backup's directory after this but its metadata
        with held.writing(backup_key(backup_id, BACKUP_META)):
            try:
                catalog.save_backup(backup)  # last: only now is the backup listed and usable
            except AlreadyExists:  # an earlier attempt whose answer was lost stored it already?
                if catalog.backup(backup_id) != backup:
                    raise
        confirm_published(catalog, backup, held)  # "done" only for a backup a restore can read
        return backup
    except BaseException:
        with contextlib.suppress(Exception):
            held.abandon()  # only what this backup wrote, then its marker
        raise


def _choose_parent(config: Config, options: BackupOptions, info: ServerInfo, catalog: Catalog
                   ) -> tuple[BackupMeta, bytes]:
    """Refuse what cannot work (walkeeper.postgres.incremental), then the parent and its backup_manifest."""
    timeline = check_incremental_server(config, options.conn, info)
    backups = catalog.backups()
    choice = choose_parent(backups, system_identifier=info.system_identifier, timeline=timeline,
                           from_id=options.parent, systems={b.id: b.system_identifier for b in backups})
    parent = next(b for b in backups if b.id == choice.parent_id)
    length = chain_length(parent.id, parent_map(backups))
    if length is None:
        chain_of(parent, backups)  # raises BrokenChain: says which member is missing
    elif length + 1 > config.backup.max_chain:
        log.warning("the chain of this backup will be %d backups long, more than [backup] max_chain (%d): a "
                    "restore needs every one of them; take a full backup soon", length + 1, config.backup.max_chain)
    log.info("incremental backup against %s (%s)", parent.id, choice.reason)
    return parent, parent_manifest(catalog, parent)


def _sweep_leftovers(repo: Repository, backup_id: str) -> None:
    """Temp objects, uploads and empty directories of dead backups go (expire does it too)."""
    try:
        gone = sweep_leftovers(repo.storage, list(repo.storage.list(BACKUP_PREFIX)), keep=backup_id)
    except WalkeeperError as exc:
        log.warning("could not remove leftovers of dead backups: %s", exc)
        return
    if gone:
        log.info("removed %d leftover(s) of dead backups (%s)", len(gone),
                 human_bytes(sum(item.size for item in gone)))


def wait_for_wal(repo: Repository, segment: str, timeout: float) -> None:
    """Wait until ``segment`` is in the repository: a backup is useless without its WAL."""
    key = wal_key(parse_wal_name(segment))
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        try:
            repo.storage.stat(key)
            return
        except NotFound:
            pass
        if time.monotonic() >= deadline:
            raise RefusedError(
                f"the backup's last WAL segment {segment} did not reach the repository within {timeout:.0f}s; "
                "the backup was not recorded (it would not be restorable)",
                hint="check archive_command and pg_stat_archiver on the server, raise [backup] wal_wait_timeout, "
                     "or use --wal include for a self-contained backup",
            )
        if not announced:
            log.warning("waiting for %s to be archived (up to %.0fs)", segment, timeout)
            announced = True
        time.sleep(0.5)

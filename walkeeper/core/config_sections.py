"""The configuration's sections: one frozen dataclass per TOML table, with each setting's default and why.

walkeeper.core.config builds them (file < environment < flags); README "Configuration" lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from walkeeper.core.configbase import PREFETCH, PUSH_AHEAD


@dataclass(frozen=True)
class CompressionConfig:
    method: str = "zstd"
    level: int = 1  # measured (README "Speed"): same ratio as 3 on pgbench WAL, ~15% less CPU per segment
    threads: int = 0


@dataclass(frozen=True)
class EncryptionConfig:
    method: str = "aes-256-gcm"
    key_file: str | None = None
    key_files: list | None = None  # several keys: the first writes, all read (README "Keys")
    key_command: str | None = None  # /bin/sh -c COMMAND prints the key (Vault, KMS, token); run once per process
    key_command_timeout: float = 10.0


@dataclass(frozen=True)
class RetryConfig:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0


@dataclass(frozen=True)
class S3Config:
    """[s3]: used when repo = "s3://bucket/prefix". Credentials come from boto3's standard chain."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    addressing_style: str = "auto"
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    multipart_chunk_size: int = 16 * 1024 * 1024  # streams larger than one chunk go up as multipart
    max_concurrency: int = 4  # parts in flight at once (memory ~ (max_concurrency + 1) * chunk size)
    conditional_writes: bool = True  # If-None-Match: *; false for stores without it (then HEAD, best effort)


@dataclass(frozen=True)
class SshConfig:
    """[ssh]: used when repo = "ssh://user@host[:port]/path" (rsync over ssh)."""

    identity_file: str | None = None
    known_hosts_file: str | None = None
    strict_host_key_checking: bool = True
    connect_timeout: int = 10
    io_timeout: int = 60  # seconds without progress before a transfer counts as failed (transient)
    control_persist: int = 10  # seconds the shared ssh connection outlives its last use


@dataclass(frozen=True)
class ArchiveConfig:
    """[archive]: wal-push behaviour (push-ahead: README "Speed")."""

    push_ahead: int = PUSH_AHEAD  # .ready segments the background pusher stores ahead of PostgreSQL's calls (0 = off)
    workers: int = 2  # segments the pusher compresses/encrypts/stores in parallel
    status_dir: str | None = None  # records of pushed-ahead segments; default under /var/tmp/walkeeper-<uid>
    idle_timeout: float = 10.0  # the pusher exits after this many seconds with nothing to push
    self_check: bool = False  # decode each object and compare it with the file before storing it (~25 ms/segment)
    # Several repositories (README "Several repositories"): "all" = exit 0 once every repository holds the file;
    # "any" = once one does, the others recorded as behind and caught up in WAL order.
    require: str = "all"
    catch_up_interval: float = 10.0  # seconds a repository that failed is left alone before the next try


@dataclass(frozen=True)
class RestoreConfig:
    """[restore]: wal-fetch behaviour (prefetch: README "Speed")."""

    prefetch: int = PREFETCH  # segments the background prefetcher keeps ready ahead of recovery (0 = off)
    spool_dir: str | None = None  # default under /var/tmp/walkeeper-<uid>, outside the data directory
    workers: int = 2  # parallel downloads/decodes of the prefetcher
    spool_max_mb: int = 1024  # upper bound of the spool's size, whatever prefetch says
    idle_timeout: float = 60.0  # the prefetcher exits after this many seconds without a request
    gap_wait: float = 10.0  # a missing segment with later ones stored: wait this long for it before "gap"


@dataclass(frozen=True)
class ReceiveConfig:
    """[receive]: wal-receive, the pg_receivewal service (README "Streaming WAL into the repository")."""

    slot: str = "walkeeper"  # the physical replication slot pg_receivewal streams from
    synchronous: bool = False  # pg_receivewal --synchronous: flush and report at once (synchronous_standby_names)
    partial_interval: float = 10.0  # seconds between uploads of the segment being received (the recovery point)
    spool_dir: str | None = None  # pg_receivewal's directory; default under /var/tmp/walkeeper-<uid>
    restart_max_delay: float = 60.0  # pg_receivewal is restarted after a failure, waiting up to this long


@dataclass(frozen=True)
class BackupConfig:
    """[backup]: base backups."""

    pg_bin_dir: str | None = None
    wal_wait_timeout: float = 300.0
    # threads compressing/encrypting a backup and decoding one on restore; 1 = one thread, as before
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_chain: int = 8  # `check` warns when a restore needs more backups than this (a full + incrementals)


@dataclass(frozen=True)
class DumpRetentionConfig:
    """[retention.dumps]: what `walkeeper expire` keeps of logical dumps (no rule: dumps are not expired)."""

    keep: int | None = None  # the newest N complete dumps
    keep_days: float | None = None  # every dump of the last D days
    keep_daily: int | None = None  # grandfather-father-son: the newest dump of each of the last N days ...
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None


@dataclass(frozen=True)
class RetentionConfig:
    """[retention]: what `walkeeper expire` keeps (several set: a backup kept by any rule stays)."""

    keep: int | None = None  # the newest N complete backups
    keep_days: float | None = None  # a recovery window: any moment of the last D days stays recoverable
    keep_daily: int | None = None  # grandfather-father-son: the newest backup of each of the last N days ...
    keep_weekly: int | None = None  # ... ISO weeks
    keep_monthly: int | None = None  # ... months
    keep_yearly: int | None = None  # ... years
    time_zone: str | None = None  # IANA name the periods are counted in (default: this host's local zone)
    dumps: DumpRetentionConfig = field(default_factory=DumpRetentionConfig)


@dataclass(frozen=True)
class NotifyConfig:
    """[notify]: a command run after a failure of wal-push, wal-fetch (not "not found"), backup, expire."""

    on_failure: str | None = None  # run with /bin/sh -c; WALKEEPER_EVENT, _OBJECT, _ERROR in its environment
    timeout: float = 10.0  # seconds before the command is killed: it never holds up the archive for long
    min_interval: float = 3600.0  # seconds between two notifications of the same event
    state_file: str | None = None  # last send time per event (default ~/.cache/walkeeper/notify-state.json)

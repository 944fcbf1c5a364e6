"""The few settings the fast paths read, exactly as walkeeper.core.config reads them, without tomllib when cached.

Standard library only, and nothing costly (no json, no re): imported by every archive_command and
restore_command call. Anything unusual raises, and the caller then takes the full path, which reports it.
"""

# ruff: noqa: SIM105  - try/except/pass instead of contextlib.suppress (import cost)

from __future__ import annotations

import os

from walkeeper.accel.state import RECORD_VERSION, read_record, sha256_hex, state_root, write_record
from walkeeper.core.configbase import CONFIG_ENV, PREFETCH, PUSH_AHEAD, REPO_ENV, config_dir, env_name, resolve_path

_GLOBAL_FLAGS = {"-v", "-vv", "-vvv", "--verbose"}


class FastSettings:
    def __init__(self) -> None:
        self.repo = ""
        self.push_ahead = PUSH_AHEAD
        self.status_dir: str | None = None
        self.prefetch = PREFETCH
        self.spool_dir: str | None = None
        self.verbose = 0
        self.wait_timeout = 30.0  # longest wait for a segment the prefetcher is fetching


def _coerce_int(value: object) -> int:
    if type(value) is not int:  # walkeeper.core.config refuses anything else: let the full path say so
        raise ValueError(value)
    return value


def parse_global_args(argv: list[str], command: str) -> tuple[str | None, str | None, int, list[str]] | None:
    """(config path, repo, verbosity, command arguments) for ``walkeeper [opts] COMMAND ARGS``, or None."""
    config = repo = None
    verbose = 0
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == command:
            return config, repo, verbose, argv[i + 1:]
        if arg in _GLOBAL_FLAGS:
            verbose += arg.count("v") if arg.startswith("-v") else 1
        elif arg in ("--config", "--repo") and i + 1 < len(argv):
            if arg == "--config":
                config = argv[i + 1]
            else:
                repo = argv[i + 1]
            i += 1
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("--repo="):
            repo = arg.split("=", 1)[1]
        else:
            return None
        i += 1
    return None


def _read_config_file(path: str) -> dict[str, str]:
    """The few fast-path values of a config file, through a cache keyed on the file's identity.

    tomllib costs ~7 ms to import; the cache (a record in the private state root) is rewritten
    whenever the file's inode, size, mtime or ctime change. Relative paths are resolved as
    walkeeper.core.config resolves them (walkeeper.core.configbase: against the real file's directory).
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    cache = os.path.join(state_root(), f"config-{sha256_hex(real.encode())[:16]}")
    cached = read_record(cache)
    if cached and cached.get("path") == real and cached.get("ident") == ident:
        return cached
    import tomllib

    with open(real, "rb") as handle:
        data = tomllib.load(handle)
    base = config_dir(real)
    archive = data.get("archive", {})
    restore = data.get("restore", {})
    repo = data.get("repo", "")
    if not isinstance(repo, str):
        raise ValueError("repo")
    values: dict[str, str] = {"repo": repo}
    if "push_ahead" in archive:
        values["push_ahead"] = str(_coerce_int(archive["push_ahead"]))
    if "prefetch" in restore:
        values["prefetch"] = str(_coerce_int(restore["prefetch"]))
    for table, key in ((archive, "status_dir"), (restore, "spool_dir")):
        value = table.get(key)
        if value:
            values[key] = resolve_path(value, base)
    try:
        # Synced: a torn cache could read as a valid record that lacks a setting (written once per change).
        write_record(cache, {"v": RECORD_VERSION, "path": real, "ident": ident, **values})
    except (OSError, ValueError):
        pass  # not cacheable (a value with a newline): read the file next time too
    return values


def load_settings(config_path: str | None, repo_flag: str | None, env: dict[str, str] | os._Environ[str]
                  ) -> FastSettings:
    """The fast-path settings; raises on anything unusual (the caller then takes the full path)."""
    s = FastSettings()
    path = config_path or env.get(CONFIG_ENV) or None
    if path:
        values = _read_config_file(path)
        s.repo = values.get("repo", "")
        s.push_ahead = int(values.get("push_ahead", s.push_ahead))
        s.prefetch = int(values.get("prefetch", s.prefetch))
        s.status_dir = values.get("status_dir")
        s.spool_dir = values.get("spool_dir")
    for attr, section, key in (("push_ahead", "archive", "push_ahead"), ("prefetch", "restore", "prefetch")):
        if env_name(section, key) in env:
            setattr(s, attr, int(env[env_name(section, key)]))
    for attr, section in (("status_dir", "archive"), ("spool_dir", "restore")):
        if env_name(section, attr) in env:
            setattr(s, attr, env[env_name(section, attr)] or None)
    if env.get(REPO_ENV):
        s.repo = env[REPO_ENV]
    if repo_flag:
        s.repo = repo_flag
    if not isinstance(s.repo, str) or not s.repo:
        raise ValueError("no repository")
    return s

"""The few settings the fast paths read, exactly as walkeeper.core.config reads them, without tomllib when cached.

Standard library only, and nothing costly (no json, no re): imported by every archive_command and
restore_command call. Anything unusual raises, and the caller then takes the full path, which reports it.
"""

# ruff: noqa: SIM105  - try/except/pass instead of contextlib.suppress (import cost)

from __future__ import annotations

import os

from walkeeper.accel.state import RECORD_VERSION, read_record, sha256_hex, state_root, write_record
from walkeeper.core.configbase import (
    CONFIG_ENV,
    PREFETCH,
    PUSH_AHEAD,
    REPO_ENV,
    config_dir,
    env_name,
    push_identity,
    repositories_identity,
    resolve_path,
)

_GLOBAL_FLAGS = {"-v", "-vv", "-vvv", "--verbose"}


class FastSettings:
    def __init__(self) -> None:
        self.repo = ""  # what wal-push stores into (configbase.push_identity): keys status dirs and records
        self.fetch_repo = ""  # what wal-fetch reads, in order (configbase.repositories_identity): keys the spool
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
    tables = data.get("repository")
    if tables is not None:  # [[repository]]: name=URL pairs, tab-separated (checked fully by the full path)
        if repo or not isinstance(tables, list) or not tables:
            raise ValueError("repository")
        pairs = []
        for table in tables:
            if not isinstance(table, dict):
                raise ValueError("repository")
            name, url = table.get("name"), table.get("repo")
            if not isinstance(name, str) or not isinstance(url, str) or not name or not url or any(
                    c in name + url for c in "\t\n") or "=" in name:
                raise ValueError("repository")
            pairs.append(f"{name}={url}")
        values["repositories"] = "\t".join(pairs)
    if "require" in archive:
        values["require"] = _require(archive["require"])
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
    values: dict[str, str] = {}
    if path:
        values = _read_config_file(path)
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
    require = _require(env[env_name("archive", "require")] if env_name("archive", "require") in env
                       else values.get("require", "all"))
    pairs = [(p.split("=", 1)[0], p.split("=", 1)[1]) for p in values["repositories"].split("\t")] \
        if values.get("repositories") else [("default", values.get("repo", ""))]
    # --repo (else WALKEEPER_REPO), as walkeeper.core.config.load_config reads it: a configured name selects
    # that repository (wal-push stores into it alone; wal-fetch reads it first), anything else is a URL.
    choice = repo_flag or env.get(REPO_ENV) or None
    names = [p[0] for p in pairs]
    if choice and values.get("repositories") and choice in names:
        chosen = pairs[names.index(choice)]
        push, fetch = [chosen], [chosen, *(p for p in pairs if p != chosen)]
    else:
        push = fetch = [("default", choice)] if choice else pairs
    if not all(url for _name, url in push):
        raise ValueError("no repository")
    s.repo = push_identity(push, require)
    s.fetch_repo = repositories_identity(fetch)
    return s


def _require(value: object) -> str:
    if value not in ("all", "any"):  # walkeeper.core.config refuses it: let the full path say so
        raise ValueError("require")
    return str(value)

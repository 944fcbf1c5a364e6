"""Shared fixtures: a repository + key + config owned by the postgres user, and a walkeeper runner."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.pgharness import (
    PG_BIN,
    PG_MAJORS,
    WALKEEPER_BIN,
    as_pg,
    give_to_pg,
    pg_workdir,
    running_as_root,
)
from tests.helpers.servers import s3_server, ssh_server  # noqa: F401 - session fixtures for remote backends


@dataclass
class Setup:
    """A test's world: work directory, repository, key file and config file, all postgres-owned."""

    work: Path
    repo: Path
    key_file: Path
    config: Path
    backend: str = "local"
    repo_url: str = ""  # the URL written as repo = ...; the local path unless a remote backend is used
    extra_config: str = ""  # extra TOML tables for the backend ([s3], [ssh])
    pg: Path = PG_BIN  # the PostgreSQL major's programs the test's clusters run (Cluster(bin_dir=setup.pg))
    # [backup] pg_bin_dir written into the config: set by use_pg (the pg_major fixture does it) for
    # a major other than Debian's 15, which walkeeper finds by itself.
    pg_bin_dir: Path | None = None

    def use_pg(self, bin_dir: Path) -> Setup:
        """Run clusters of one major and point walkeeper at its tools ([backup] pg_bin_dir) unless it finds them."""
        self.pg = Path(bin_dir)
        self.pg_bin_dir = None if self.pg == PG_BIN else self.pg
        self.write_config()
        return self

    def write_config(self, text: str | None = None) -> Path:
        body = text if text is not None else (
            f'repo = "{self.repo_url or self.repo}"\n[compression]\nmethod = "zstd"\nlevel = 3\n'
            f'[encryption]\nmethod = "aes-256-gcm"\nkey_file = "{self.key_file}"\n{self.extra_config}'
            + (f'[backup]\npg_bin_dir = "{self.pg_bin_dir}"\n' if self.pg_bin_dir else "")
        )
        self.config.write_text(body)
        give_to_pg(self.config)
        return self.config

    def wk(self, *args: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None,
           env: dict[str, str] | None = None, as_postgres: bool = True, config: bool = True,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the installed walkeeper exactly as PostgreSQL would (a separate process, as postgres)."""
        cmd = [str(WALKEEPER_BIN)]
        if config:
            cmd += ["--config", str(self.config)]
        cmd += [str(a) for a in args]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("WALKEEPER_")}
        full_env.update(env or {})
        if as_postgres:
            cmd = as_pg(cmd)
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout)


def make_key(path: Path) -> Path:
    proc = subprocess.run([str(WALKEEPER_BIN), "key", "generate"], capture_output=True, text=True, check=True)
    path.write_text(proc.stdout)
    path.chmod(0o600)
    give_to_pg(path)
    return path


@pytest.fixture
def setup() -> Iterator[Setup]:
    work = pg_workdir()
    s = Setup(work=work, repo=work / "repo", key_file=make_key(work / "key"), config=work / "walkeeper.toml")
    s.write_config()
    yield s
    shutil.rmtree(work, ignore_errors=True)


BACKENDS = ["local", "s3", "ssh"]  # servers for s3 and ssh: tests/helpers/servers.py


@pytest.fixture(params=BACKENDS)
def backend_setup(request: pytest.FixtureRequest, setup: Setup) -> Setup:
    """The same world with the repository on each storage backend in turn (for end-to-end stories).

    s3: a fresh prefix in a moto server's bucket; the dummy AWS credentials are in os.environ, so
    walkeeper subprocesses and PostgreSQL (started by pg_ctl) see them. ssh: a fresh directory on a
    loopback sshd, logged into as postgres with a postgres-owned key and known_hosts.
    """
    setup.backend = request.param
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        setup.repo_url, setup.extra_config = s3.url(), s3.config_toml()
    elif request.param == "ssh":
        ssh = request.getfixturevalue("ssh_server")
        setup.repo_url, setup.extra_config = ssh.url(), ssh.config_toml()
    setup.write_config()
    return setup


PG18_MISSING = "PostgreSQL 18 not installed: WALKEEPER_PG18_BIN is unset (scripts/setup-env.sh installs it)"
MAJORS = ["15", "18"]


def major_param(major: str, *values: object) -> object:
    """pytest.param of ``values`` plus ``major`` with the pgNN mark and id, for an indirect pg_major parametrize."""
    mark = getattr(pytest.mark, f"pg{major}")
    return pytest.param(*values, major, marks=mark, id="-".join([*map(str, values), f"pg{major}"]))


def backends_by_major(pairs: list[tuple[str, str]]) -> pytest.MarkDecorator:
    """Parametrize backend_setup and pg_major together over chosen (backend, major) pairs: a story
    proven on every backend with 15 need not repeat each backend on 18."""
    return pytest.mark.parametrize(("backend_setup", "pg_major"), [major_param(m, b) for b, m in pairs],
                                   indirect=True)


@pytest.fixture(params=[major_param(m) for m in MAJORS])
def pg_major(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The bin directory of each PostgreSQL major in turn (Cluster(..., bin_dir=pg_major)).

    A test that also uses ``setup`` (or backend_setup) gets its walkeeper config pointed at the same
    major's tools. Select one major with ``-m pg15`` / ``-m pg18`` or ``-k pg18``.
    """
    bin_dir = PG_MAJORS.get(request.param)
    if bin_dir is None:
        pytest.skip(PG18_MISSING)
    if "setup" in request.fixturenames:
        request.getfixturevalue("setup").use_pg(bin_dir)
    yield bin_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = []
    if not (PG_BIN / "postgres").exists():
        problems.append(f"PostgreSQL server binaries not found in {PG_BIN}")
    if not WALKEEPER_BIN.exists():
        problems.append(f"walkeeper is not installed at {WALKEEPER_BIN}")
    elif running_as_root():
        probe = subprocess.run(as_pg([str(WALKEEPER_BIN), "--version"]), capture_output=True, text=True)
        if probe.returncode != 0:
            problems.append(f"the postgres user cannot run {WALKEEPER_BIN}: {probe.stderr.strip()}")
    if problems and any("postgres" in item.keywords for item in items):
        # Fail loudly: a skipped integration test would hide exactly what we must prove.
        raise pytest.UsageError("cannot run the PostgreSQL tests: " + "; ".join(problems))

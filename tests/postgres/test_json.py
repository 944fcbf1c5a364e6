"""Every --json output, from a real server's archive: times are ISO 8601 UTC, shapes as docs/json.md says."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest

from tests.conftest import Setup
from tests.helpers.pgharness import give_to_pg
from tests.postgres.test_operate_pg import libpq_env
from tests.postgres.test_pitr import archive_everything, conn, ok, server_time, start_primary
from walkeeper.cli.main import cli

TIME_KEY = re.compile(r"(^|_)(time|at)$|arrival$|^archived$|^last_failure$")
LOOKS_LIKE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "json.md"


def json_commands() -> set[str]:
    """Every command path that has a --json option (so that a new one cannot be left out below)."""
    found: set[str] = set()

    def walk(command: click.Command, path: str) -> None:
        if any("--json" in getattr(p, "opts", []) for p in command.params):
            found.add(path)
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())

    walk(cli, "")
    return found


def is_iso_utc(text: str) -> bool:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return False
    return "T" in text and moment.utcoffset() == timedelta(0)


def time_problems(doc: Any, where: str = "$") -> list[str]:
    """Time-like fields (by name, or by a value that looks like a date) that are not ISO 8601 UTC."""
    problems = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            here = f"{where}.{key}"
            if TIME_KEY.search(key) and value is not None and not (isinstance(value, str) and is_iso_utc(value)):
                problems.append(f"{here} = {value!r}")
            else:
                problems += time_problems(value, here)
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            problems += time_problems(value, f"{where}[{i}]")
    elif isinstance(doc, str) and LOOKS_LIKE_TIME.match(doc) and not is_iso_utc(doc):
        problems.append(f"{where} = {doc!r}")
    return problems


@pytest.mark.parametrize(("doc", "bad"), [
    ({"stop_time": "2026-01-01T00:00:00.000000+00:00"}, []),
    ({"stop_time": 1767225600.0}, ["$.stop_time"]),
    ({"archived": "2026-01-01 00:00:00+00"}, ["$.archived"]),
    ({"x": [{"time": "2026-01-01T01:00:00+01:00"}]}, ["$.x[0].time"]),
    ({"note": "2026-01-01 10:00:00+02"}, ["$.note"]),
    ({"last_failure": None, "label": "walkeeper 20260101T000000Z"}, []),
])
def test_time_problems_finds_what_it_should(doc: dict[str, Any], bad: list[str]) -> None:
    assert [p.split(" = ")[0] for p in time_problems(doc)] == bad


@pytest.mark.postgres
def test_every_json_output_uses_iso_utc_times(setup: Setup) -> None:
    state = setup.work / "notify-state.json"
    setup.write_config(setup.config.read_text() + f'[notify]\nstate_file = "{state}"\n')
    primary = start_primary(setup)
    outputs: dict[str, Any] = {}
    try:
        archive_everything(primary)
        outputs["backup"] = json.loads(ok(setup.wk("backup", *conn(primary), "--fast-checkpoint", "--json")).stdout)
        outputs["dump"] = json.loads(ok(setup.wk("dump", *conn(primary), "-d", "postgres", "--json")).stdout)
        outputs["dumpall"] = json.loads(ok(setup.wk("dumpall", *conn(primary), "--json")).stdout)
        primary.psql("create table t as select 1 as x")
        target = server_time(primary)  # between the backup and the restore point's switch
        primary.psql("alter system set timezone = 'Asia/Kolkata'")  # restore-point's now() comes back in +05:30
        primary.psql("select pg_reload_conf()")
        ok(setup.wk("restore-point", "json-walk", *conn(primary), "--switch-wal"))
        archive_everything(primary)
        setup.wk("wal-push", setup.work / "nonexistent" / "000000010000000000000099")  # one recorded failure
        env = libpq_env(primary)
        for name, args, code in (
            ("wal-list", ["wal-list"], 0),
            ("backups", ["backups"], 0),
            ("backups show", ["backups", "show", "latest"], 0),
            ("dumps", ["dumps"], 0),
            ("dumps show", ["dumps", "show", "latest"], 0),
            ("restore-points", ["restore-points"], 0),
            ("status", ["status"], 0),
            ("check", ["check", "--cluster"], 0),
            ("check --archive", ["check", "--archive", *conn(primary)], 0),
            ("verify", ["verify"], 0),
            ("expire", ["expire", "--keep", "1", "--dry-run"], 0),
            ("pitr", ["pitr", "--pgdata", setup.work / "never", "--target-time", target, "--dry-run"], 0),
            ("pitr immediate", ["pitr", "--pgdata", setup.work / "never", "--target-immediate", "--dry-run"], 0),
            ("restore-test", ["restore-test", "--workdir", setup.work / "restore-tests"], 0),
            ("restore-tests", ["restore-tests"], 0),
            ("key list", ["key", "list"], 0),
            ("rekey", ["rekey", "--retire", "0123456789abcdef", "--dry-run"], 0),
            ("status (after a restore test)", ["status"], 0),
        ):
            proc = setup.wk(*args, "--json", env=env)
            assert proc.returncode == code, (name, proc.stdout, proc.stderr)
            outputs[name] = json.loads(proc.stdout)
        # Several repositories: copy into a second one, then the documents keyed by repository name.
        several = setup.work / "several.toml"
        several.write_text(setup.config.read_text().replace(f'repo = "{setup.repo}"\n', "") +
                           f'[[repository]]\nname = "main"\nrepo = "{setup.repo}"\n'
                           f'[[repository]]\nname = "copy"\nrepo = "{setup.work / "copy"}"\n')
        give_to_pg(several)
        for name, args in (("copy", ["copy", "--from", "main", "--to", "copy"]), ("status (several)", ["status"]),
                           ("check (several)", ["check", "--max-copy-lag", "1h"]), ("verify (several)", ["verify"]),
                           ("expire (several)", ["expire", "--keep", "1", "--dry-run"])):
            proc = setup.wk("--config", several, *args, "--json", env=env, config=False)
            assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
            outputs[name] = json.loads(proc.stdout)
        # A gap gives verify's report a time of its own (the last good segment's arrival).
        segments = sorted((setup.repo / "wal" / "00000001").glob("0000000100000000000000??"))
        segments[1].unlink()
        proc = setup.wk("verify", "--json")
        assert proc.returncode == 5, proc.stderr
        outputs["verify (gap)"] = json.loads(proc.stdout)
    finally:
        primary.destroy()

    covered = {name.split(" (")[0] for name in outputs} | {"backups show"}
    missing = {c for c in json_commands() if c not in covered and c.split()[0] not in covered}
    assert not missing, f"--json commands this test does not walk: {missing}"
    problems = [f"{name}: {p}" for name, doc in outputs.items() for p in time_problems(doc)]
    assert not problems, problems

    # The fields a reader relies on exist where docs/json.md says.
    assert outputs["status"]["backups"][0]["stop_time"] and outputs["status"]["newest_segment"]["archived"]
    assert outputs["status"]["cluster"]["last_archived_time"]
    assert outputs["status"]["walkeeper_failures"]["wal-push"]["last_failure"]
    assert outputs["restore-points"][0]["time"].endswith("+00:00")
    assert outputs["restore-tests"][0]["id"] == outputs["restore-test"]["id"] and outputs["restore-test"]["ok"]
    assert outputs["status (after a restore test)"]["restore_tests"]["last_success"]["finished"]
    assert outputs["dumps"]["dumps"][0]["stop_time"] and outputs["dumps show"]["id"] == outputs["dumpall"]["id"]
    assert outputs["pitr"]["target"]["kind"] == "time" and outputs["pitr"]["dry_run"] is True
    assert outputs["pitr"]["target"]["value"].endswith("+00:00") and outputs["pitr"]["wal"]["segments"] >= 1
    assert outputs["check --archive"]["status"] == "OK" and outputs["check --archive"]["seconds"] > 0
    gap = next(p for p in outputs["verify (gap)"]["problems"] if p["kind"] == "gap")
    assert gap["details"]["last_good_time"]
    assert outputs["copy"]["backups_listed"] and set(outputs["status (several)"]["repositories"]) == {"main", "copy"}
    assert outputs["status (several)"]["copy_lag"][0]["seconds"] == 0.0
    assert outputs["check (several)"]["copy_lag"][0]["to"] == "copy" and outputs["verify (several)"]["ok"]
    assert outputs["expire (several)"]["repositories"]["copy"]["kept_backups"]
    docs = DOCS.read_text()
    for command in json_commands():
        assert f"walkeeper {command}" in docs, f"docs/json.md does not describe {command} --json"

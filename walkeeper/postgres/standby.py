"""Streaming settings of a standby built by ``walkeeper pitr --standby``: primary_conninfo, primary_slot_name.

With both restore_command and primary_conninfo set, PostgreSQL streams from the primary and falls
back to the archive (walkeeper wal-fetch) whenever streaming breaks, then reconnects by itself.

A password is never written into postgresql.auto.conf (which base backups copy and anyone reading
the data directory sees). A password given in --primary-conninfo is stripped when a password file
serves that connection (``passfile=`` in the conninfo, PGPASSFILE, or ~/.pgpass of the user pitr
runs as, the data directory's owner), and pitr says so; when none does, pitr refuses and says where
to put it. Pure functions on strings and files: table-tested without a server.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from walkeeper.core.errors import ConfigError, RefusedError

_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")


def parse_conninfo(text: str) -> dict[str, str]:
    """libpq's ``key=value`` form (single quotes, backslash escapes) or a postgresql:// URI, as a dict."""
    text = text.strip()
    if text.startswith(("postgresql://", "postgres://")):
        return _parse_uri(text)
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _KEY.match(text, pos)
        if not match:
            raise ConfigError(f"--primary-conninfo: cannot parse {text[pos:]!r}",
                              hint="use key=value pairs, e.g. 'host=primary port=5432 user=replicator'")
        key, pos = match.group(1).lower(), match.end()
        value = []
        if pos < len(text) and text[pos] == "'":
            pos += 1
            while pos < len(text) and text[pos] != "'":
                if text[pos] == "\\" and pos + 1 < len(text):
                    pos += 1
                value.append(text[pos])
                pos += 1
            if pos >= len(text):
                raise ConfigError("--primary-conninfo: unterminated quoted value")
            pos += 1
        else:
            while pos < len(text) and not text[pos].isspace():
                if text[pos] == "\\" and pos + 1 < len(text):
                    pos += 1
                value.append(text[pos])
                pos += 1
        out[key] = "".join(value)
    return out


def _parse_uri(text: str) -> dict[str, str]:
    parts = urlsplit(text)
    out: dict[str, str] = {}
    if parts.username:
        out["user"] = unquote(parts.username)
    if parts.password is not None:
        out["password"] = unquote(parts.password)
    if parts.hostname:
        out["host"] = unquote(parts.hostname)
    if parts.port:
        out["port"] = str(parts.port)
    if parts.path.strip("/"):
        out["dbname"] = unquote(parts.path.strip("/"))
    out.update({k.lower(): v for k, v in parse_qsl(parts.query)})
    return out


def format_conninfo(fields: dict[str, str]) -> str:
    """``key=value`` pairs, each value single-quoted when it needs to be (libpq's rules)."""
    def quote(value: str) -> str:
        if value and not re.search(r"[\s'\\]", value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return " ".join(f"{k}={quote(v)}" for k, v in fields.items())


def pgpass_serves(lines: list[str], host: str, port: str, user: str) -> bool:
    """Whether a .pgpass file's lines hold a password for a replication connection (database "replication")."""
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = re.split(r"(?<!\\):", line.rstrip("\n"), maxsplit=4)
        if len(fields) < 5:
            continue
        want = [host, port, "replication", user]
        if all(f == "*" or f.replace("\\:", ":") == w for f, w in zip(fields[:4], want, strict=True)):
            return True
    return False


def password_files(fields: dict[str, str], env: dict[str, str], home: str) -> list[Path]:
    """Where libpq on the standby looks for the password, in order (passfile=, PGPASSFILE, ~/.pgpass)."""
    if fields.get("passfile"):
        return [Path(fields["passfile"])]
    if env.get("PGPASSFILE"):
        return [Path(env["PGPASSFILE"])]
    return [Path(home) / ".pgpass"]


@dataclass(frozen=True)
class StreamingSettings:
    primary_conninfo: str | None = None
    primary_slot_name: str | None = None
    note: str | None = None  # what was done with a password, for the user

    def settings(self) -> list[tuple[str, str]]:
        """(setting, value) pairs for postgresql.auto.conf (recovery_conf quotes them)."""
        out = []
        if self.primary_conninfo is not None:
            out.append(("primary_conninfo", self.primary_conninfo))
        if self.primary_slot_name:
            out.append(("primary_slot_name", self.primary_slot_name))
        return out


def streaming_settings(conninfo: str | None, slot: str | None, *, env: dict[str, str] | None = None,
                       home: str | None = None) -> StreamingSettings:
    """The settings to write; a password is stripped (a password file serves it) or refused."""
    if conninfo is None:
        return StreamingSettings(None, slot)
    env = dict(os.environ) if env is None else env
    home = home if home is not None else os.path.expanduser("~")
    fields = parse_conninfo(conninfo)
    fields.setdefault("application_name", "walkeeper_standby")
    note = None
    if "password" in fields:
        del fields["password"]
        host = fields.get("host") or fields.get("hostaddr") or env.get("PGHOST", "localhost")
        if host.startswith("/"):
            host = "localhost"  # libpq matches a Unix-socket connection against "localhost"
        port = fields.get("port") or env.get("PGPORT", "5432")
        user = fields.get("user") or env.get("PGUSER", "")
        for path in password_files(fields, env, home):
            try:
                lines = path.read_text().splitlines()
            except OSError:
                continue
            if pgpass_serves(lines, host, port, user):
                note = (f"the password in --primary-conninfo was not written: the standby reads it from {path} "
                        "(libpq's password file)")
                break
        else:
            wanted = password_files(fields, env, home)[0]
            raise RefusedError(
                "--primary-conninfo holds a password, and walkeeper never writes one into postgresql.auto.conf",
                hint=f"put it in {wanted} (a line {host}:{port}:replication:{user or '*'}:PASSWORD, mode 0600, "
                     "owned by the server's user) and run again; the password is then left out")
    return StreamingSettings(format_conninfo(fields), slot, note)


def slot_conninfo(conninfo: str) -> str:
    """The primary's conninfo for an SQL session (creating the slot): database postgres unless one is named."""
    fields = parse_conninfo(conninfo)
    fields.pop("replication", None)
    fields.setdefault("dbname", "postgres")
    return format_conninfo(fields)

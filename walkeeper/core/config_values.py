"""Checking one configuration value, from the file or the environment: its type, choices, range and paths.

A typo or a value out of range fails at load, naming the file (or variable), the key and what is valid,
rather than deep inside a command or silently as a default.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from walkeeper.core.configbase import ENV_PREFIX, env_name, resolve_path
from walkeeper.core.errors import ConfigError

# Settings holding file paths: relative values in a config file are relative to that file's own
# directory (symlinks followed: walkeeper.core.configbase.config_dir, which the fast path uses too).
PATH_FIELDS = {
    ("encryption", "key_file"),
    ("encryption", "key_files"),
    ("ssh", "identity_file"),
    ("ssh", "known_hosts_file"),
    ("restore", "spool_dir"),
    ("archive", "status_dir"),
    ("receive", "spool_dir"),
    ("backup", "pg_bin_dir"),
    ("notify", "state_file"),
}
_CHOICES = {
    ("compression", "method"): ("zstd", "none"),
    ("encryption", "method"): ("aes-256-gcm", "x25519-aes-256-gcm", "none"),
    ("s3", "sse"): (None, "AES256", "aws:kms"),
    ("s3", "addressing_style"): ("auto", "path", "virtual"),
    ("archive", "require"): ("all", "any"),
}


# Numeric settings with a valid range (inclusive; None = unbounded): checked when the file or the
# environment is read, so that a bad value fails at load with the range, not later deep inside a command.
_RANGES: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("compression", "level"): (1, 22),  # zstd's levels
    ("retry", "attempts"): (1, None),
    ("retry", "base_delay"): (0, None),
    ("retry", "max_delay"): (0, None),
    ("archive", "push_ahead"): (0, None),
    ("archive", "workers"): (1, None),
    ("archive", "idle_timeout"): (0, None),
    ("archive", "catch_up_interval"): (0, None),
    ("restore", "prefetch"): (0, None),
    ("restore", "workers"): (1, None),
    ("restore", "idle_timeout"): (0, None),
    ("receive", "partial_interval"): (0.1, None),
    ("receive", "restart_max_delay"): (1, None),
    ("backup", "workers"): (1, None),
    ("encryption", "key_command_timeout"): (0.1, 3600),
    ("s3", "connect_timeout"): (0, None),
    ("s3", "read_timeout"): (0, None),
    ("s3", "max_concurrency"): (1, None),
    ("ssh", "connect_timeout"): (1, None),
    ("ssh", "io_timeout"): (1, None),
    ("notify", "timeout"): (0, None),
    ("notify", "min_interval"): (0, None),
}


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(type_name(arg) for arg in typing.get_args(hint) if arg is not type(None))
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list of strings"}.get(hint, str(hint))


def coerce(value: Any, hint: Any, where: str, from_env: bool) -> Any:
    """Check (file) or convert (environment) one value against a field's type."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for kind in allowed:
        if kind is type(None):
            if from_env and value == "":
                return None
            continue
        if kind is list:  # a list of strings; from the environment, comma-separated
            if from_env:
                return [part for part in value.split(",") if part]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
            continue
        if from_env:
            try:
                if kind is bool:
                    lowered = value.strip().lower()
                    if lowered in ("1", "true", "yes", "on"):
                        return True
                    if lowered in ("0", "false", "no", "off"):
                        return False
                    continue
                return kind(value)
            except ValueError:
                continue
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, bool):
            continue
        if isinstance(value, kind):
            return value
    raise ConfigError(f"{where}: expected {type_name(hint)}, got {value!r}")


def check_choice(section: str, key: str, value: Any, where: str) -> None:
    """Refuse a value outside the setting's choices or numeric range, naming what is valid."""
    choices = _CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(str(c) for c in choices if c)}")
    low, high = _RANGES.get((section, key), (None, None))
    if isinstance(value, float) and value != value:
        raise ConfigError(f"{where}: expected a number, got nan")
    if isinstance(value, int | float) and not isinstance(value, bool) and (
            (low is not None and value < low) or (high is not None and value > high)):
        valid = f"{low} to {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{where}: {value} is out of range (valid: {valid})")


def check_env_names(env: Mapping[str, str], sections: dict[str, type]) -> None:
    """A WALKEEPER_<SECTION>_* variable of a known section must name a setting (a typo is an error).

    Other WALKEEPER_* variables are not settings (WALKEEPER_CONFIG, WALKEEPER_REPO, the notify hook's
    WALKEEPER_EVENT ..., test and script knobs) and are not checked.
    """
    for name in env:
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):]
        for section, cls in sections.items():
            prefix = f"{section.upper()}_"
            if not rest.startswith(prefix):
                continue
            valid = [env_name(section, key) for key in field_types(cls)]
            if name not in valid:
                import difflib

                near = difflib.get_close_matches(name, valid, n=1, cutoff=0.0)
                raise ConfigError(f"unknown environment variable {name}: [{section}] has no such setting",
                                  hint=f"did you mean {near[0]}? fix or unset it" if near else "unset it")


def section_values(section: str, cls: type, table: Mapping[str, Any], source: str,
                   base_dir: str | None) -> dict[str, Any]:
    hints = field_types(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{source}: [{section}] {key}"
        if key in hints and dataclasses.is_dataclass(hints[key]):  # a sub-table: [retention.dumps]
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a table ([{section}.{key}])")
            values[key] = hints[key](**section_values(f"{section}.{key}", hints[key], value, source, base_dir))
            continue
        if key not in hints:
            known = ", ".join(hints)
            raise ConfigError(f"{source}: unknown key {key!r} in [{section}] (known keys: {known})")
        value = coerce(value, hints[key], where, from_env=False)
        check_choice(section, key, value, where)
        if (section, key) in PATH_FIELDS and value and base_dir is not None:
            value = [resolve_path(v, base_dir) for v in value] if isinstance(value, list) else \
                resolve_path(value, base_dir)
        values[key] = value
    return values


def read_file(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable by uid {os.getuid()}",
                          hint="fix its permissions or run as its owner") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory", hint="give the path of the TOML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None

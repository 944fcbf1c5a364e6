"""A configuration file from a Config: ``repo``, the encryption settings and every non-default setting
(written by ``walkeeper init --write-config``)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from walkeeper.core.config import Config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def render_config(config: Config) -> str:
    """A configuration file holding ``repo``, the encryption settings and every other non-default setting.

    Settings that came from WALKEEPER_* variables (an S3 endpoint, an ssh identity...) are written
    down, so that archive_command, run by PostgreSQL without them, finds the same repository.
    """
    lines = ["# walkeeper configuration, written by walkeeper init. Every setting: conf-examples/walkeeper.toml",
             f"repo = {_toml_value(config.repo)}", ""]
    defaults = Config()
    for section in dataclasses.fields(Config):
        value = getattr(config, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        base = getattr(defaults, section.name)
        items = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)
                 if section.name == "encryption" or getattr(value, f.name) != getattr(base, f.name)]
        items = [(k, v) for k, v in items if v is not None]
        if items:
            lines.append(f"[{section.name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in items]
            lines.append("")
    return "\n".join(lines)

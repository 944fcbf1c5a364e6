"""Key commands: ``key generate``, ``key rotate``, ``key list`` and ``rekey`` (logic in walkeeper/commands/)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from walkeeper.cli.context import AppContext, handle_errors, pass_app
from walkeeper.core.durable import write_file
from walkeeper.core.errors import ConfigError, RefusedError


@click.group("key")
def key_group() -> None:
    """Encryption keys: generate, rotate, list."""


def _write_new_key(output: str, text: str | None = None, *, mode: int = 0o600, option: str = "--output") -> None:
    from walkeeper.codec import generate_key

    try:  # durable, never half a key
        write_file(output, ((text or generate_key()) + "\n").encode(), replace=False, mode=mode)
    except FileExistsError:
        raise RefusedError(f"{output} already exists; refusing to overwrite a key",
                           hint=f"choose another {option}, or move the old key away first") from None
    except OSError as exc:
        what = "its directory does not exist" if isinstance(exc, FileNotFoundError) else exc.strerror or str(exc)
        raise ConfigError(f"cannot write the key to {output}: {what}",
                          hint=f"create the directory first or choose another {option}") from None


@key_group.command("generate")
@click.option("--output", type=click.Path(dir_okay=False), help="Write to FILE (mode 0600) instead of stdout.")
@click.option("--public-key-out", "public_out", metavar="FILE", type=click.Path(dir_okay=False),
              help="Public-key mode: write an X25519 pair, the private key to --output (or stdout) and the "
                   "public key to FILE (mode 0644), for hosts that must not read the archive.")
@handle_errors()
def key_generate_cmd(output: str | None, public_out: str | None) -> None:
    """Print a new random 256-bit key for key_file (or an X25519 pair with --public-key-out)."""
    from walkeeper.codec import generate_key
    from walkeeper.codec.keys import generate_x25519_pair

    private, public = generate_x25519_pair() if public_out else (generate_key(), "")
    if output is not None:  # the private key first: never a public key whose private half was not kept
        _write_new_key(output, private)
    if public_out:
        _write_new_key(public_out, public, mode=0o644, option="--public-key-out")
    if output is None:
        click.echo(private)
    else:
        click.echo(f"wrote a new {'private ' if public_out else ''}key to {Path(output).resolve()} (mode 0600); "
                   "keep a copy somewhere safe", err=True)
    if public_out:
        click.echo(f"wrote the public key to {Path(public_out).resolve()}: give it to the database host "
                   "(method = \"x25519-aes-256-gcm\")", err=True)


@key_group.command("rotate")
@click.option("--new-key", "new_key", metavar="FILE", type=click.Path(dir_okay=False),
              help="Make the key in FILE active (from walkeeper key generate).")
@click.option("--generate", "generate", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write a new key to FILE (mode 0600) and make it active.")
@pass_app
@handle_errors()
def key_rotate_cmd(app: AppContext, new_key: str | None, generate: str | None) -> None:
    """Make a new key active for every object written from now on; older keys stay readable."""
    from walkeeper.commands.key_rotate import rotate
    from walkeeper.repo.repository import open_repository

    if bool(new_key) == bool(generate):
        raise ConfigError("give exactly one of --new-key FILE or --generate FILE")
    path = new_key or generate
    assert path is not None
    if generate:
        _write_new_key(generate, option="--generate FILE")
    result = rotate(open_repository(app.config), path)
    if not result.changed:
        click.echo(f"key id {result.key_id} is already the repository's active key")
        return
    enc = app.config.encryption
    old = ([enc.key_file] if enc.key_file else []) + list(enc.key_files or [])
    files = ", ".join(f'"{f}"' for f in [str(Path(path).resolve()), *old])
    click.echo(f"key id {result.key_id} is now the repository's active key (was {result.previous})")
    click.echo(f"next: in [encryption] set key_files = [{files}] on every host (new key first), "
               f"then once all writers use it: walkeeper rekey --retire {result.previous}")


@key_group.command("list")
@click.option("--objects/--no-objects", default=True, show_default=True,
              help="Count objects per key id (reads every object's header).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@handle_errors()
def key_list_cmd(app: AppContext, objects: bool, as_json: bool) -> None:
    """The repository's key ids (active, since when, retired) and objects per key id."""
    from walkeeper.commands.key_rotate import key_table
    from walkeeper.commands.rekey import objects_per_key_id
    from walkeeper.repo.repository import open_repository

    repo = open_repository(app.config, codec=False)
    doc: dict[str, object] = {"keys": key_table(repo)}
    if objects:
        doc["objects_per_key_id"] = objects_per_key_id(repo)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    counts = doc.get("objects_per_key_id", {})
    assert isinstance(counts, dict)
    for entry in key_table(repo):
        state = "active" if entry["active"] else (f"retired {entry['retired']}" if entry.get("retired") else "readable")
        n = f", {counts.get(entry['key_id'], 0)} objects" if objects else ""
        click.echo(f"{entry['key_id']}  since {entry.get('active_since') or '?'}  {state}{n}")
    for key_id, n in counts.items():
        if key_id not in {e["key_id"] for e in key_table(repo)}:
            click.echo(f"{key_id}  (not recorded)  {n} objects")


@click.command("rekey")
@click.option("--retire", "key_id", required=True, metavar="KEYID", help="Rewrite every object under KEYID.")
@click.option("--dry-run", is_flag=True, help="Only count the objects and bytes under KEYID.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable final report.")
@pass_app
@handle_errors()
def rekey_cmd(app: AppContext, key_id: str, dry_run: bool, as_json: bool) -> None:
    """Re-encrypt every object under KEYID with the active key, then record KEYID as retired.

    Resumable and idempotent (rerun after a kill); safe while archiving and restoring.
    """
    from walkeeper.commands.rekey import RekeyReport, rekey
    from walkeeper.core.errors import IntegrityError
    from walkeeper.repo.repository import open_repository

    last = [0.0]

    def progress(report: RekeyReport) -> None:
        if time.monotonic() - last[0] >= 2:
            last[0] = time.monotonic()
            click.echo(f"rekey: {report.rewritten} rewritten, {report.changed} changed meanwhile, "
                       f"{report.stored_bytes / 1048576:.1f} MiB", err=True)

    report = rekey(open_repository(app.config), key_id, dry_run=dry_run, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif dry_run:
        click.echo(f"rekey --dry-run: {report.found} of {report.objects} objects "
                   f"({report.stored_bytes / 1048576:.1f} MiB) are under key id {key_id}")
    else:
        click.echo(f"rekey: {report.rewritten} objects rewritten under key id {report.active_key_id} "
                   f"({report.stored_bytes / 1048576:.1f} MiB in {report.seconds:.1f} s, "
                   f"{report.mib_per_s:.1f} MiB/s), {report.changed} changed meanwhile, "
                   f"{report.remaining} left under {key_id}")
        click.echo(f"key id {key_id} is retired: no object uses it; its key file can be destroyed"
                   if report.retired else "rerun walkeeper rekey to finish")
    if not dry_run and not report.retired:
        raise click.exceptions.Exit(IntegrityError.code)


COMMANDS = (key_group, rekey_cmd)

"""Click command wal-receive (registered in cli/main.py through COMMANDS); the work is in commands/wal_receive."""

from __future__ import annotations

import logging

import click

from walkeeper.cli.context import AppContext, conn_options, handle_errors, pass_app


@click.command("wal-receive", context_settings={"help_option_names": ["--help"]})
@conn_options
@click.option("--slot", help="Physical replication slot to stream from (default [receive] slot, 'walkeeper').")
@click.option("--create-slot", is_flag=True, help="Create the slot on the server first unless it exists.")
@click.option("--synchronous", is_flag=True, default=None,
              help="pg_receivewal --synchronous: flush and report each write (for synchronous_standby_names).")
@click.option("--partial-interval", type=float, metavar="SECONDS",
              help="Store the segment being received this often (default [receive] partial_interval, 10).")
@pass_app
@handle_errors()
def wal_receive_cmd(app: AppContext, host: str | None, port: str | None, user: str | None, dbname: str | None,
                    slot: str | None, create_slot: bool, synchronous: bool | None,
                    partial_interval: float | None) -> None:
    """Stream WAL with pg_receivewal into the repository (a service: runs until stopped).

    Each completed segment is stored like wal-push stores it, the segment being received every
    partial_interval seconds. Exit 24: the server refuses replication or the slot is missing.
    """
    from walkeeper.commands.wal_receive import ReceiveOptions, wal_receive
    from walkeeper.core.errors import ConfigError
    from walkeeper.postgres.client import ConnOptions

    config = app.config
    if partial_interval is not None and partial_interval < 0.1:
        raise ConfigError("--partial-interval must be at least 0.1 seconds")
    walkeeper_log = logging.getLogger("walkeeper")
    if walkeeper_log.level > logging.INFO:
        walkeeper_log.setLevel(logging.INFO)  # a service: one line per stored segment by default
    options = ReceiveOptions(
        conn=ConnOptions(host, port, user, dbname),
        slot=slot or config.receive.slot,
        synchronous=config.receive.synchronous if synchronous is None else synchronous,
        create_slot=create_slot,
        partial_interval=partial_interval or config.receive.partial_interval,
    )
    wal_receive(config, options)


COMMANDS = (wal_receive_cmd,)

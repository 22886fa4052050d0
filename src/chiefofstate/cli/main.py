"""The `cos` command: serve, migrate, demo, and reading what the journal holds."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from chiefofstate.cli.cluster import app as cluster_app
from chiefofstate.cli.cluster import print_status, read_status
from chiefofstate.cli.connection import CaFile, CertFile, Connection, KeyFile, Tls, Token
from chiefofstate.cli.descriptors import DescriptorsFile, HandlerAddress
from chiefofstate.cli.inspect import NothingStored
from chiefofstate.cli.output import AsJson, fail, make_console, print_json
from chiefofstate.cli.readside import app as readside_app
from chiefofstate.cli.workers import CONFIG_ERROR_EXIT
from chiefofstate.config.settings import Settings, load_logging_settings, load_settings
from chiefofstate.core.errors import ConfigError, CosError, MigrationError
from chiefofstate.inspect.decoding import compact
from chiefofstate.inspect.descriptors import DescriptorsUnavailable, MessageTypes, UnknownType
from chiefofstate.node.event_loop import run_on_event_loop
from chiefofstate.telemetry.logging import configure_logging

# typer's completion options: `cos --install-completion` adds completion to the user's shell.
app = typer.Typer(
    add_completion=True, no_args_is_help=True, help="Chief of State: event sourcing as a service."
)
app.add_typer(readside_app, name="readside")
app.add_typer(cluster_app, name="cluster")
T = TypeVar("T")


def console() -> Console:
    return make_console()


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"cos {version('chiefofstate')}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    """Chief of State: event sourcing as a service."""


def _settings(*, require_write_side: bool, overrides: Mapping[str, str] | None = None) -> Settings:
    """Parse the environment (with what command-line options override), or print one line naming the
    bad variable and exit 2."""
    environ = {**os.environ, **(overrides or {})}
    try:
        logging_settings = load_logging_settings(environ)
        configure_logging(logging_settings.level, logging_settings.style, logging_settings.service_name)
        return load_settings(environ, require_write_side=require_write_side)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise typer.Exit(CONFIG_ERROR_EXIT) from None


def _run(coroutine_factory: Callable[[], Awaitable[T]], event_loop: str = "asyncio") -> T:
    async def runner() -> T:
        return await coroutine_factory()

    try:
        return run_on_event_loop(runner(), event_loop)
    except ConfigError as error:
        # Settings that parse but cannot work together (a cluster member's shard count, its
        # advertised address) are found at start: one line and exit 2, like any bad setting (D9).
        print(f"configuration error: {error}", file=sys.stderr)
        raise typer.Exit(CONFIG_ERROR_EXIT) from None
    except MigrationError as error:
        # The schema cannot be brought to this release's version (a database too old to upgrade, or
        # newer than this release): nothing the node could retry, so one line and exit 2, as for a bad
        # setting (D9).
        print(f"migration error: {error}", file=sys.stderr)
        raise typer.Exit(CONFIG_ERROR_EXIT) from None
    except CosError as error:
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(1) from None


def _run_read(coroutine_factory: Callable[[], Awaitable[T]]) -> T:
    """`_run` for a command that only reads the journal: a store without one is one line and exit 1."""
    try:
        return _run(coroutine_factory)
    except NothingStored as error:
        raise fail(str(error)) from None


Workers = Annotated[
    str | None,
    typer.Option(
        "--workers",
        metavar="N|auto",
        help="node processes to run on this machine, as cluster members (PostgreSQL only): a whole "
        "number, or auto for one per core; overrides COS_WORKERS",
        show_default=False,
    ),
]


@app.command()
def serve(workers: Workers = None) -> None:
    """Run one node configured by the COS_* environment variables until SIGTERM or SIGINT; with
    --workers N, N of them sharing the client-facing ports."""
    overrides = {"COS_WORKERS": workers} if workers is not None else {}
    settings = _settings(require_write_side=True, overrides=overrides)
    _check_ports(settings)
    if settings.workers.count > 1:
        from chiefofstate.cli.workers import supervise

        # Each worker parses the same settings again and says their warnings.
        # A worker gets its own shutdown time, and as long again for the rest of its stop, before the
        # supervisor kills it.
        kill_after_s = 2 * settings.server.shutdown_timeout_s + 10
        raise typer.Exit(supervise(settings.workers.count, {**os.environ, **overrides}, kill_after_s))
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if settings.workers.is_worker:
        from chiefofstate.cli.workers import stop_with_supervisor

        stop_with_supervisor()
    from chiefofstate.node.node import run_until_signalled

    _run(lambda: run_until_signalled(settings), settings.server.event_loop)


def _check_ports(settings: Settings) -> None:
    """Two servers on one port, or a port another process holds, is one line and exit 2 before the
    node opens anything (docs/operations.md, "Start-up failures")."""
    from chiefofstate.cli.port_check import check_free
    from chiefofstate.config.ports import check_distinct_ports, listeners

    found = listeners(settings)
    try:
        check_distinct_ports(found)
        # A worker's client-facing ports are shared with its siblings, which may hold them already.
        check_free(found, skip_shared=settings.workers.is_worker)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise typer.Exit(CONFIG_ERROR_EXIT) from None


@app.command()
def migrate(as_json: AsJson = False) -> None:
    """Create or upgrade the journal schema, then exit."""
    settings = _settings(require_write_side=False)
    from chiefofstate.node.stores import exclusive_use, open_store

    async def migrate_and_close() -> str:
        # A running node's schema is not changed under it: on SQLite, refused while a node serves the
        # file (exit 2); on PostgreSQL every migration runs under an advisory lock, beside members or not.
        with exclusive_use(settings.store, "migrating it"):
            journal = await open_store(settings)
            await journal.close()
        return journal.description

    description = _run(migrate_and_close)
    if as_json:
        print_json({"schema": "up to date", "store": description})
    else:
        console().print(f"schema is up to date in {description}")


EntityId = Annotated[str, typer.Argument(help="the entity's id", show_default=False)]
Host = Annotated[str, typer.Option(help="the node's gRPC address")]
Port = Annotated[int, typer.Option(help="the node's gRPC port", envvar="COS_PORT")]
Headers = Annotated[
    list[str] | None,
    typer.Option(
        "--header",
        metavar="KEY=VALUE",
        help="gRPC metadata sent with the call, e.g. a header the node propagates or persists "
        "(COS_WRITE_SIDE_PROPAGATED_HEADERS, COS_WRITE_PERSISTED_HEADERS); repeatable; a KEY ending in -bin "
        "takes base64",
        show_default=False,
    ),
]
Timeout = Annotated[float, typer.Option(help="seconds to wait for the node's answer")]


def _types_or_exit(
    stack: contextlib.ExitStack, descriptors: Path | None, handler: str | None
) -> MessageTypes:
    from chiefofstate.cli.descriptors import message_types

    try:
        return stack.enter_context(message_types(descriptors, handler))
    except DescriptorsUnavailable as error:
        raise fail(str(error)) from None


def _note_undecoded(views: list[dict[str, object]]) -> None:
    """Once per command: why the events or state are shown as bytes."""
    for view in views:
        reason = view.get("undecoded_reason")
        if reason:
            print(f"note: shown undecoded: {reason}", file=sys.stderr)
            return


def _connection(
    token: str | None, tls: bool, ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> Connection:
    connection = Connection(token, tls, ca_file, cert_file, key_file)
    connection.check()
    return connection


@app.command()
def events(
    entity_id: Annotated[
        str | None, typer.Argument(help="the entity whose events to list or follow", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many stored events", min=1)] = 1000,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="tail new events through the node's subscription API")
    ] = False,
    every_entity: Annotated[bool, typer.Option("--all", help="with --follow: every entity's events")] = False,
    count: Annotated[
        int | None, typer.Option(help="with --follow: stop after this many events", min=1, show_default=False)
    ] = None,
    descriptors: DescriptorsFile = None,
    handler: HandlerAddress = None,
    as_json: AsJson = False,
    host: Host = "127.0.0.1",
    port: Port = 9000,
    headers: Headers = None,
    token: Token = None,
    tls: Tls = False,
    ca_file: CaFile = None,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
) -> None:
    """An entity's stored events read from the journal (COS_DB_*), decoded with the write handler's
    descriptors; with --follow, new events live from a running node (--all: of every entity)."""
    if follow:
        if (entity_id is None) == (not every_entity):
            raise typer.BadParameter("--follow takes an ENTITY_ID or --all (one of them)")
        connection = _connection(token, tls, ca_file, cert_file, key_file)
        from chiefofstate.cli.entities import follow as follow_events
        from chiefofstate.cli.entities import parse_headers

        metadata = parse_headers(headers or ())
        with contextlib.ExitStack() as stack:
            types = _types_or_exit(stack, descriptors, handler)
            follow_events(connection, f"{host}:{port}", entity_id, metadata, count, as_json, types, console())
        return
    if entity_id is None or every_entity or count is not None:
        raise typer.BadParameter("without --follow, give one ENTITY_ID (--all and --count go with --follow)")
    from chiefofstate.cli.inspect import read_events

    settings = _settings(require_write_side=False)
    with contextlib.ExitStack() as stack:
        types = _types_or_exit(stack, descriptors, handler)
        rows = _run_read(lambda: read_events(settings, entity_id, limit, types))
    _note_undecoded([row["event"] for row in rows])
    if as_json:
        print_json({"entity_id": entity_id, "events": rows})
        if not rows:
            raise typer.Exit(1)
        return
    out = console()
    if not rows:
        out.print(f"no events stored for entity [bold]{entity_id}[/bold]")
        raise typer.Exit(1)
    table = Table(title=f"events of {entity_id}", title_justify="left")
    for column in ("revision", "revision date", "event type", "event", "headers", "ordering", "shard"):
        # fold: a type name is one long word, and cutting it would make two types look alike
        table.add_column(column, overflow="fold")
    for row in rows:
        event = row["event"]
        table.add_row(
            str(row["revision"]) + (" (deleted)" if row["deleted"] else ""),
            row["revision_date"] or "-",
            event["type"],
            compact(event["json"]) if event["json"] is not None else "(undecoded)",
            ", ".join(_header_text(h) for h in row["headers"]) or "-",
            str(row["ordering"]),
            str(row["shard"]),
        )
    out.print(table)


def _header_text(header: dict[str, str]) -> str:
    return f"{header['key']}={header.get('string_value', header.get('bytes_value'))}"


@app.command()
def state(
    entity_id: Annotated[str, typer.Argument(help="the entity whose state to show")],
    descriptors: DescriptorsFile = None,
    handler: HandlerAddress = None,
    as_json: AsJson = False,
) -> None:
    """An entity's current state read from the journal (COS_DB_*): type, revision and the state itself,
    decoded with the write handler's descriptors."""
    from chiefofstate.cli.inspect import read_state

    settings = _settings(require_write_side=False)
    with contextlib.ExitStack() as stack:
        types = _types_or_exit(stack, descriptors, handler)
        found = _run_read(lambda: read_state(settings, entity_id, types))
    if found is None:
        if as_json:
            print_json({"entity_id": entity_id, "state": None})
        else:
            console().print(f"entity [bold]{entity_id}[/bold] has no stored state")
        raise typer.Exit(1)
    _note_undecoded([found["state"]])
    if as_json:
        print_json(found)
        return
    table = Table(title=f"state of {entity_id}", show_header=False, title_justify="left")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    shown = found["state"]
    for key, value in (
        ("entity id", entity_id),
        ("state type", shown["type"]),
        ("revision", str(found["revision"])),
        ("revision date", found["revision_date"] or "-"),
        ("state", compact(shown["json"]) if shown["json"] is not None else "(undecoded)"),
        ("state size", f"{found['state_size_bytes']} bytes"),
        ("read from", f"{found['read_from']['kind']} at sequence {found['read_from']['sequence_number']}"),
        ("headers", ", ".join(_header_text(h) for h in found["headers"]) or "-"),
    ):
        table.add_row(key, value)
    console().print(table)


@app.command()
def send(
    entity_id: EntityId,
    command_type: Annotated[
        str,
        typer.Argument(
            metavar="TYPE", help="the command's message type, e.g. bank.v1.Deposit", show_default=False
        ),
    ],
    body: Annotated[
        str, typer.Argument(metavar="JSON", help='the command in proto3 JSON, e.g. \'{"amount": "500"}\'')
    ] = "{}",
    descriptors: DescriptorsFile = None,
    handler: HandlerAddress = None,
    as_json: AsJson = False,
    host: Host = "127.0.0.1",
    port: Port = 9000,
    headers: Headers = None,
    timeout: Timeout = 30.0,
    token: Token = None,
    tls: Tls = False,
    ca_file: CaFile = None,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
) -> None:
    """Send a command to ENTITY_ID through a running node (ProcessCommand) and print the resulting state."""
    from chiefofstate.cli.entities import parse_headers, print_state
    from chiefofstate.cli.entities import send as send_command
    from chiefofstate.inspect.decoding import CommandJsonError, encode_command

    connection = _connection(token, tls, ca_file, cert_file, key_file)
    metadata = parse_headers(headers or ())
    with contextlib.ExitStack() as stack:
        types = _types_or_exit(stack, descriptors, handler)
        try:
            command = encode_command(command_type, body, types)
        except (UnknownType, DescriptorsUnavailable, CommandJsonError) as error:
            raise fail(str(error)) from None
        view = send_command(connection, f"{host}:{port}", entity_id, command, metadata, timeout, types)
    print_state(view, as_json, console())


@app.command()
def get(
    entity_id: EntityId,
    descriptors: DescriptorsFile = None,
    handler: HandlerAddress = None,
    as_json: AsJson = False,
    host: Host = "127.0.0.1",
    port: Port = 9000,
    headers: Headers = None,
    timeout: Timeout = 30.0,
    token: Token = None,
    tls: Tls = False,
    ca_file: CaFile = None,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
) -> None:
    """Read ENTITY_ID's current state through a running node (GetState)."""
    from chiefofstate.cli.entities import get as get_state
    from chiefofstate.cli.entities import parse_headers, print_state

    connection = _connection(token, tls, ca_file, cert_file, key_file)
    metadata = parse_headers(headers or ())
    with contextlib.ExitStack() as stack:
        types = _types_or_exit(stack, descriptors, handler)
        view = get_state(connection, f"{host}:{port}", entity_id, metadata, timeout, types)
    if view is None:
        if as_json:
            print_json({"entity_id": entity_id, "state": None})
        else:
            print(f"entity {entity_id} has no state", file=sys.stderr)
        raise typer.Exit(1)
    _note_undecoded([view["state"]])
    print_state(view, as_json, console())


@app.command()
def demo() -> None:
    """Run the whole product on SQLite with the example bank handler and a scripted session."""
    from chiefofstate.cli.demo import run_demo

    raise typer.Exit(run_demo(console()))


@cluster_app.command("status")
def cluster_status(as_json: AsJson = False) -> None:
    """Members (address, start, last heartbeat, what each owns), shard owners and tokens, and shards
    without an owner, read from the database the nodes share."""
    settings = _settings(require_write_side=False)
    if not settings.cluster.enabled:
        print(
            "error: cluster mode runs on PostgreSQL (set COS_DB_HOST); with the embedded SQLite file a "
            "node runs alone",
            file=sys.stderr,
        )
        raise typer.Exit(1)
    print_status(_run(lambda: read_status(settings)), as_json)


def main() -> None:
    # One name however it is started (`python -m chiefofstate` too): usage lines and the completion
    # script name `cos`, the command a shell completes.
    app(prog_name="cos")

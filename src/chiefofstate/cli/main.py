"""The `cos` command: serve, migrate, demo, and reading what the journal holds."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from chiefofstate.cli.cluster import AsJson, print_status, read_status
from chiefofstate.cli.cluster import app as cluster_app
from chiefofstate.cli.readside import app as readside_app
from chiefofstate.cli.workers import CONFIG_ERROR_EXIT
from chiefofstate.config.settings import Settings, load_logging_settings, load_settings
from chiefofstate.core.errors import ConfigError, CosError, MigrationError
from chiefofstate.node.event_loop import run_on_event_loop
from chiefofstate.telemetry.logging import configure_logging

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Chief of State: event sourcing as a service."
)
app.add_typer(readside_app, name="readside")
app.add_typer(cluster_app, name="cluster")
console = Console()
T = TypeVar("T")


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


@app.command()
def migrate() -> None:
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
    console.print(f"schema is up to date in {description}")


@app.command()
def events(
    entity_id: Annotated[str, typer.Argument(help="the entity whose events to list")],
    limit: Annotated[int, typer.Option(help="at most this many events")] = 1000,
) -> None:
    """Print an entity's stored events: revision, date, event type and headers."""
    from chiefofstate.cli.inspect import read_events

    settings = _settings(require_write_side=False)
    rows = _run(lambda: read_events(settings, entity_id, limit))
    if not rows:
        console.print(f"no events stored for entity [bold]{entity_id}[/bold]")
        raise typer.Exit(1)
    table = Table(title=f"events of {entity_id}")
    for column in ("revision", "revision date", "event type", "headers", "ordering", "shard"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command()
def state(entity_id: Annotated[str, typer.Argument(help="the entity whose state to show")]) -> None:
    """Print an entity's current stored state: type, revision and size."""
    from chiefofstate.cli.inspect import read_state

    settings = _settings(require_write_side=False)
    found = _run(lambda: read_state(settings, entity_id))
    if found is None:
        console.print(f"entity [bold]{entity_id}[/bold] has no stored state")
        raise typer.Exit(1)
    table = Table(title=f"state of {entity_id}", show_header=False)
    for key, value in found.items():
        table.add_row(key, value)
    console.print(table)


@app.command()
def demo() -> None:
    """Run the whole product on SQLite with the example bank handler and a scripted session."""
    from chiefofstate.cli.demo import run_demo

    raise typer.Exit(run_demo(console))


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
    app()

"""Puts the read-side layer together for the node.

Projections read the journal through their own journal connection (a second pool on PostgreSQL, a
second connection on SQLite) and keep offsets through the offset store's own pool, as upstream keeps a
read-side pool apart from the journal's (docs/contract.md §4.1): a slow read handler or a replay never takes a
connection an append needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from chiefofstate.api.grpc_server import ServiceRegistration
from chiefofstate.api.readside_manager import ReadSideOperations, read_side_services
from chiefofstate.config.read_sides import ReadSideSettings
from chiefofstate.config.settings import Settings
from chiefofstate.core.breaker import CircuitBreaker
from chiefofstate.node.read_side_gauges import register_read_side_readings
from chiefofstate.node.stores import open_journal, open_offset_store, read_side_connection
from chiefofstate.ports.journal import Journal
from chiefofstate.ports.offsets import OffsetStore
from chiefofstate.ports.read_handler import ReadHandler
from chiefofstate.readside.delivery import GuardedReadHandler
from chiefofstate.readside.grpc import GrpcReadHandler
from chiefofstate.readside.offset_committer import OffsetCommitter
from chiefofstate.readside.projection import ProjectionContext
from chiefofstate.readside.runtime import ReadSideRuntime
from chiefofstate.stores.postgres.wakeups import AppendListener
from chiefofstate.telemetry.command_traces import CommandTraces
from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.tracing import TRACING_OFF, Tracing
from chiefofstate.writeside.grpc import channel_options

log = logging.getLogger("chiefofstate.readside")


@dataclass(frozen=True)
class ReadSides:
    runtime: ReadSideRuntime
    services: tuple[ServiceRegistration, ...]
    # Tells deliveries which command wrote an event; a commit listener, present when tracing is on.
    command_traces: CommandTraces | None = None
    # What the manager services act on (the runtime, or in a cluster a view that acts on each
    # projection wherever it runs); the admin console acts through the same object.
    operations: ReadSideOperations | None = None


def _handler_factory(
    settings: Settings,
    tracing: Tracing,
    command_traces: CommandTraces | None,
    given: Mapping[str, ReadHandler],
) -> Callable[[ReadSideSettings], GuardedReadHandler]:
    write_side = settings.write_side
    # COS_GRPC_KEEPALIVE_* apply to every outbound channel, read sides' included (docs/contract.md §10.4).
    options = channel_options(
        max_message_bytes=settings.server.max_message_bytes,
        keepalive_enabled=write_side.keepalive_enabled,
        keepalive_time_s=write_side.keepalive_time_s,
        keepalive_timeout_s=write_side.keepalive_timeout_s,
        keepalive_without_calls=write_side.keepalive_without_calls,
    )
    breaker_settings = settings.read_sides.breaker
    max_connections = settings.read_sides.delivery.max_concurrency

    def build(read_side: ReadSideSettings) -> GuardedReadHandler:
        handler: ReadHandler
        if read_side.read_side_id in given:
            handler = given[read_side.read_side_id]
        elif read_side.protocol == "http":
            # Imported only when chosen: its HTTP client's import is a large share of start-up.
            from chiefofstate.readside.http import HttpReadHandler

            handler = HttpReadHandler(
                read_side.host, read_side.port, use_tls=read_side.use_tls, max_connections=max_connections
            )
        else:
            handler = GrpcReadHandler(read_side.target, use_tls=read_side.use_tls, options=options)
        # One breaker per read side, shared by all its shards (docs/contract.md §5.5).
        breaker = CircuitBreaker(breaker_settings) if breaker_settings is not None else None
        return GuardedReadHandler(read_side, handler, breaker, tracing=tracing, command_traces=command_traces)

    return build


async def open_read_sides(
    settings: Settings,
    closers: contextlib.AsyncExitStack,
    *,
    tracing: Tracing = TRACING_OFF,
    metrics: NodeMetrics | None = None,
    clustered: bool = False,
    handlers: Mapping[str, ReadHandler] | None = None,
    in_memory: tuple[Journal, OffsetStore] | None = None,
) -> ReadSides:
    """Start every projection; everything opened is registered on `closers` for the node's stop.

    `clustered`: nothing starts here; the cluster coordinator readies the read sides and runs each
    projection whose lease it holds, and offset commits are fenced by those leases. `handlers` replace
    the configured gRPC/HTTP read handlers of the read sides they name (library mode). `in_memory`: the
    node's own memory journal, and an offset store of the same lifetime, instead of the database."""
    read_sides = settings.read_sides
    if in_memory is not None:
        journal, store = in_memory
    else:
        journal = await open_journal(settings.store)
        closers.push_async_callback(journal.close)
        store = await open_offset_store(settings.store)
    closers.push_async_callback(store.close)
    committer = OffsetCommitter(store, read_sides.delivery.commit_interval_s, fenced=clustered)
    context = ProjectionContext(
        journal=journal,
        store=store,
        committer=committer,
        delivery=read_sides.delivery,
        slots=asyncio.Semaphore(read_sides.delivery.max_concurrency),
    )
    # With tracing on, the node registers this as a commit listener (ReadSides.command_traces).
    command_traces = CommandTraces() if tracing.enabled else None
    runtime = ReadSideRuntime(
        read_sides,
        settings.num_shards,
        context,
        _handler_factory(settings, tracing, command_traces, handlers or {}),
    )
    closers.push_async_callback(runtime.close)
    if clustered:
        committer.on_fenced = runtime.drop_projection
    else:
        await runtime.start()
    if metrics is not None:
        register_read_side_readings(metrics, runtime)
    connection = read_side_connection(settings.store)
    if connection is not None:
        # Appends on other nodes reach our projections through NOTIFY; ours also wake them in-process.
        listener = AppendListener(connection, runtime.wake_shards, runtime.wake_all)
        listener.start()
        closers.push_async_callback(listener.close)
    log.warning(
        "read sides: %d configured from %s (%d enabled)",
        len(read_sides.read_sides),
        read_sides.source,
        sum(read_side.enabled for read_side in read_sides.read_sides),
    )
    if settings.server.protocol == "http":
        log.warning(
            "read sides run, but ReadSideManagerService is not served: COS_SERVER_PROTOCOL=http starts no "
            "gRPC server (as upstream); use 'both' to manage read sides"
        )
    services = read_side_services(runtime)
    return ReadSides(runtime, services, command_traces, runtime)

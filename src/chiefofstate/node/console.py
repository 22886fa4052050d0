"""Wires the admin console (docs/console.md) onto the management port: the objects it reads and acts on
are the node's own, the same that the gRPC services and the CLI use."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Sequence

from chiefofstate.api.console.app import PREFIX, Console, load_assets
from chiefofstate.api.console.decoding import Decoder
from chiefofstate.api.console.parts import ConsoleParts, NodeFacts
from chiefofstate.api.console.sampler import MetricSampler
from chiefofstate.api.console.sessions import ConsoleSessions
from chiefofstate.api.console.tail import LiveTail
from chiefofstate.api.management import ReadinessCheck, SmallHttpServer
from chiefofstate.api.token_file import TokenFile
from chiefofstate.cluster.coordinator import Coordinator
from chiefofstate.config.settings import Settings
from chiefofstate.inspect.descriptors import (
    DescriptorsUnavailable,
    MessageTypes,
    NoTypes,
    ReflectionTypes,
    from_descriptor_set,
    from_this_process,
)
from chiefofstate.node.read_sides import ReadSides
from chiefofstate.ports.cluster import Member
from chiefofstate.ports.journal import Journal
from chiefofstate.subscription.hub import SubscriptionHub
from chiefofstate.telemetry.metrics import NodeMetrics

# Ten minutes of charts at the default reading every 5 s.
SAMPLE_CAPACITY = 120


def _message_types(
    settings: Settings, closers: contextlib.AsyncExitStack, *, handler_in_process: bool
) -> MessageTypes:
    """The descriptors events and states are decoded with, as `cos inspect` picks them: the file of
    COS_CONSOLE_DESCRIPTORS, else the gRPC write handler's reflection, else none (raw bytes). A write
    handler running in this process (library mode) has its generated code imported here already."""
    console, write_side = settings.console, settings.write_side
    if console.descriptors is not None:
        try:
            return from_descriptor_set(console.descriptors)
        except DescriptorsUnavailable as error:
            return NoTypes(str(error))
    if handler_in_process:
        return from_this_process("the write handler's generated code in this process")
    if write_side.protocol != "grpc" or not write_side.host:
        return NoTypes("set COS_CONSOLE_DESCRIPTORS to a FileDescriptorSet of the application's messages")
    import grpc

    address = f"{write_side.host}:{write_side.port}"
    channel = grpc.insecure_channel(address)
    closers.callback(channel.close)
    return ReflectionTypes(channel, address)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


async def start_console(
    settings: Settings,
    management: SmallHttpServer,
    closers: contextlib.AsyncExitStack,
    *,
    journal: Journal,
    metrics: NodeMetrics,
    readiness: ReadinessCheck,
    started_at_ms: int,
    incarnation: str,
    schema_version: int | None,
    read_sides: ReadSides | None,
    coordinator: Coordinator | None,
    subscriptions: SubscriptionHub | None,
    tokens: TokenFile | None,
    alone: Callable[[], Sequence[Member]],
    handler_in_process: bool = False,
) -> None:
    templates, static = await asyncio.to_thread(load_assets)
    decoder = Decoder(_message_types(settings, closers, handler_in_process=handler_in_process))
    closers.callback(decoder.close)
    sampler = MetricSampler(
        metrics.registry.collect, settings.console.sample_interval_s, SAMPLE_CAPACITY, time.monotonic
    )
    sampler.start()
    closers.push_async_callback(sampler.close)
    tail = None
    if subscriptions is not None:
        tail = LiveTail(subscriptions, decoder, clock=time.monotonic)
        closers.push_async_callback(tail.close)
    runtime = read_sides.runtime if read_sides is not None else None

    def every_shard() -> list[int]:
        return list(range(settings.num_shards))

    def no_projections() -> list[tuple[str, int]]:
        return []

    members: Callable[[], Sequence[Member]] = alone
    owned_shards: Callable[[], list[int]] = every_shard
    owned_projections = runtime.running_projections if runtime is not None else no_projections
    address = f"{socket.gethostname()}:{settings.server.management_port}"
    if coordinator is not None:

        def cluster_members() -> Sequence[Member]:
            return coordinator.members

        members = cluster_members
        owned_shards = coordinator.owned_shards
        owned_projections = coordinator.owned_projections
        address = settings.cluster.advertised_address
    parts = ConsoleParts(
        facts=NodeFacts(
            address=address,
            started_at_ms=started_at_ms,
            num_shards=settings.num_shards,
            store=journal.description,
            schema_version=schema_version,
            protocol=settings.server.protocol,
            clustered=coordinator is not None,
        ),
        journal=journal,
        read_sides=read_sides.operations if read_sides is not None else None,
        sampler=sampler,
        decoder=decoder,
        tail=tail,
        readiness=readiness,
        members=members,
        member_id=coordinator.member_id if coordinator is not None else incarnation,
        owned_shards=owned_shards,
        owned_projections=owned_projections,
        leases=coordinator.lease_holders if coordinator is not None else None,
        wall_clock_ms=_wall_clock_ms,
    )
    management.add_prefix_route(PREFIX, Console(parts, ConsoleSessions(tokens), templates, static))

"""Cluster mode, put together for the node: the lease book and the entities' gate over it, the routing
table and forwarder, the internal port forwarded requests arrive on, and the coordinator that keeps it
all in step with the database (docs/cluster.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from chiefofstate.api.command_path import CommandPath
from chiefofstate.api.cos_service import ChiefOfStateService
from chiefofstate.api.forwarding_service import ForwardingService, add_forwarding_service
from chiefofstate.api.grpc_server import GrpcServer
from chiefofstate.api.readside_manager import hold_service, read_side_services
from chiefofstate.api.tls import ServerTls
from chiefofstate.api.token_file import TokenFile
from chiefofstate.cluster.coordinator import Coordinator
from chiefofstate.cluster.forward_stream import ForwardStreams
from chiefofstate.cluster.forwarding import Forwarder
from chiefofstate.cluster.ownership import LeaseBook, ShardGateOfLeases
from chiefofstate.cluster.peers import PeerClients
from chiefofstate.cluster.readside_routing import ClusterReadSides, HereOnly
from chiefofstate.cluster.routes import RoutingTable
from chiefofstate.config.cluster import DEFAULT_FORWARD_STREAM_MAX_IN_FLIGHT
from chiefofstate.config.grpc_limits import GrpcLimits
from chiefofstate.config.settings import Settings
from chiefofstate.core.errors import ConfigError
from chiefofstate.core.headers import Metadata
from chiefofstate.entities.host import EntityHost
from chiefofstate.node.read_sides import ReadSides
from chiefofstate.node.stores import cluster_wakeups, open_cluster_store
from chiefofstate.ports.cluster import LeaseKey
from chiefofstate.subscription.hub import SubscriptionHub
from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.tracing import Tracing
from chiefofstate.writeside.grpc import channel_options

log = logging.getLogger("chiefofstate.cluster")

_REACHABILITY_TIMEOUT_S = 5.0
# How long an Unsubscribe waits for the other members to end the subscription before it answers anyway.
UNSUBSCRIBE_PEER_TIMEOUT_S = 2.0


@dataclass
class ClusterParts:
    member_id: str
    book: LeaseBook
    gate: ShardGateOfLeases
    routes: RoutingTable
    peers: PeerClients
    # Forwarded commands and reads go on streams when COS_CLUSTER_FORWARD_STREAM_MAX_IN_FLIGHT > 0.
    streams: ForwardStreams | None

    def forwarder(self, settings: Settings, tracing: Tracing, metrics: NodeMetrics) -> Forwarder:
        return Forwarder(
            self.routes,
            self.streams if self.streams is not None else self.peers,
            settings.num_shards,
            settings.cluster.unowned_wait_s,
            tracing=tracing,
            metrics=metrics,
        )

    def unsubscribe_elsewhere(self, coordinator: Coordinator) -> Callable[[str, Metadata], Awaitable[None]]:
        """Unsubscribe on every other live member, through their internal port (docs/contract.md §7)."""

        async def unsubscribe(subscription_id: str, metadata: Metadata) -> None:
            others = [member.address for member in coordinator.members if member.member_id != self.member_id]
            await self.peers.unsubscribe_everywhere(
                others, subscription_id, metadata, UNSUBSCRIBE_PEER_TIMEOUT_S
            )

        return unsubscribe


def cluster_parts(settings: Settings, tls: ServerTls | None = None) -> ClusterParts:
    """What the entities need before the host exists: the gate over a lease book still empty."""
    book = LeaseBook(settings.cluster.leases)
    write_side = settings.write_side
    peers = PeerClients(
        channel_options(
            max_message_bytes=settings.server.max_message_bytes,
            keepalive_enabled=write_side.keepalive_enabled,
            keepalive_time_s=write_side.keepalive_time_s,
            keepalive_timeout_s=write_side.keepalive_timeout_s,
            keepalive_without_calls=write_side.keepalive_without_calls,
        ),
        tls=tls,  # peers dial with TLS and present this node's certificate
    )
    in_flight = settings.cluster.forward_stream_max_in_flight
    return ClusterParts(
        member_id=str(uuid.uuid4()),
        book=book,
        gate=ShardGateOfLeases(book, settings.num_shards),
        routes=RoutingTable(settings.cluster.advertised_address),
        peers=peers,
        streams=ForwardStreams(peers, in_flight, settings.server.max_message_bytes)
        if in_flight > 0
        else None,
    )


def peer_port_limits(settings: Settings) -> GrpcLimits:
    """COS_GRPC_SERVER_* for the cluster port, where the callers are the other members: their channels
    ping every COS_GRPC_KEEPALIVE_TIME when keepalive is on, which must never count as abuse there."""
    limits, write_side = settings.grpc_limits, settings.write_side
    if not write_side.keepalive_enabled:
        return limits
    return replace(limits, min_ping_interval_s=min(limits.min_ping_interval_s, write_side.keepalive_time_s))


async def _check_reachable(host: str, port: int) -> None:
    """Peers dial the advertised address: a node that cannot be reached there would take shards whose
    requests nobody could forward to it, so it refuses to start (exit 2) instead."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _REACHABILITY_TIMEOUT_S)
    except (OSError, TimeoutError) as error:
        raise ConfigError(
            "COS_NODE_ADDRESS",
            f"peers could not reach this node at its advertised address {host}:{port} ({error}); "
            "set COS_NODE_ADDRESS (or POD_IP in kubernetes mode) to an address the other nodes can dial",
        ) from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def start_cluster(
    parts: ClusterParts,
    settings: Settings,
    host: EntityHost,
    closers: contextlib.AsyncExitStack,
    *,
    tracing: Tracing,
    metrics: NodeMetrics,
    tls: ServerTls | None = None,
    tokens: TokenFile | None = None,
    subscriptions: SubscriptionHub | None = None,
    read_sides: ReadSides | None = None,
) -> Coordinator:
    """The internal port, then membership and this member's share of the shards. Stopping leaves the
    cluster gracefully: shards are handed over at once instead of waiting for their leases to expire."""
    closers.push_async_callback(parts.peers.close)
    if parts.streams is not None:
        closers.push_async_callback(parts.streams.close)
    store = await open_cluster_store(settings.store)
    closers.push_async_callback(store.close)
    server = settings.server
    # Forwarded requests are served locally or refused with "not here"; never forwarded again. The same
    # for unsubscribes: a member's Unsubscribe reaches the others here, and goes no further.
    local_only = CommandPath(host, server.command_timeout_s, tracing=tracing, metrics=None)
    # Read-side manager calls sent on by other members act only on the projections this member runs.
    # Whole-read-side operations hold this member's projections through the hold service.
    peer_services = (
        (*read_side_services(HereOnly(read_sides.runtime)), hold_service(read_sides.runtime))
        if read_sides is not None
        else ()
    )
    # Every member serves the streams, even one that sends none itself (the setting at 0): its peers may
    # send on them, and it takes from each as many requests at once as a default stream carries.
    forwarding = ForwardingService(
        local_only,
        max_in_flight=settings.cluster.forward_stream_max_in_flight or DEFAULT_FORWARD_STREAM_MAX_IN_FLIGHT,
        max_message_bytes=server.max_message_bytes,
        tracing=tracing,
        tokens=tokens,
    )
    peer_server = GrpcServer(
        ChiefOfStateService(local_only, subscriptions=subscriptions),
        server.address,
        settings.cluster.port,
        server.max_message_bytes,
        credentials=tls.grpc_server_credentials() if tls is not None else None,
        reflection_enabled=settings.security.reflection_enabled,
        # A forwarded call carries its caller's token, checked here again (docs/operations.md, "Security").
        tokens=tokens,
        tracing=tracing,
        limits=peer_port_limits(settings),
        extra_services=peer_services,
        unwrapped_services=(lambda registry: add_forwarding_service(forwarding, registry),),
    )
    await peer_server.start()
    await peer_server.set_serving(True)
    closers.push_async_callback(peer_server.stop, server.shutdown_timeout_s)
    # Before the port stops (and after the shards were handed over): the streams answer what they took
    # and end, rather than holding the port's stop for its whole grace period.
    closers.push_async_callback(forwarding.leave, server.shutdown_timeout_s)
    cluster = settings.cluster
    await _check_reachable(cluster.host, cluster.advertised_port)
    coordinator = Coordinator(
        cluster,
        settings.num_shards,
        parts.member_id,
        store,
        parts.book,
        parts.routes,
        host,
        drain_timeout_s=server.command_timeout_s,
        projections=read_sides.runtime if read_sides is not None else None,
    )
    # Another member's release or departure starts a round here at once: a shard handed over is taken
    # within a round trip, not at the next periodic round (docs/cluster.md, "Handover").
    wakeups = cluster_wakeups(settings.store, coordinator.wake)
    wakeups.start()
    closers.push_async_callback(wakeups.close)
    if read_sides is not None:
        book = parts.book
        read_sides.runtime.lease_usable = lambda key: book.usable_token(LeaseKey.projection(*key)) is not None
    closers.push_async_callback(coordinator.close)
    await coordinator.start()
    closers.push_async_callback(coordinator.leave)
    log.warning(
        "cluster member %s at %s: %d live members, owns shards %s and %d read-side projections",
        parts.member_id,
        cluster.advertised_address,
        len(coordinator.members),
        coordinator.owned_shards(),
        len(coordinator.owned_projections()),
    )
    return coordinator


def cluster_read_side_services(
    parts: ClusterParts, coordinator: Coordinator, read_sides: ReadSides, settings: Settings
) -> ReadSides:
    """The read sides with manager services that act on each projection wherever it runs."""
    operations = ClusterReadSides(
        read_sides.runtime,
        lambda: coordinator.projection_owners,
        parts.peers,
        settings.cluster.advertised_address,
        settings.server.command_timeout_s,
    )
    return replace(read_sides, services=read_side_services(operations), operations=operations)

"""The composition root: the only place that picks concrete classes and wires one node together.

A node starts in named steps, in dependency order (`Node.start`), and every step registers what it
opened on one exit stack, so a stop (or a failed start) closes everything in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.api.cluster_members import cluster_members_route
from chiefofstate.api.command_path import CommandPath
from chiefofstate.api.cos_service import ChiefOfStateService
from chiefofstate.api.grpc_server import GrpcServer
from chiefofstate.api.management import ManagementServer, Route, SmallHttpServer, metrics_route
from chiefofstate.api.subscription_rpcs import UnsubscribeElsewhere
from chiefofstate.api.tls import ServerTls, load_server_tls
from chiefofstate.api.token_file import TokenFile
from chiefofstate.cluster.coordinator import Coordinator
from chiefofstate.config.settings import Settings
from chiefofstate.core.errors import ConfigError, CosError
from chiefofstate.entities.command_processor import CommandProcessor, CommandSettings, CommitListener
from chiefofstate.entities.gate import OPEN_GATE, ShardGate
from chiefofstate.entities.host import EntityHost, HostSettings
from chiefofstate.entities.snapshotter import Snapshotter
from chiefofstate.journal.deciding import DecidingCommands
from chiefofstate.journal.group_commit import GroupCommitWriter
from chiefofstate.node.cluster import cluster_parts, cluster_read_side_services, start_cluster
from chiefofstate.node.console import start_console
from chiefofstate.node.gauges import register_cluster_readings, register_node_readings
from chiefofstate.node.gc_tuning import freeze_start_up_heap
from chiefofstate.node.read_side_gauges import ReadSideGauges
from chiefofstate.node.read_sides import ReadSides, open_read_sides
from chiefofstate.node.stores import (
    exclusive_use,
    memory_offset_store,
    open_memory_store,
    open_store,
    state_reads,
)
from chiefofstate.node.subscriptions import open_subscriptions
from chiefofstate.node.write_side import create_write_handler
from chiefofstate.ports.cluster import Member
from chiefofstate.ports.journal import Journal
from chiefofstate.ports.read_handler import ReadHandler
from chiefofstate.ports.write_handler import WriteHandler
from chiefofstate.subscription.hub import SubscriptionHub
from chiefofstate.telemetry.grpc_metrics import GrpcServerMetrics
from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.otlp_metrics import OtlpMetrics
from chiefofstate.telemetry.tracing import Tracing
from chiefofstate.writeside.instrumented import InstrumentedWriteHandler

if TYPE_CHECKING:
    from chiefofstate.api.http_server import HttpServer

log = logging.getLogger("chiefofstate.node")

READY_PING_TIMEOUT_S = 2.0


class Node:
    """Starts in dependency order and stops in reverse; `ready` only once the store is migrated."""

    def __init__(
        self,
        settings: Settings,
        *,
        write_handler: WriteHandler | None = None,
        read_handlers: Mapping[str, ReadHandler] | None = None,
        memory_store: bool = False,
    ) -> None:
        """`write_handler` replaces the configured gRPC/HTTP one (library mode: the application's handler
        called in this process), and `read_handlers` the read handlers of the read sides they name;
        `memory_store` keeps the journal (and the read sides' offsets) in this process's memory instead
        of the configured database (library mode, tests; a node alone)."""
        self.settings = settings
        self._write_handler = write_handler
        self._read_handlers = read_handlers
        self._memory_store = memory_store
        self.commands: CommandPath | None = None
        self.journal: Journal | None = None
        self.host: EntityHost | None = None
        self.grpc: GrpcServer | None = None
        self.http: HttpServer | None = None
        self.subscriptions: SubscriptionHub | None = None
        self.read_sides: ReadSides | None = None
        self.coordinator: Coordinator | None = None
        self._serving = False
        self.management: ManagementServer | None = None
        self.metrics_server: SmallHttpServer | None = None
        self.metrics = NodeMetrics()
        self.tracing: Tracing | None = None
        self.tls: ServerTls | None = None
        self.tokens: TokenFile | None = None
        self._closers = contextlib.AsyncExitStack()
        self._stopping = False
        # who this process is when it answers alone for its "cluster" (GET /cluster/members)
        self._incarnation = str(uuid.uuid4())
        self._started_at_ms = time.time_ns() // 1_000_000
        self.schema_version: int | None = None

    def _note_schema_version(self, version: int) -> None:
        self.schema_version = version

    async def start(self) -> None:
        try:
            await self._start_parts()
        except BaseException:
            await self._closers.aclose()
            raise

    async def _start_parts(self) -> None:
        self.tracing = Tracing(self.settings.tracing)
        self._closers.callback(self.tracing.shutdown)  # flushes buffered spans last, after everything else
        if self.settings.security.tls is not None:
            tls = self.tls = await load_server_tls(self.settings.security.tls)
            tls.start()
            self._closers.push_async_callback(tls.close)
        security = self.settings.security
        if security.tokens_file is not None and security.tokens is not None:
            tokens = TokenFile(security.tokens_file, security.tokens, security.reload_interval_s)
            self.tokens = tokens
            tokens.start()
            self._closers.push_async_callback(tokens.close)
        journal = self.journal = await (
            open_memory_store(self.settings)
            if self._memory_store
            else open_store(self.settings, on_migrated=self._note_schema_version)
        )
        self._closers.push_async_callback(journal.close)
        processor, writer, snapshotter = await self._start_write_path(journal, self.tracing)
        cluster = cluster_parts(self.settings, self.tls) if self.settings.cluster.enabled else None
        self.host = self._start_entities(processor, self.tracing, cluster.gate if cluster else OPEN_GATE)
        register_node_readings(self.metrics, self.host, processor, snapshotter, writer, self.subscriptions)
        forwarder = None
        unsubscribe_elsewhere = None
        if cluster is not None:
            self.coordinator = await start_cluster(
                cluster,
                self.settings,
                self.host,
                self._closers,
                tracing=self.tracing,
                metrics=self.metrics,
                tls=self.tls,
                tokens=self.tokens,
                subscriptions=self.subscriptions,
                read_sides=self.read_sides,
            )
            if self.subscriptions is not None:
                unsubscribe_elsewhere = cluster.unsubscribe_elsewhere(self.coordinator)
            register_cluster_readings(self.metrics, self.coordinator, processor)
            if self.read_sides is not None:
                self.read_sides = cluster_read_side_services(
                    cluster, self.coordinator, self.read_sides, self.settings
                )
            forwarder = cluster.forwarder(self.settings, self.tracing, self.metrics)
        commands = self.commands = CommandPath(
            self.host,
            self.settings.server.command_timeout_s,
            tracing=self.tracing,
            metrics=self.metrics,
            forwarder=forwarder,
        )
        await self._start_operator_endpoints()
        # Closed first on stop: new calls are refused while in-flight ones get the grace period.
        self._closers.push_async_callback(self._stop_api_servers)
        serving = await self._start_api_servers(commands, unsubscribe_elsewhere)
        self._start_otlp_metrics()
        self._serving = True
        await self._follow_readiness_on_grpc_health()
        server = self.settings.server
        log.warning(
            "chiefofstate node serving %s, management on %s:%d%s",
            ", ".join(serving),
            server.management_address,
            self.management.port if self.management is not None else server.management_port,
            ", subscriptions on" if self.subscriptions is not None else "",
        )

    async def _start_write_path(
        self, journal: Journal, tracing: Tracing
    ) -> tuple[CommandProcessor, GroupCommitWriter, Snapshotter]:
        """The group-commit writer, the snapshotter, the write handler, what listens to commits (read
        sides, subscriptions) and the command processor that ties them together."""
        settings, closers, metrics = self.settings, self._closers, self.metrics
        deciding = DecidingCommands()
        writer = GroupCommitWriter(
            journal,
            max_batch=settings.journal_writer.max_batch,
            max_pending=settings.journal_writer.max_pending,
            tracing=tracing,
            metrics=metrics,
            deciding=deciding,
        )
        writer.start()
        closers.push_async_callback(writer.close)  # flushes what is queued before the store closes
        snapshotter = Snapshotter(journal, settings.snapshots)
        snapshotter.start()
        closers.push_async_callback(snapshotter.close)
        handler: WriteHandler = InstrumentedWriteHandler(
            self._write_handler
            or create_write_handler(settings.write_side, settings.server.max_message_bytes),
            tracing,
            metrics,
            settings.write_side.protocol,
            (settings.write_side.host, settings.write_side.port),
        )
        closers.push_async_callback(handler.close)
        listeners = await self._start_commit_listeners(journal, tracing)
        processor = CommandProcessor(
            handler,
            state_reads(settings.store, journal, deciding, closers),
            writer,
            snapshotter,
            CommandSettings(
                propagated_headers=settings.write_side.propagated_headers,
                persisted_headers=settings.write_side.persisted_headers,
                validation=settings.write_side.validation,
                call_timeout_s=settings.write_side.call_timeout_s,
                legacy_headers_data=settings.write_side.legacy_headers_data,
            ),
            listeners=listeners,
            tracing=tracing,
            deciding=deciding,
        )
        return processor, writer, snapshotter

    async def _start_commit_listeners(self, journal: Journal, tracing: Tracing) -> list[CommitListener]:
        """Subscriptions and read sides, each told of every commit of this node."""
        settings, closers, metrics = self.settings, self._closers, self.metrics
        listeners: list[CommitListener] = []
        if settings.subscription_enabled:
            self.subscriptions, hub_listeners = await open_subscriptions(settings, journal, closers)
            listeners.extend(hub_listeners)
        if settings.read_side_enabled:
            read_sides = self.read_sides = await open_read_sides(
                settings,
                closers,
                tracing=tracing,
                metrics=metrics,
                clustered=settings.cluster.enabled,
                handlers=self._read_handlers,
                in_memory=(journal, memory_offset_store()) if self._memory_store else None,
            )
            if read_sides.command_traces is not None:
                listeners.append(read_sides.command_traces)
            listeners.append(read_sides.runtime)  # wakes the shard's projections on each commit
            gauges = ReadSideGauges(read_sides.runtime, metrics, settings.server.health_check_interval_s)
            gauges.start()
            closers.push_async_callback(gauges.close)
        return listeners

    def _start_entities(self, processor: CommandProcessor, tracing: Tracing, gate: ShardGate) -> EntityHost:
        settings = self.settings
        host = EntityHost(
            processor,
            HostSettings(
                num_shards=settings.num_shards,
                cache_capacity=settings.entities.cache_capacity,
                idle_timeout_s=settings.entities.idle_timeout_s,
                mailbox_capacity=settings.entities.mailbox_capacity,
            ),
            tracing=tracing,
            gate=gate,
        )
        host.start()
        self._closers.push_async_callback(host.close)
        return host

    async def _start_operator_endpoints(self) -> None:
        """/alive, /ready and the admin console on the management port, /metrics on the Prometheus
        port."""
        server, closers = self.settings.server, self._closers
        management = self.management = ManagementServer(
            server.management_address, server.management_port, self.readiness, reuse_port=server.reuse_port
        )
        management.add_route("/cluster/members", self._cluster_members_route())
        with _binding("COS_MANAGEMENT_PORT", server.management_address, server.management_port):
            await management.start()
        closers.push_async_callback(management.close)
        if self.settings.console.enabled and self.journal is not None:
            # Closed before the management server (exit stack): its pages stop answering first.
            await start_console(
                self.settings,
                management,
                closers,
                journal=self.journal,
                metrics=self.metrics,
                readiness=self.readiness,
                started_at_ms=self._started_at_ms,
                incarnation=self._incarnation,
                schema_version=self.schema_version,
                read_sides=self.read_sides,
                coordinator=self.coordinator,
                subscriptions=self.subscriptions,
                tokens=self.tokens,
                alone=lambda: [self._alone()],
                handler_in_process=self._write_handler is not None,
            )
        metrics_server = self.metrics_server = SmallHttpServer(
            server.prometheus_address,
            server.prometheus_port,
            {"/metrics": metrics_route(self.metrics.exposition)},
        )
        with _binding("COS_PROMETHEUS_PORT", server.prometheus_address, server.prometheus_port):
            await metrics_server.start()
        closers.push_async_callback(metrics_server.close)

    def _start_otlp_metrics(self) -> None:
        """Metrics over OTLP too, once every part has registered its Prometheus series (the node's own
        metrics are pushed from that registry); stopped, with a last push, before the tracer."""
        tracing = self.settings.tracing
        if not tracing.otlp_metrics:
            return
        otlp = OtlpMetrics.exporting(
            tracing.service_name,
            self.metrics.registry,
            tracing.otlp_metrics_protocol,
            tracing.otlp_metrics_interval_s,
            tracing.otlp_metrics_timeout_s,
        )
        self.metrics.otlp = otlp
        otlp.start()
        self._closers.push_async_callback(otlp.close)

    def _cluster_members_route(self) -> Route:
        """Upstream's GET /cluster/members: this cluster's live members as the coordinator last saw
        them, or this node alone when it is not a cluster member (SQLite, or one node per journal)."""
        coordinator, cluster = self.coordinator, self.settings.cluster
        if coordinator is not None:
            return cluster_members_route(cluster.advertised_address, lambda: coordinator.members)
        alone = self._alone()
        return cluster_members_route(alone.address, lambda: [alone])

    def _alone(self) -> Member:
        """This node as the only member of its "cluster" (not a cluster member)."""
        return Member(
            member_id=self._incarnation,
            address=f"{socket.gethostname()}:{self.settings.cluster.port}",
            num_shards=self.settings.num_shards,
            started_at_ms=self._started_at_ms,
            heartbeat_age_s=0.0,
        )

    async def _start_api_servers(
        self, commands: CommandPath, unsubscribe_elsewhere: UnsubscribeElsewhere | None
    ) -> list[str]:
        """gRPC and/or HTTP (COS_SERVER_PROTOCOL) on one command path; returns what serves where."""
        server = self.settings.server
        serving = []
        if server.protocol in ("grpc", "both"):
            with _binding("COS_PORT", server.address, server.port):
                grpc_server = self.grpc = GrpcServer(
                    ChiefOfStateService(commands, self.subscriptions, unsubscribe_elsewhere),
                    server.address,
                    server.port,
                    server.max_message_bytes,
                    # ReadSideManagerService only with COS_READ_SIDE_ENABLED=true (docs/contract.md §1).
                    extra_services=self.read_sides.services if self.read_sides is not None else (),
                    metrics=GrpcServerMetrics(self.metrics),
                    reuse_port=server.reuse_port,
                    credentials=self.tls.grpc_server_credentials() if self.tls is not None else None,
                    reflection_enabled=self.settings.security.reflection_enabled,
                    tokens=self.tokens,
                    tracing=self.tracing,
                    limits=self.settings.grpc_limits,
                )
                await grpc_server.start()
            serving.append(f"gRPC{self._guards()} on {server.address}:{grpc_server.port}")
        if server.protocol in ("http", "both"):
            # Imported only when served: the HTTP framework's import is about half of a gRPC-only node's
            # start-up (docs/performance.md, "Start-up").
            from chiefofstate.api.auth import TokenMiddleware
            from chiefofstate.api.http_api import create_http_api
            from chiefofstate.api.http_metrics import HttpServerMetrics
            from chiefofstate.api.http_server import HttpServer
            from chiefofstate.api.http_tracing import HttpServerSpans

            # Both protocols share one command path: the same host, deadlines and logging.
            app = create_http_api(
                commands,
                # base64 makes a body about 4/3 of the message it carries
                max_body_bytes=server.max_message_bytes * 4 // 3 + 64 * 1024,
                body_timeout_s=self.settings.http_limits.body_timeout_s,
            )
            measured = HttpServerMetrics(app, self.metrics) if self.settings.tracing.otlp_metrics else app
            guarded = TokenMiddleware(measured, self.tokens) if self.tokens is not None else measured
            http_server = self.http = HttpServer(
                HttpServerSpans(guarded, self.tracing) if self.tracing and self.tracing.enabled else guarded,
                server.http_address,
                server.http_port,
                server.shutdown_timeout_s,
                limits=self.settings.http_limits,
                ssl_context=self.tls.http_context() if self.tls is not None else None,
                reuse_port=server.reuse_port,
            )
            with _binding("COS_HTTP_PORT", server.http_address, server.http_port):
                await http_server.start()
            serving.append(f"HTTP{self._guards()} on {server.http_address}:{http_server.port}")
        return serving

    def _guards(self) -> str:
        """How the client-facing ports are protected, for the start-up line (docs/operations.md)."""
        tls, tokens = self.tls, self.tokens
        guards = []
        if tls is not None:
            guards.append("mutual TLS" if tls.requires_client_certificates else "TLS")
        if tokens is not None:
            guards.append("bearer tokens")
        return f" ({', '.join(guards)})" if guards else ""

    async def _follow_readiness_on_grpc_health(self) -> None:
        if self.grpc is None:
            return
        await self.grpc.set_serving(True)
        # The gRPC health service follows readiness, so probes see a lost database too.
        monitor = asyncio.create_task(self._follow_readiness(self.grpc), name="health-monitor")
        self._closers.push_async_callback(cancel_and_wait, monitor)

    async def _stop_api_servers(self) -> None:
        if self.subscriptions is not None:
            # Subscription streams never end by themselves; end them so they do not hold the
            # gRPC server for its whole grace period.
            self.subscriptions.close()
        timeout_s = self.settings.server.shutdown_timeout_s
        stops = [self.grpc.stop(timeout_s)] if self.grpc is not None else []
        if self.http is not None:
            stops.append(self.http.stop())
        for outcome in await asyncio.gather(*stops, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("stopping an API server failed: %s", outcome)

    async def _follow_readiness(self, grpc_server: GrpcServer) -> None:
        serving = True
        while True:
            await asyncio.sleep(self.settings.server.health_check_interval_s)
            reason = await self.readiness()
            if (reason is None) != serving:
                serving = reason is None
                await grpc_server.set_serving(serving)
                log.warning("health: %s", "SERVING" if serving else f"NOT_SERVING ({reason})")

    async def readiness(self) -> str | None:
        if not self._serving or self.journal is None:
            return "starting"
        if self._stopping:
            return "shutting down"
        if self.coordinator is not None and not self.coordinator.settled.is_set():
            return "taking this member's share of the shards"
        try:
            await asyncio.wait_for(self.journal.ping(), READY_PING_TIMEOUT_S)
        except (CosError, TimeoutError) as error:
            return f"store unreachable: {error}"
        return None

    async def stop(self) -> None:
        """Stop taking work, let in-flight commands finish, flush the journal writer, close pools."""
        if self._stopping:
            return
        self._stopping = True
        started = time.monotonic()
        leaving = None
        if self.coordinator is not None:
            # The shards are handed over while the API servers let their calls in flight finish, not
            # after: those calls are drained by the handover too, and what arrives meanwhile for the
            # shards is forwarded to their next owners. The shutdown sequence awaits the same leave.
            leaving = asyncio.create_task(self.coordinator.leave(), name="leave the cluster")
        try:
            await self._closers.aclose()
        finally:
            await cancel_and_wait(leaving)
        log.warning("chiefofstate node stopped in %.2fs", time.monotonic() - started)


@contextlib.contextmanager
def _binding(variable: str, address: str, port: int) -> Iterator[None]:
    """A port taken between `cos serve`'s check and the bind (cli/port_check.py) still ends as one
    line naming the port and its variable, exit 2 (docs/operations.md, "Start-up failures")."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        text = str(error).lower()
        in_use = getattr(error, "errno", None) == errno.EADDRINUSE or "bind" in text or "in use" in text
        if not in_use:
            raise
        raise ConfigError(
            variable, f"cannot listen on {address}:{port}: is the port already in use?"
        ) from None


async def run_until_signalled(settings: Settings) -> None:
    """Run a node until SIGTERM or SIGINT, then shut it down gracefully.

    Before anything is built, migrated or bound, and for the process's life, the store is claimed: a
    second node on one SQLite file is refused (exit 2) without touching it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with exclusive_use(settings.store, "starting another node"):
        node = Node(settings)
        try:
            if await _started_unless_stopped(node, stop):
                freeze_start_up_heap()
                await stop.wait()
            log.warning("shutdown requested")
        finally:
            await node.stop()


async def _started_unless_stopped(node: Node, stop: asyncio.Event) -> bool:
    """Start `node`, or give up on starting it when `stop` is set first: a start can wait a long time
    (store retries, a cluster settling), and a worker told to stop meanwhile must still exit promptly
    instead of holding its supervisor (and the machine's shutdown) until the start is over."""
    starting = asyncio.create_task(node.start(), name="node-start")
    stopping = asyncio.create_task(stop.wait(), name="stop-requested")
    try:
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        await cancel_and_wait(starting, stopping)
        raise
    stopping.cancel()
    if starting.done():
        starting.result()  # a failed start raises here
        return True
    log.warning("shutdown requested while starting: start-up abandoned")
    await cancel_and_wait(starting)  # Node.start closes whatever it had opened
    return False

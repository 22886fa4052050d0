"""Builds the node's gRPC server: the CoS service, standard health and server reflection (D11; reflection
can be turned off), with server metrics for every method when given GrpcServerMetrics, bearer-token checks
when given the tokens (each handler wrapped once, as it is added), TLS when given credentials, and the
connection limits of COS_GRPC_SERVER_* (docs/operations.md, "gRPC connection limits")."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chiefofstate.api.auth import token_checking_server
from chiefofstate.api.cos_service import COS_SERVICE_NAME, ChiefOfStateService, add_to_server
from chiefofstate.api.token_file import TokenFile
from chiefofstate.api.undecodable import request_checking_server
from chiefofstate.config.grpc_limits import GrpcLimits
from chiefofstate.telemetry.grpc_metrics import GrpcServerMetrics, measured_server
from chiefofstate.telemetry.grpc_spans import traced_server
from chiefofstate.telemetry.tracing import Tracing

# (full service name, function adding its servicer to the server): services only some nodes serve,
# such as ReadSideManagerService with COS_READ_SIDE_ENABLED=true (docs/contract.md §1).
ServiceRegistration = tuple[str, Callable[[aio.Server], None]]
DEFAULT_LIMITS = GrpcLimits()


class GrpcServer:
    def __init__(
        self,
        service: ChiefOfStateService,
        address: str,
        port: int,
        max_message_bytes: int,
        extra_services: Sequence[ServiceRegistration] = (),
        metrics: GrpcServerMetrics | None = None,
        *,
        reuse_port: bool = False,
        credentials: grpc.ServerCredentials | None = None,
        reflection_enabled: bool = True,
        tokens: TokenFile | None = None,
        tracing: Tracing | None = None,
        limits: GrpcLimits = DEFAULT_LIMITS,
        unwrapped_services: Sequence[Callable[[aio.Server], None]] = (),
    ) -> None:
        """`unwrapped_services` are registered on the server itself, without the token check, span and
        metrics wrappers: services that check and trace each request they carry themselves (the cluster
        port's forwarding streams, api/forwarding_service.py)."""
        self._server = aio.server(
            # Beyond it a call is refused at once with RESOURCE_EXHAUSTED instead of queueing.
            maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # A restarted node must be able to rebind at once; two live nodes must not share a port,
                # unless they are workers of one supervisor (`reuse_port`), among which the kernel
                # spreads the connections (docs/cluster.md, "Workers").
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                # The header list bound is above gRPC's 8/16 KiB defaults, so that headers too large to
                # carry on reach the command path and get its INVALID_ARGUMENT (docs/contract.md §3.1)
                # instead of the transport's RESOURCE_EXHAUSTED, which reads as "the node is overloaded".
                *limits.server_options(),
            ],
        )
        # Each layer wraps what the one outside it wrapped, so at a call the layer nearest the server runs
        # first: metrics, then the token check, then the refusal of undecodable requests, then the service.
        registry: aio.Server = measured_server(self._server, metrics) if metrics is not None else self._server
        if tracing is not None and tracing.enabled:
            # the standard server span, around everything below it (a refused token included)
            registry = traced_server(registry, tracing)
        if tokens is not None:
            registry = token_checking_server(registry, tokens)
        registry = request_checking_server(registry)
        add_to_server(service, registry)
        for _, register in extra_services:
            register(registry)
        for register_unwrapped in unwrapped_services:
            register_unwrapped(self._server)
        self._service_names = [COS_SERVICE_NAME, *(name for name, _ in extra_services)]
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registry)
        served = [*self._service_names, health.SERVICE_NAME]
        if reflection_enabled:  # COS_GRPC_REFLECTION_ENABLED (docs/operations.md, "Security")
            served.append(reflection.SERVICE_NAME)
            reflection.enable_server_reflection(served, registry)
        if metrics is not None:
            metrics.initialize(served)
        if credentials is not None:
            self.port = self._server.add_secure_port(f"{address}:{port}", credentials)
        else:
            self.port = self._server.add_insecure_port(f"{address}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind the gRPC port {address}:{port}")

    async def start(self) -> None:
        await self.set_serving(False)
        await self._server.start()

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self._service_names):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls at once and give in-flight ones `grace_s` to finish."""
        await self.set_serving(False)
        await self._server.stop(grace_s)

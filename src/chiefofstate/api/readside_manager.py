"""`chief_of_state.v1.ReadSideManagerService` and the project's `ReadSideAdminService` (docs/contract.md §6).

Served only when COS_READ_SIDE_ENABLED=true. Upstream semantics, with decision D6: an unknown read side
is NOT_FOUND at once, a shard out of range is INVALID_ARGUMENT in every by-shard rpc, skip moves past the
next unprocessed event of the shard and answers once the new offset is stored, and offsets are read from
the store. Upstream's messages cannot say that a projection is halted (decision D7), so every answer
carries the targeted projections' states in the `x-cos-read-side-state` trailer, e.g.
`running=0-2,4-15;halted=3`: in cluster mode, every projection of the cluster, wherever it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, TypeVar

from grpc import aio

from chiefofstate.api.grpc_errors import abort_with
from chiefofstate.api.grpc_server import ServiceRegistration
from chiefofstate.core.errors import CosError, as_cos_error
from chiefofstate.core.headers import Metadata, admin_caller
from chiefofstate.core.readside_rules import ProjectionState
from chiefofstate.gen.chief_of_state.v1 import manager_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import ReadSideOffset
from chiefofstate.gen.chief_of_state.v1.manager_pb2_grpc import (
    ReadSideManagerServiceServicer,
    add_ReadSideManagerServiceServicer_to_server,
)
from chiefofstate.gen.chiefofstate.internal.v1 import readside_admin_pb2 as admin
from chiefofstate.gen.chiefofstate.internal.v1.readside_admin_pb2_grpc import (
    ProjectionHoldServiceServicer,
    ReadSideAdminServiceServicer,
    add_ProjectionHoldServiceServicer_to_server,
    add_ReadSideAdminServiceServicer_to_server,
)
from chiefofstate.readside.runtime import ReadSideRuntime, ReadSideView

STATE_TRAILER = "x-cos-read-side-state"

log = logging.getLogger("chiefofstate.readside")

Context = aio.ServicerContext[object, object]
Result = TypeVar("Result")

_STATES = {
    ProjectionState.RUNNING: admin.PROJECTION_STATE_RUNNING,
    ProjectionState.PAUSED: admin.PROJECTION_STATE_PAUSED,
    ProjectionState.HALTED: admin.PROJECTION_STATE_HALTED,
    ProjectionState.STOPPED: admin.PROJECTION_STATE_STOPPED,
    ProjectionState.RESTARTING: admin.PROJECTION_STATE_RESTARTING,
    ProjectionState.DISABLED: admin.PROJECTION_STATE_DISABLED,
    ProjectionState.UNASSIGNED: admin.PROJECTION_STATE_UNASSIGNED,
}


class ReadSideOperations(Protocol):
    """What the services act on: a lone node's runtime, or a cluster member's view that acts on each
    projection wherever it runs (cluster/readside_routing.py)."""

    @property
    def num_shards(self) -> int: ...

    async def offsets(self, read_side_id: str) -> list[tuple[int, int]]: ...

    async def offset(self, read_side_id: str, shard: int) -> int: ...

    async def pause(self, read_side_id: str, shard: int | None = None) -> None: ...

    async def resume(self, read_side_id: str, shard: int | None = None) -> None: ...

    async def restart(self, read_side_id: str, shard: int | None = None) -> None: ...

    async def skip(self, read_side_id: str, shard: int | None = None) -> list[tuple[int, int]]: ...

    async def views(
        self, read_side_id: str | None = None, shard: int | None = None
    ) -> list[ReadSideView]: ...

    async def trailer_states(
        self, read_side_id: str, shard: int | None = None
    ) -> dict[int, ProjectionState]: ...


Operation = Literal["pause", "resume", "restart", "skip"]
OPERATIONS: tuple[Operation, ...] = ("pause", "resume", "restart", "skip")


async def perform(
    runtime: ReadSideOperations,
    operation: Operation,
    read_side_id: str,
    shard: int | None,
    caller: Metadata,
) -> list[tuple[int, int]]:
    """One manager operation, as every way in asks for it (the gRPC manager service and the admin
    console): on one shard or, with `shard` None, the whole read side, wherever its projections run.
    `caller` is the asking call's metadata: its token goes along to the members that run them. Returns
    (shard, ordering skipped) for skip, [] otherwise."""
    admin_caller.set(tuple(caller))
    if operation == "pause":
        await runtime.pause(read_side_id, shard)
    elif operation == "resume":
        await runtime.resume(read_side_id, shard)
    elif operation == "restart":
        await runtime.restart(read_side_id, shard)
    else:
        return await runtime.skip(read_side_id, shard)
    return []


def summarise_states(states: dict[int, ProjectionState]) -> str:
    """`running=0-2,4-15;halted=3`: shards grouped by state, runs of shards written as ranges."""
    by_state: dict[ProjectionState, list[int]] = {}
    for shard in sorted(states):
        by_state.setdefault(states[shard], []).append(shard)
    groups = []
    for state, shards in by_state.items():
        runs: list[list[int]] = []
        for shard in shards:
            if runs and shard == runs[-1][-1] + 1:
                runs[-1].append(shard)
            else:
                runs.append([shard])
        text = ",".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)
        groups.append(f"{state.value}={text}")
    return ";".join(groups)


class ReadSideManagerService(ReadSideManagerServiceServicer):
    def __init__(self, runtime: ReadSideOperations) -> None:
        self._runtime = runtime

    async def _answer(
        self,
        context: Context,
        read_side_id: str,
        shard: int | None,
        action: Callable[[], Awaitable[Result]],
    ) -> Result:
        admin_caller.set(tuple(context.invocation_metadata() or ()))
        try:
            result = await action()
        except Exception as error:  # CosErrors keep their status; anything else is INTERNAL (§6)
            await abort_with(context, as_cos_error(error))
            raise
        try:
            states = await self._runtime.trailer_states(read_side_id, shard)
        except CosError as error:  # the answer stands; only its trailer is left out
            log.warning("read side %s: states for the answer's trailer unavailable (%s)", read_side_id, error)
            states = {}
        if states:
            context.set_trailing_metadata(((STATE_TRAILER, summarise_states(states)),))
        return result

    async def _operate(
        self, context: Context, operation: Operation, read_side_id: str, shard: int | None
    ) -> list[tuple[int, int]]:
        caller = tuple(context.invocation_metadata() or ())
        return await self._answer(
            context,
            read_side_id,
            shard,
            lambda: perform(self._runtime, operation, read_side_id, shard, caller),
        )

    async def GetLatestOffset(
        self, request: pb.GetLatestOffsetRequest, context: Context
    ) -> pb.GetLatestOffsetResponse:
        offsets = await self._answer(
            context, request.read_side_id, None, lambda: self._runtime.offsets(request.read_side_id)
        )
        return pb.GetLatestOffsetResponse(
            offsets=[ReadSideOffset(cluster_shard_number=shard, offset=offset) for shard, offset in offsets]
        )

    async def GetLatestOffsetByShard(
        self, request: pb.GetLatestOffsetByShardRequest, context: Context
    ) -> pb.GetLatestOffsetByShardResponse:
        shard = request.cluster_shard_number
        offset = await self._answer(
            context, request.read_side_id, shard, lambda: self._runtime.offset(request.read_side_id, shard)
        )
        return pb.GetLatestOffsetByShardResponse(
            offsets=ReadSideOffset(cluster_shard_number=shard, offset=offset)
        )

    async def RestartReadSide(
        self, request: pb.RestartReadSideRequest, context: Context
    ) -> pb.RestartReadSideResponse:
        await self._operate(context, "restart", request.read_side_id, None)
        return pb.RestartReadSideResponse(successful=True)

    async def RestartReadSideByShard(
        self, request: pb.RestartReadSideByShardRequest, context: Context
    ) -> pb.RestartReadSideByShardResponse:
        shard = request.cluster_shard_number
        await self._operate(context, "restart", request.read_side_id, shard)
        return pb.RestartReadSideByShardResponse(successful=True)

    async def PauseReadSide(
        self, request: pb.PauseReadSideRequest, context: Context
    ) -> pb.PauseReadSideResponse:
        await self._operate(context, "pause", request.read_side_id, None)
        return pb.PauseReadSideResponse(successful=True)

    async def PauseReadSideByShard(
        self, request: pb.PauseReadSideByShardRequest, context: Context
    ) -> pb.PauseReadSideByShardResponse:
        shard = request.cluster_shard_number
        await self._operate(context, "pause", request.read_side_id, shard)
        return pb.PauseReadSideByShardResponse(successful=True)

    async def ResumeReadSide(
        self, request: pb.ResumeReadSideRequest, context: Context
    ) -> pb.ResumeReadSideResponse:
        await self._operate(context, "resume", request.read_side_id, None)
        return pb.ResumeReadSideResponse(successful=True)

    async def ResumeReadSideByShard(
        self, request: pb.ResumeReadSideByShardRequest, context: Context
    ) -> pb.ResumeReadSideByShardResponse:
        shard = request.cluster_shard_number
        await self._operate(context, "resume", request.read_side_id, shard)
        return pb.ResumeReadSideByShardResponse(successful=True)

    async def SkipOffset(self, request: pb.SkipOffsetRequest, context: Context) -> pb.SkipOffsetResponse:
        await self._operate(context, "skip", request.read_side_id, None)
        return pb.SkipOffsetResponse(successful=True)

    async def SkipOffsetByShard(
        self, request: pb.SkipOffsetByShardRequest, context: Context
    ) -> pb.SkipOffsetByShardResponse:
        shard = request.cluster_shard_number
        await self._operate(context, "skip", request.read_side_id, shard)
        return pb.SkipOffsetByShardResponse(successful=True)


def _status(view: ReadSideView) -> admin.ReadSideStatus:
    settings = view.settings
    status = admin.ReadSideStatus(
        read_side_id=settings.read_side_id,
        protocol=settings.protocol,
        target=settings.target,
        failure_policy=settings.failure_policy.value,
        enabled=settings.enabled,
        auto_start=settings.auto_start,
    )
    for shard in view.shards:
        row = status.shards.add(
            cluster_shard_number=shard.shard,
            journal_offset=shard.head,
            lag=shard.lag.events,
            lag_capped=shard.lag.capped,
            state=_STATES[shard.state],
            detail=shard.detail,
            member=shard.member,
        )
        if shard.offset is not None:
            row.offset = shard.offset
        if shard.halt is not None:
            row.halted_on_offset = shard.halt.event_offset
            row.halted_at = shard.halt.halted_at_ms
    return status


class ReadSideAdminService(ReadSideAdminServiceServicer):
    """What `cos readside list` shows; see readside_admin.proto."""

    def __init__(self, runtime: ReadSideOperations) -> None:
        self._runtime = runtime

    async def ListReadSides(
        self, request: admin.ListReadSidesRequest, context: Context
    ) -> admin.ListReadSidesResponse:
        shard = request.cluster_shard_number if request.HasField("cluster_shard_number") else None
        try:
            views = await self._runtime.views(request.read_side_id or None, shard)
        except Exception as error:
            await abort_with(context, as_cos_error(error))
            raise
        return admin.ListReadSidesResponse(
            read_sides=[_status(view) for view in views], num_shards=self._runtime.num_shards
        )


class ProjectionHoldService(ProjectionHoldServiceServicer):
    """A cluster member's internal port: holds and releases the projections it runs for a
    whole-read-side operation asked by another member (readside/operations.py)."""

    def __init__(self, runtime: ReadSideRuntime) -> None:
        self._runtime = runtime

    async def Hold(self, request: admin.HoldRequest, context: Context) -> admin.HoldResponse:
        try:
            token = await self._runtime.hold(
                request.read_side_id, request.cluster_shard_number, request.hold_seconds
            )
        except Exception as error:
            await abort_with(context, as_cos_error(error))
            raise
        return admin.HoldResponse(lease_token=token or 0)

    async def Release(self, request: admin.ReleaseRequest, context: Context) -> admin.ReleaseResponse:
        try:
            await self._runtime.release(request.read_side_id, request.cluster_shard_number)
        except Exception as error:
            await abort_with(context, as_cos_error(error))
            raise
        return admin.ReleaseResponse()


MANAGER_SERVICE = pb.DESCRIPTOR.services_by_name["ReadSideManagerService"].full_name
ADMIN_SERVICE = admin.DESCRIPTOR.services_by_name["ReadSideAdminService"].full_name
HOLD_SERVICE = admin.DESCRIPTOR.services_by_name["ProjectionHoldService"].full_name


def hold_service(runtime: ReadSideRuntime) -> ServiceRegistration:
    """The internal port's hold service (cluster mode only)."""
    service = ProjectionHoldService(runtime)

    def add(server: aio.Server) -> None:
        add_ProjectionHoldServiceServicer_to_server(service, server)

    return (HOLD_SERVICE, add)


def read_side_services(runtime: ReadSideOperations) -> tuple[ServiceRegistration, ...]:
    """Upstream's ReadSideManagerService and this project's admin service (`cos readside list`), both
    acting on `runtime`; served on the gRPC port with COS_READ_SIDE_ENABLED=true (docs/contract.md §1)."""
    manager = ReadSideManagerService(runtime)
    admin_service = ReadSideAdminService(runtime)

    def add_manager(server: aio.Server) -> None:
        add_ReadSideManagerServiceServicer_to_server(manager, server)

    def add_admin(server: aio.Server) -> None:
        add_ReadSideAdminServiceServicer_to_server(admin_service, server)

    return ((MANAGER_SERVICE, add_manager), (ADMIN_SERVICE, add_admin))

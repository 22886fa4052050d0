"""`chief_of_state.v1.ChiefOfStateService` over gRPC (SPEC.md §2.2, §3)."""

from __future__ import annotations

from grpc import aio

from chiefofstate.api.command_path import CommandPath
from chiefofstate.api.grpc_errors import abort_with
from chiefofstate.api.subscription_rpcs import SUBSCRIPTIONS_OFF, SubscriptionRpcs
from chiefofstate.core.errors import CosError
from chiefofstate.core.headers import HeaderValue
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceServicer
from chiefofstate.subscription.hub import SubscriptionHub

__all__ = ["SUBSCRIPTIONS_OFF", "ChiefOfStateService", "request_metadata"]

Context = aio.ServicerContext[object, object]


def request_metadata(context: Context) -> list[tuple[str, HeaderValue]]:
    return [(key, value) for key, value in context.invocation_metadata() or ()]


class ChiefOfStateService(ChiefOfStateServiceServicer):
    def __init__(self, commands: CommandPath, subscriptions: SubscriptionHub | None = None) -> None:
        self._commands = commands
        self._subscriptions = SubscriptionRpcs(subscriptions)

    async def ProcessCommand(
        self, request: pb.ProcessCommandRequest, context: Context
    ) -> pb.ProcessCommandResponse:
        try:
            state = await self._commands.process_command(
                request.entity_id, request.command, request_metadata(context), context.time_remaining()
            )
        except CosError as error:
            await abort_with(context, error)
            raise  # abort raises; this line only satisfies the type checker
        return pb.ProcessCommandResponse(state=state.state, meta=state.meta)

    async def GetState(self, request: pb.GetStateRequest, context: Context) -> pb.GetStateResponse:
        try:
            state = await self._commands.get_state(
                request.entity_id, context.time_remaining(), request_metadata(context)
            )
        except CosError as error:
            await abort_with(context, error)
            raise
        return pb.GetStateResponse(state=state.state, meta=state.meta)

    # Server-streaming rpcs written as coroutines with context.write (grpc's reader/writer API), so
    # the generated base class's iterator return type does not fit; see subscription_rpcs.py.
    async def Subscribe(  # type: ignore[override]
        self, request: pb.SubscribeRequest, context: Context
    ) -> None:
        await self._subscriptions.subscribe(request, context)

    async def SubscribeAll(  # type: ignore[override]
        self, request: pb.SubscribeAllRequest, context: Context
    ) -> None:
        await self._subscriptions.subscribe_all(request, context)

    async def Unsubscribe(self, request: pb.UnsubscribeRequest, context: Context) -> pb.UnsubscribeResponse:
        subscription_id = await self._subscriptions.unsubscribe(request.subscription_id, context)
        return pb.UnsubscribeResponse(subscription_id=subscription_id)

    async def UnsubscribeAll(
        self, request: pb.UnsubscribeAllRequest, context: Context
    ) -> pb.UnsubscribeAllResponse:
        subscription_id = await self._subscriptions.unsubscribe(request.subscription_id, context)
        return pb.UnsubscribeAllResponse(subscription_id=subscription_id)

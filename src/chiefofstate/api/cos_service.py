"""`chief_of_state.v1.ChiefOfStateService` over gRPC (docs/contract.md §2.2, §3)."""

from __future__ import annotations

from typing import Any, cast

import grpc
from grpc import aio

from chiefofstate.api.command_path import CommandPath
from chiefofstate.api.grpc_errors import abort_with
from chiefofstate.api.subscription_rpcs import SUBSCRIPTIONS_OFF, SubscriptionRpcs, UnsubscribeElsewhere
from chiefofstate.core.errors import CosError
from chiefofstate.core.headers import Metadata
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.subscription.hub import SubscriptionHub
from chiefofstate.telemetry.tracing import TRACING_OFF

__all__ = [
    "COS_SERVICE_NAME",
    "SUBSCRIPTIONS_OFF",
    "ChiefOfStateService",
    "add_to_server",
    "request_metadata",
]

COS_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ChiefOfStateService"].full_name

Context = aio.ServicerContext[object, object]


def request_metadata(context: Context) -> Metadata:
    # grpc.aio gives the call's metadata as a tuple of (key, value) pairs: used as it is, not copied.
    return cast(Metadata, context.invocation_metadata() or ())


class ChiefOfStateService:
    """`ProcessCommand` and `GetState` answer with the entity's cached reply bytes (entities/entity.py,
    `EntityState`), registered without a response serializer by `add_to_server`. On a member that
    forwards (`takes_bytes`) they take their requests as bytes too."""

    def __init__(
        self,
        commands: CommandPath,
        subscriptions: SubscriptionHub | None = None,
        unsubscribe_elsewhere: UnsubscribeElsewhere | None = None,
    ) -> None:
        self._commands = commands
        self.takes_bytes = commands is not None and commands.forwards
        tracing = commands.tracing if commands is not None else TRACING_OFF
        self._subscriptions = SubscriptionRpcs(subscriptions, unsubscribe_elsewhere, tracing)

    async def ProcessCommand(self, request: pb.ProcessCommandRequest, context: Context) -> bytes:
        try:
            state = await self._commands.process_command(
                request.entity_id, request.command, request_metadata(context), context.time_remaining()
            )
        except CosError as error:
            await abort_with(context, error)
            raise  # abort raises; this line only satisfies the type checker
        return state.reply

    async def GetState(self, request: pb.GetStateRequest, context: Context) -> bytes:
        cached = self._commands.cached_state(request.entity_id)
        if cached is not None:
            return cached.reply  # without asking the context for the deadline or the metadata
        try:
            state = await self._commands.get_state(
                request.entity_id, context.time_remaining(), request_metadata(context)
            )
        except CosError as error:
            await abort_with(context, error)
            raise
        return state.reply

    # A cluster member's client-facing port takes these two requests as bytes: one for a shard another
    # member serves goes there as it came (CommandPath.process_command_bytes).
    async def process_command_bytes(self, request: bytes, context: Context) -> bytes:
        try:
            return await self._commands.process_command_bytes(
                request, request_metadata(context), context.time_remaining()
            )
        except CosError as error:
            await abort_with(context, error)
            raise

    async def get_state_bytes(self, request: bytes, context: Context) -> bytes:
        try:
            entity_id = self._commands.get_state_entity_id(request)
            cached = self._commands.cached_state(entity_id)
            if cached is not None:
                return cached.reply
            return await self._commands.get_state_bytes(
                entity_id, request, context.time_remaining(), request_metadata(context)
            )
        except CosError as error:
            await abort_with(context, error)
            raise

    # Server-streaming rpcs written as coroutines with context.write (grpc's reader/writer API);
    # see subscription_rpcs.py.
    async def Subscribe(self, request: pb.SubscribeRequest, context: Context) -> None:
        await self._subscriptions.subscribe(request, context)

    async def SubscribeAll(self, request: pb.SubscribeAllRequest, context: Context) -> None:
        await self._subscriptions.subscribe_all(request, context)

    async def Unsubscribe(self, request: pb.UnsubscribeRequest, context: Context) -> pb.UnsubscribeResponse:
        subscription_id = await self._subscriptions.unsubscribe(request.subscription_id, context)
        return pb.UnsubscribeResponse(subscription_id=subscription_id)

    async def UnsubscribeAll(
        self, request: pb.UnsubscribeAllRequest, context: Context
    ) -> pb.UnsubscribeAllResponse:
        subscription_id = await self._subscriptions.unsubscribe(request.subscription_id, context)
        return pb.UnsubscribeAllResponse(subscription_id=subscription_id)


def add_to_server(service: ChiefOfStateService, server: aio.Server) -> None:
    """Registers the service as the generated `add_ChiefOfStateServiceServicer_to_server` would, except
    that ProcessCommand, GetState, Subscribe and SubscribeAll have no response serializer: their replies
    are already bytes; and on a member that forwards, ProcessCommand and GetState have no request
    deserializer either."""
    unary = grpc.unary_unary_rpc_method_handler
    streaming = grpc.unary_stream_rpc_method_handler
    process_command: grpc.RpcMethodHandler[Any, Any]
    get_state: grpc.RpcMethodHandler[Any, Any]
    if service.takes_bytes:
        # No request deserializer either: the handlers decode what they serve themselves.
        process_command = unary(service.process_command_bytes, None, None)
        get_state = unary(service.get_state_bytes, None, None)
    else:
        process_command = unary(service.ProcessCommand, pb.ProcessCommandRequest.FromString, None)
        get_state = unary(service.GetState, pb.GetStateRequest.FromString, None)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "ProcessCommand": process_command,
        "GetState": get_state,
        # Streamed messages are written already serialized (subscription/hub.py, `message_body`).
        "Subscribe": streaming(service.Subscribe, pb.SubscribeRequest.FromString, None),
        "SubscribeAll": streaming(service.SubscribeAll, pb.SubscribeAllRequest.FromString, None),
        "Unsubscribe": unary(
            service.Unsubscribe, pb.UnsubscribeRequest.FromString, pb.UnsubscribeResponse.SerializeToString
        ),
        "UnsubscribeAll": unary(
            service.UnsubscribeAll,
            pb.UnsubscribeAllRequest.FromString,
            pb.UnsubscribeAllResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(COS_SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(COS_SERVICE_NAME, handlers)

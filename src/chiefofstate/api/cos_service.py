"""`chief_of_state.v1.ChiefOfStateService` over gRPC (SPEC.md §2.2, §3)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable

import grpc
from grpc import aio

from chiefofstate.api.grpc_errors import abort_with, as_cos_error
from chiefofstate.core.command_rules import validate_entity_id
from chiefofstate.core.errors import Code, CosError
from chiefofstate.core.headers import HeaderValue
from chiefofstate.entities.deadline import Deadline
from chiefofstate.entities.host import EntityHost
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceServicer

log = logging.getLogger("chiefofstate.api")

SUBSCRIPTIONS_OFF = "Subscription is not enabled; configure subscription to use streaming"

Context = aio.ServicerContext[object, object]


def request_metadata(context: Context) -> list[tuple[str, HeaderValue]]:
    return [(key, value) for key, value in context.invocation_metadata() or ()]


class ChiefOfStateService(ChiefOfStateServiceServicer):
    def __init__(
        self,
        host: EntityHost,
        command_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self._command_timeout_s = command_timeout_s
        self._clock = clock

    def _deadline(self, context: Context) -> Deadline:
        # Decision D4: the caller's deadline and COS_COMMAND_HANDLER_TIMEOUT bound the whole command.
        caller_left = context.time_remaining()
        budget = min(self._command_timeout_s, caller_left if caller_left is not None else math.inf)
        return Deadline(self._clock() + budget, self._clock)

    async def ProcessCommand(
        self, request: pb.ProcessCommandRequest, context: Context
    ) -> pb.ProcessCommandResponse:
        try:
            validate_entity_id(request.entity_id)
            state = await self._host.process_command(
                request.entity_id, request.command, request_metadata(context), self._deadline(context)
            )
        except Exception as failure:
            error = as_cos_error(failure)
            log.warning(
                "command failed: entity_id=%s command_type=%s status=%s message=%s",
                request.entity_id,
                request.command.type_url,
                error.code.name,
                error.message,
                extra={"entity_id": request.entity_id, "status": error.code.name},
                exc_info=not isinstance(failure, CosError),
            )
            await abort_with(context, error)
            raise  # abort raises; this line only satisfies the type checker
        return pb.ProcessCommandResponse(state=state.state, meta=state.meta)

    async def GetState(self, request: pb.GetStateRequest, context: Context) -> pb.GetStateResponse:
        try:
            validate_entity_id(request.entity_id)
            state = await self._host.get_state(request.entity_id, self._deadline(context))
        except Exception as failure:
            error = as_cos_error(failure)
            if error.code is not Code.NOT_FOUND:
                log.warning(
                    "get state failed: entity_id=%s status=%s message=%s",
                    request.entity_id,
                    error.code.name,
                    error.message,
                    exc_info=not isinstance(failure, CosError),
                )
            await abort_with(context, error)
            raise
        return pb.GetStateResponse(state=state.state, meta=state.meta)

    # Subscriptions are switched off (COS_SUBSCRIPTION_ENABLED cannot be turned on in this release);
    # upstream answers every subscription rpc with UNIMPLEMENTED and this message when they are off (§7).
    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, SUBSCRIPTIONS_OFF)
        yield pb.SubscribeResponse()  # never reached; makes this an async generator like a real stream

    async def SubscribeAll(
        self, request: pb.SubscribeAllRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeAllResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, SUBSCRIPTIONS_OFF)
        yield pb.SubscribeAllResponse()

    async def Unsubscribe(self, request: pb.UnsubscribeRequest, context: Context) -> pb.UnsubscribeResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, SUBSCRIPTIONS_OFF)
        raise AssertionError("abort raises")

    async def UnsubscribeAll(
        self, request: pb.UnsubscribeAllRequest, context: Context
    ) -> pb.UnsubscribeAllResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, SUBSCRIPTIONS_OFF)
        raise AssertionError("abort raises")

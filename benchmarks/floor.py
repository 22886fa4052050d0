"""The floor harness and the bare echo server: the node's RPCs with no persistence and no logic.

`--mode floor` serves `ProcessCommand` the way the node does on the wire: one unary call in, then
`HandleCommand` and `HandleEvent` to the write handler over one channel built with the node's options and
deadline, and a reply of the node's size. `--mode echo` answers every call from a constant (a bare unary
server, the ceiling for `GetState`). Both run on the node's event loop (uvloop, as `cos serve` does) and
the same grpcio as the node.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from grpc import aio

from benchmarks.handlers import run_on_loop, serve_until_signalled
from benchmarks.messages import (
    CHANNEL_OPTIONS,
    HANDLER_CALL_TIMEOUT_S,
    SERVER_OPTIONS,
    STATE,
    meta_for,
)
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import (
    ChiefOfStateServiceServicer,
    add_ChiefOfStateServiceServicer_to_server,
)
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import HandleCommandRequest, HandleEventRequest
from chiefofstate.gen.chief_of_state.v1.writeside_pb2_grpc import WriteSideHandlerServiceStub

if TYPE_CHECKING:
    from chiefofstate.gen.chief_of_state.v1.writeside_pb2_grpc import WriteSideHandlerServiceAsyncStub

Context = aio.ServicerContext[Any, Any]
# The answers of the echo server: what the node answers for a hot entity (revision numbers vary in
# the node, which changes their varint by a byte at most).
ECHO_META = meta_for("echo-entity-000000", 1000)
ECHO_COMMAND_ANSWER = pb.ProcessCommandResponse(state=STATE, meta=ECHO_META)
ECHO_STATE_ANSWER = pb.GetStateResponse(state=STATE, meta=ECHO_META)


class EchoService(ChiefOfStateServiceServicer):
    async def ProcessCommand(
        self, request: pb.ProcessCommandRequest, context: Context
    ) -> pb.ProcessCommandResponse:
        return ECHO_COMMAND_ANSWER

    async def GetState(self, request: pb.GetStateRequest, context: Context) -> pb.GetStateResponse:
        return ECHO_STATE_ANSWER

    # The streaming calls are not measured; they answer as a node with subscriptions switched off.
    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the benchmark")
        yield pb.SubscribeResponse()

    async def SubscribeAll(
        self, request: pb.SubscribeAllRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeAllResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the benchmark")
        yield pb.SubscribeAllResponse()

    async def Unsubscribe(self, request: pb.UnsubscribeRequest, context: Context) -> NoReturn:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the benchmark")

    async def UnsubscribeAll(self, request: pb.UnsubscribeAllRequest, context: Context) -> NoReturn:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the benchmark")


class FloorService(EchoService):
    """Three RPCs per command, as the node makes them; everything else is left out."""

    def __init__(self, handler_target: str, pool_size: int) -> None:
        self._channels = [
            aio.insecure_channel(handler_target, options=CHANNEL_OPTIONS) for _ in range(pool_size)
        ]
        stubs: list[WriteSideHandlerServiceAsyncStub] = [
            WriteSideHandlerServiceStub(c) for c in self._channels
        ]
        self._stubs = itertools.cycle(stubs)

    async def ProcessCommand(
        self, request: pb.ProcessCommandRequest, context: Context
    ) -> pb.ProcessCommandResponse:
        meta = meta_for(request.entity_id, 1)
        commanded = await next(self._stubs).HandleCommand(
            HandleCommandRequest(command=request.command, prior_state=STATE, prior_event_meta=meta),
            timeout=HANDLER_CALL_TIMEOUT_S,
            metadata=(),
        )
        folded = await next(self._stubs).HandleEvent(
            HandleEventRequest(event=commanded.events[0], prior_state=STATE, event_meta=meta),
            timeout=HANDLER_CALL_TIMEOUT_S,
        )
        return pb.ProcessCommandResponse(state=folded.resulting_state, meta=meta)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


async def _main(mode: str, host: str, port: int, handler: str, pool_size: int) -> None:
    server = aio.server(options=SERVER_OPTIONS)
    service = FloorService(handler, pool_size) if mode == "floor" else EchoService()
    add_ChiefOfStateServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    try:
        await serve_until_signalled(server, f"listening on {host}:{bound}")
    finally:
        if isinstance(service, FloorService):
            await service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("floor", "echo"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--handler", default="", help="HOST:PORT of the write handler (floor mode)")
    parser.add_argument("--pool-size", type=int, default=1, help="as COS_GRPC_CLIENT_POOL_SIZE")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop", help="as the node's loop")
    args = parser.parse_args()
    if args.mode == "floor" and not args.handler:
        parser.error("--mode floor needs --handler")
    run_on_loop(args.loop, _main(args.mode, args.host, args.port, args.handler, args.pool_size))


if __name__ == "__main__":
    main()

"""The floor harness and the bare echo server: the node's RPCs with no persistence and no logic.

`--mode floor` serves `ProcessCommand` the way the node does on the wire: one unary call in, then
`HandleCommand` and `HandleEvent` to the write handler over one channel built with the node's options and
deadline, and a reply of the node's size. The requests are the node's own, byte for byte in size: a new
entity's prior state and meta are the empty ones the node sends (`initial_state`), a known entity's are
the state and meta its last command produced, and each event's meta is built by the node's own rule
(`next_event_meta`). For that the floor remembers each entity's last state, and nothing else.
`--mode echo` answers every call from a constant (a bare unary server, the ceiling for `GetState`). Both
run on the node's event loop (uvloop, as `cos serve` does) and the same grpcio as the node.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.any_pb2 import Any as AnyProto
from grpc import aio

from benchmarks.handlers import run_on_loop, serve_until_signalled
from benchmarks.messages import (
    CHANNEL_OPTIONS,
    HANDLER_CALL_TIMEOUT_S,
    SERVER_OPTIONS,
    STATE,
    meta_for,
)
from chiefofstate.core.command_rules import initial_state, next_event_meta
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
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


# Entities whose last state the floor keeps (least recently used forgotten first); far more than a
# benchmark's hot entities, so only the new-entity workload's ids, used once each, are forgotten.
KEPT_ENTITIES = 100_000  # about 30 MB of states at most


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
        self._last: OrderedDict[str, pb.ProcessCommandResponse] = OrderedDict()
        self.kept_entities = KEPT_ENTITIES

    def prior(self, entity_id: str) -> tuple[AnyProto, MetaData]:
        """The prior state and meta the node would send for this entity now."""
        last = self._last.get(entity_id)
        if last is None:
            fresh = initial_state(entity_id)
            return fresh.state, fresh.meta
        self._last.move_to_end(entity_id)
        return last.state, last.meta

    def remember(self, entity_id: str, answer: pb.ProcessCommandResponse) -> None:
        self._last[entity_id] = answer
        self._last.move_to_end(entity_id)
        if len(self._last) > self.kept_entities:
            self._last.popitem(last=False)

    async def ProcessCommand(
        self, request: pb.ProcessCommandRequest, context: Context
    ) -> pb.ProcessCommandResponse:
        prior_state, prior_meta = self.prior(request.entity_id)
        commanded = await next(self._stubs).HandleCommand(
            HandleCommandRequest(
                command=request.command, prior_state=prior_state, prior_event_meta=prior_meta
            ),
            timeout=HANDLER_CALL_TIMEOUT_S,
            metadata=(),
        )
        meta = next_event_meta(prior_meta, time.time_ns(), ())
        folded = await next(self._stubs).HandleEvent(
            HandleEventRequest(event=commanded.events[0], prior_state=prior_state, event_meta=meta),
            timeout=HANDLER_CALL_TIMEOUT_S,
        )
        answer = pb.ProcessCommandResponse(state=folded.resulting_state, meta=meta)
        self.remember(request.entity_id, answer)
        return answer

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

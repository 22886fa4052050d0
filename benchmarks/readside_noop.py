"""A no-op gRPC read handler for the read-side benchmark: answers `successful=true` to every call.

`python -m benchmarks.readside_noop --port N` prints `no-op read handler listening on 127.0.0.1:N`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from grpc import aio

from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest, HandleReadSideResponse
from chiefofstate.gen.chief_of_state.v1.readside_pb2_grpc import (
    ReadSideHandlerServiceServicer,
    add_ReadSideHandlerServiceServicer_to_server,
)

ANSWER = HandleReadSideResponse(successful=True)


class NoOp(ReadSideHandlerServiceServicer):
    async def HandleReadSide(
        self, request: HandleReadSideRequest, context: aio.ServicerContext[Any, Any]
    ) -> HandleReadSideResponse:
        return ANSWER


async def serve(port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = aio.server(options=[("grpc.so_reuseport", 0)])
    add_ReadSideHandlerServiceServicer_to_server(NoOp(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"no-op read handler listening on 127.0.0.1:{bound}", flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()

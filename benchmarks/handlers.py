"""The minimal write handler: one constant event per command, one constant state per event, no logic.

Run as `python -m benchmarks.handlers --port N`; prints `listening on HOST:PORT` once it accepts calls and
stops on SIGTERM or SIGINT. It runs on uvloop, as the node does.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

from grpc import aio

from benchmarks.messages import EVENT, SERVER_OPTIONS, STATE
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.gen.chief_of_state.v1.writeside_pb2_grpc import (
    WriteSideHandlerServiceServicer,
    add_WriteSideHandlerServiceServicer_to_server,
)
from chiefofstate.node.event_loop import run_on_event_loop
from chiefofstate.node.gc_tuning import freeze_start_up_heap

COMMAND_ANSWER = HandleCommandResponse(events=[EVENT])
EVENT_ANSWER = HandleEventResponse(resulting_state=STATE)


class MinimalWriteHandler(WriteSideHandlerServiceServicer):
    async def HandleCommand(
        self, request: HandleCommandRequest, context: aio.ServicerContext[Any, Any]
    ) -> HandleCommandResponse:
        return COMMAND_ANSWER

    async def HandleEvent(
        self, request: HandleEventRequest, context: aio.ServicerContext[Any, Any]
    ) -> HandleEventResponse:
        return EVENT_ANSWER


async def serve_until_signalled(server: aio.Server, banner: str) -> None:
    """Start `server`, print `banner`, and stop it on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    freeze_start_up_heap()  # as `cos serve` does: the floor must not pay full collections the node avoids
    print(banner, flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(1.0)


async def _main(host: str, port: int) -> None:
    server = aio.server(options=SERVER_OPTIONS)
    add_WriteSideHandlerServiceServicer_to_server(MinimalWriteHandler(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await serve_until_signalled(server, f"listening on {host}:{bound}")


def run_on_loop(loop: str, main: Coroutine[Any, Any, None]) -> None:
    """`uvloop` is the loop `cos serve` uses by default; `asyncio` for the COS_EVENT_LOOP=asyncio variant."""
    run_on_event_loop(main, loop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run_on_loop("uvloop", _main(args.host, args.port))


if __name__ == "__main__":
    main()

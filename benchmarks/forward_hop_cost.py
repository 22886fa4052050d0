"""`python -m benchmarks.forward_hop_cost`: the CPU the forwarding hop itself costs both members, per
request, in one process: a real gRPC server on a local port stands in for the owner, answering every
request at once, and the entry member's side sends to it from many concurrent callers, either as one
unary call per request (PeerClients) or on the forwarding stream (ForwardStreams). Rounds of the two
are interleaved; the best round of each is printed. No handler, no database: only what the hop adds
(docs/performance.md, "Cluster").
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, cast

from google.protobuf.any_pb2 import Any as AnyProto
from grpc import aio

from chiefofstate.api.command_path import CommandPath
from chiefofstate.api.cos_service import ChiefOfStateService, add_to_server
from chiefofstate.api.forwarding_service import ForwardingService, add_forwarding_service
from chiefofstate.cluster.forward_stream import ForwardStreams
from chiefofstate.cluster.peers import PROCESS_COMMAND, PeerCalls, PeerClients
from chiefofstate.core.headers import Metadata
from chiefofstate.entities.entity import EntityState
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.telemetry.tracing import TRACING_OFF

REPLY = pb.ProcessCommandResponse(meta=MetaData(entity_id="hot-0", revision_number=2)).SerializeToString()
# What a forwarded request carries: a propagated header, the trace context, the forwarded mark.
HEADERS: list[tuple[str, str | bytes]] = [
    ("x-tenant", "bench"),
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("x-cos-forwarded", "1"),
]
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class AnsweringCommands:
    """The owner's command path, answering every command at once."""

    def __init__(self) -> None:
        self.tracing = TRACING_OFF
        self.forwards = False

    async def process_command(
        self, entity_id: str, command: AnyProto, metadata: Metadata, caller_left_s: float | None
    ) -> EntityState:
        return EntityState(REPLY, 2)


async def _owner() -> tuple[aio.Server, str]:
    commands = cast(CommandPath, AnsweringCommands())
    server = aio.server()
    add_to_server(ChiefOfStateService(commands), server)
    forwarding = ForwardingService(
        commands, max_in_flight=256, max_message_bytes=MAX_MESSAGE_BYTES, tracing=TRACING_OFF
    )
    add_forwarding_service(forwarding, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _round(sender: PeerCalls, address: str, requests: int, concurrency: int) -> float:
    """CPU µs of this process (both ends of the hop) per request."""
    request = pb.ProcessCommandRequest(entity_id="hot-0").SerializeToString()

    async def caller(count: int) -> None:
        for _ in range(count):
            await sender.call(address, PROCESS_COMMAND, request, HEADERS, 5.0)

    started = time.process_time()
    await asyncio.gather(*(caller(requests // concurrency) for _ in range(concurrency)))
    return (time.process_time() - started) / (requests // concurrency * concurrency) * 1e6


async def measure(requests: int, concurrency: int, rounds: int) -> dict[str, float]:
    server, address = await _owner()
    peers = PeerClients()
    streams = ForwardStreams(peers, 256, MAX_MESSAGE_BYTES)
    senders: dict[str, Any] = {"unary call per request": peers, "stream": streams}
    best = dict.fromkeys(senders, float("inf"))
    try:
        for sender in senders.values():  # warm-up: connections, the stream opened
            await _round(sender, address, concurrency * 4, concurrency)
        for _ in range(rounds):
            for name, sender in senders.items():
                best[name] = min(best[name], await _round(sender, address, requests, concurrency))
    finally:
        await streams.close()
        await peers.close()
        await server.stop(None)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    best = asyncio.run(measure(args.requests, args.concurrency, args.rounds))
    for name, cost in best.items():
        print(f"forwarding hop, {name}: {cost:.1f} µs CPU per request (both members)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

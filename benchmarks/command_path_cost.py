"""The node's own Python per command, in process: `python -m benchmarks.command_path_cost`.

ProcessCommand runs through the same layers as in `cos serve` (the gRPC metrics wrapper, the service,
the command path, the entity host, the command processor, the instrumented write-handler wrapper) with
an in-process write handler and an appender that commits at once: no network, no database. What is
left is the Python the node adds to every command, the part of its cost this project controls
directly. Hot commands go to 64 cached entities in turn; new ones each to an entity never seen;
GetState reads the 64 cached entities in turn. "forwarded" is the entry member's part of a command
for a shard another member owns: the request taken as bytes, checked and sent on (to a stand-in peer
that answers at once), the owner's reply bytes returned.

`--profile` prints the functions that cost the most (cProfile, which slows every call it counts).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from benchmarks.handlers import COMMAND_ANSWER, EVENT_ANSWER
from benchmarks.messages import COMMAND
from chiefofstate.api.command_path import CommandPath
from chiefofstate.api.cos_service import ChiefOfStateService
from chiefofstate.cluster.forwarding import Forwarder
from chiefofstate.cluster.routes import Route, RoutingTable
from chiefofstate.core.command_rules import ProtoValidation
from chiefofstate.core.errors import ShardNotHere
from chiefofstate.core.headers import HeaderValue
from chiefofstate.core.snapshots import SnapshotPolicy
from chiefofstate.entities.command_processor import CommandProcessor, CommandSettings
from chiefofstate.entities.host import EntityHost, HostSettings
from chiefofstate.entities.snapshotter import Snapshotter
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.node.event_loop import run_on_event_loop
from chiefofstate.ports.journal import AppendRequest, StoredState
from chiefofstate.telemetry.grpc_metrics import GrpcServerMetrics, measured_coroutine
from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.tracing import TRACING_OFF
from chiefofstate.writeside.instrumented import InstrumentedWriteHandler

PROCESS_COMMAND = "/chief_of_state.v1.ChiefOfStateService/ProcessCommand"
GET_STATE = "/chief_of_state.v1.ChiefOfStateService/GetState"


class InProcessHandler:
    """Answers as benchmarks/handlers.py does; serializes each request as the gRPC client would."""

    async def handle_command(
        self, request: HandleCommandRequest, headers: Sequence[tuple[str, HeaderValue]], timeout_s: float
    ) -> HandleCommandResponse:
        request.SerializeToString()
        return COMMAND_ANSWER

    async def handle_event(
        self, request: HandleEventRequest, timeout_s: float, headers: Sequence[tuple[str, HeaderValue]] = ()
    ) -> HandleEventResponse:
        request.SerializeToString()
        return EVENT_ANSWER

    async def close(self) -> None:
        return None


class EmptyJournal:
    """Every entity is new: recovery finds nothing."""

    async def latest_state(self, entity_id: str) -> StoredState | None:
        return None


class InstantAppender:
    def submit(self, request: AppendRequest) -> asyncio.Future[Exception | None]:
        committed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        committed.set_result(None)
        return committed


class Context:
    """What the service reads of grpc.aio's ServicerContext on a successful call."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> float:
        return 5.0

    def code(self) -> None:
        return None


Call = Callable[[Any, Any], Awaitable[Any]]


def build_calls() -> tuple[Call, Call]:
    """ProcessCommand and GetState as `cos serve` registers them, on one node."""
    metrics = NodeMetrics()
    handler = InstrumentedWriteHandler(InProcessHandler(), TRACING_OFF, metrics, "grpc")
    snapshotter = Snapshotter(EmptyJournal(), SnapshotPolicy(enabled=False, frequency=0, retain=0))  # type: ignore[arg-type]
    processor = CommandProcessor(
        handler,
        EmptyJournal(),
        InstantAppender(),
        snapshotter,
        CommandSettings((), (), ProtoValidation(), 5.0),
    )
    host = EntityHost(processor, HostSettings(16, 100_000, 0, 1000))
    service = ChiefOfStateService(CommandPath(host, 5.0, metrics=metrics))
    server_metrics = GrpcServerMetrics(metrics)
    return (
        measured_coroutine(service.ProcessCommand, server_metrics.method_series(PROCESS_COMMAND, "unary")),
        measured_coroutine(service.GetState, server_metrics.method_series(GET_STATE, "unary")),
    )


class AnsweringPeer:
    """The owning member, answering every forwarded request at once (no network, no gRPC call)."""

    async def call(
        self, address: str, method: str, request: bytes, metadata: object, timeout_s: float
    ) -> bytes:
        return FORWARDED_REPLY


class ServesNothing:
    """The gate of a member that owns none of the shards asked for."""

    def admit(self, shard: int) -> int | None:
        raise ShardNotHere(shard)

    def serves(self, shard: int, tenure: int | None) -> bool:
        return False


FORWARDED_REPLY = pb.ProcessCommandResponse(
    meta=MetaData(entity_id="hot-0", revision_number=2)
).SerializeToString()


def forwarding_call() -> Call:
    """ProcessCommand as a cluster member registers it (bytes in), for entities another member owns."""
    metrics = NodeMetrics()
    routes = RoutingTable("127.0.0.1:1")
    routes.replace({shard: Route("127.0.0.1:2", 1) for shard in range(16)})
    forwarder = Forwarder(routes, AnsweringPeer(), 16, 1.0, metrics=metrics)  # type: ignore[arg-type]
    host = EntityHost(None, HostSettings(16, 100_000, 0, 1000), gate=ServesNothing())  # type: ignore[arg-type]
    service = ChiefOfStateService(CommandPath(host, 5.0, metrics=metrics, forwarder=forwarder))
    series = GrpcServerMetrics(metrics).method_series(PROCESS_COMMAND, "unary")
    return measured_coroutine(service.process_command_bytes, series)


def requests(workload: str, count: int) -> list[Any]:
    """`count` requests of the workload: new entities each get an id never used before."""
    if workload == "new":
        return [pb.ProcessCommandRequest(entity_id=f"new-{n}", command=COMMAND) for n in range(count)]
    if workload == "get":
        return [pb.GetStateRequest(entity_id=f"hot-{n % 64}") for n in range(count)]
    if workload == "forwarded":
        return [
            pb.ProcessCommandRequest(entity_id=f"hot-{n % 64}", command=COMMAND).SerializeToString()
            for n in range(count)
        ]
    return [pb.ProcessCommandRequest(entity_id=f"hot-{n % 64}", command=COMMAND) for n in range(count)]


async def primed(workload: str) -> Call:
    """The call the workload makes, on a node whose 64 hot entities are cached."""
    if workload == "forwarded":
        return forwarding_call()
    process, get = build_calls()
    context = Context()
    for n in range(64):
        await process(pb.ProcessCommandRequest(entity_id=f"hot-{n}", command=COMMAND), context)
    return get if workload == "get" else process


async def cost_per_command_us(workload: str, commands: int, rounds: int = 3) -> float:
    """The best of `rounds` runs of `commands` sequential requests, in microseconds per request."""
    call = await primed(workload)
    context = Context()
    best = float("inf")
    for round_number in range(rounds):
        batch = requests(workload, commands)
        if workload == "new":  # fresh ids in every round
            for request in batch:
                request.entity_id = f"{request.entity_id}-{round_number}"
        started = time.perf_counter()
        for request in batch:
            await call(request, context)
        best = min(best, (time.perf_counter() - started) / commands * 1e6)
    return best


async def profile(workload: str, commands: int) -> str:
    call = await primed(workload)
    context = Context()
    batch = requests(workload, commands)
    profiler = cProfile.Profile()
    profiler.enable()
    for request in batch:
        await call(request, context)
    profiler.disable()
    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> int:
            lines.append(text)
            return len(text)

    pstats.Stats(profiler, stream=Sink()).sort_stats("tottime").print_stats(25)  # type: ignore[arg-type]
    return "".join(lines)


async def main(arguments: argparse.Namespace) -> None:
    for workload in arguments.workload:
        cost = await cost_per_command_us(workload, arguments.commands)
        rpc = "GetState cached" if workload == "get" else f"ProcessCommand {workload}"
        print(f"{rpc}: {cost:.1f} µs of the node's own Python per request", flush=True)
        if arguments.profile:
            print(await profile(workload, arguments.commands), flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    workloads = ("hot", "new", "get", "forwarded")
    parser.add_argument("--workload", nargs="+", choices=workloads, default=list(workloads))
    parser.add_argument(
        "--commands", type=int, default=20_000, help="commands per round (3 rounds, best kept)"
    )
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one round")
    run_on_event_loop(main(parser.parse_args()), "uvloop")


if __name__ == "__main__":
    cli()

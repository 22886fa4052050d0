"""The node's own Python per command, in process: `python -m benchmarks.command_path_cost`.

ProcessCommand runs through the same layers as in `cos serve` (the gRPC metrics wrapper, the service,
the command path, the entity host, the command processor, the instrumented write-handler wrapper) with
an in-process write handler and an appender that commits at once: no network, no database. What is
left is the Python the node adds to every command, the part of its cost this project controls
directly. Hot commands go to 64 cached entities in turn; new ones each to an entity never seen.

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
from chiefofstate.core.command_rules import ProtoValidation
from chiefofstate.core.headers import HeaderValue
from chiefofstate.core.snapshots import SnapshotPolicy
from chiefofstate.entities.command_processor import CommandProcessor, CommandSettings
from chiefofstate.entities.host import EntityHost, HostSettings
from chiefofstate.entities.snapshotter import Snapshotter
from chiefofstate.event_loop import run_on_event_loop
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.journal.port import AppendRequest, StoredState
from chiefofstate.telemetry.grpc_metrics import GrpcServerMetrics, measured_coroutine
from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.tracing import TRACING_OFF
from chiefofstate.writeside.instrumented import InstrumentedWriteHandler

PROCESS_COMMAND = "/chief_of_state.v1.ChiefOfStateService/ProcessCommand"


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


def build_call() -> Callable[[pb.ProcessCommandRequest, Any], Awaitable[Any]]:
    metrics = NodeMetrics()
    handler = InstrumentedWriteHandler(InProcessHandler(), TRACING_OFF, metrics, "grpc")
    snapshotter = Snapshotter(EmptyJournal(), SnapshotPolicy(enabled=False, frequency=0, retain=0))  # type: ignore[arg-type]
    processor = CommandProcessor(
        handler,
        EmptyJournal(),  # type: ignore[arg-type]
        InstantAppender(),
        snapshotter,
        CommandSettings((), (), ProtoValidation(), 5.0),
    )
    host = EntityHost(processor, HostSettings(16, 100_000, 0, 1000))
    service = ChiefOfStateService(CommandPath(host, 5.0, metrics=metrics))
    server_metrics = GrpcServerMetrics(metrics)
    return measured_coroutine(service.ProcessCommand, server_metrics.method_series(PROCESS_COMMAND, "unary"))


async def cost_per_command_us(workload: str, commands: int, rounds: int = 3) -> float:
    """The best of `rounds` runs of `commands` sequential commands, in microseconds per command."""
    call = build_call()
    context = Context()
    hot = [pb.ProcessCommandRequest(entity_id=f"hot-{n}", command=COMMAND) for n in range(64)]
    for request in hot:
        await call(request, context)
    fresh = iter(range(10**9))

    async def one_round() -> float:
        started = time.perf_counter()
        for n in range(commands):
            if workload == "hot":
                request = hot[n % 64]
            else:
                request = pb.ProcessCommandRequest(entity_id=f"new-{next(fresh)}", command=COMMAND)
            await call(request, context)
        return (time.perf_counter() - started) / commands * 1e6

    return min([await one_round() for _ in range(rounds)])


async def profile(workload: str, commands: int) -> str:
    call = build_call()
    context = Context()
    requests = [
        pb.ProcessCommandRequest(
            entity_id=f"{workload}-{n if workload == 'new' else n % 64}", command=COMMAND
        )
        for n in range(commands)
    ]
    profiler = cProfile.Profile()
    profiler.enable()
    for request in requests:
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
        print(f"ProcessCommand {workload}: {cost:.1f} µs of the node's own Python per command", flush=True)
        if arguments.profile:
            print(await profile(workload, arguments.commands), flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", nargs="+", choices=("hot", "new"), default=["hot", "new"])
    parser.add_argument(
        "--commands", type=int, default=20_000, help="commands per round (3 rounds, best kept)"
    )
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one round")
    run_on_event_loop(main(parser.parse_args()), "uvloop")


if __name__ == "__main__":
    cli()

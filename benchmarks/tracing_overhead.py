"""Command throughput with tracing exporting to a local OTLP receiver, against tracing off, in one run.

    python -m benchmarks.tracing_overhead [--seconds 8] [--concurrency 32] [--rounds 3]

Each round starts a fresh bank handler and node for each variant (SQLite, or PostgreSQL when COS_DB_HOST
is set), drives ProcessCommand over gRPC with a closed loop, and reports the median over rounds. The
receiver is a real OTLP/gRPC server in this process that counts the spans it is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from cos_bank import client as bank
from grpc import aio

from benchmarks.http_bench_common import TABLE_HEADER, LoadResult, bank_and_node, closed_loop, median
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.support.otlp import start_receiver


async def _drive(grpc_port: int, name: str, seconds: float, concurrency: int) -> LoadResult:
    async with aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
        for worker in range(concurrency):
            await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id=f"{name}-{worker}", command=bank.open_account("B", 0)),
                timeout=10,
            )
        deposit = bank.deposit(1)

        async def call(worker: int) -> object:
            return await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id=f"{name}-{worker}", command=deposit), timeout=10
            )

        await closed_loop(name, call, concurrency, 1.0)  # warm-up
        return await closed_loop(name, call, concurrency, seconds)


async def run(
    seconds: float, concurrency: int, rounds: int
) -> tuple[list[LoadResult], list[LoadResult], int]:
    server, port, collector = await start_receiver()
    off: list[LoadResult] = []
    on: list[LoadResult] = []
    try:
        for round_number in range(rounds):
            with bank_and_node() as (_, node):
                off.append(await _drive(node.ports["grpc"], f"off{round_number}", seconds, concurrency))
            traced = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
            }
            with bank_and_node(**traced) as (_, node):
                on.append(await _drive(node.ports["grpc"], f"on{round_number}", seconds, concurrency))
    finally:
        await server.stop(None)
    return off, on, len(collector.spans)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    off, on, spans = asyncio.run(run(args.seconds, args.concurrency, args.rounds))
    off_rate = median([result.throughput for result in off])
    on_rate = median([result.throughput for result in on])
    print(TABLE_HEADER)
    for result in [*off, *on]:
        print(result.row())
    print(f"\nmedian ProcessCommand/s: tracing off {off_rate:,.0f}, tracing on {on_rate:,.0f}")
    print(f"ratio on/off: {on_rate / off_rate:.3f} (overhead {100 * (1 - on_rate / off_rate):.1f} %)")
    print(f"spans received by the OTLP receiver: {spans}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

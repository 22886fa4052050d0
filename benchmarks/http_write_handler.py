"""A node with an HTTP write handler against a node with a gRPC one, side by side in one run.

    python -m benchmarks.http_write_handler [--duration 3] [--concurrency 32] [--rounds 3]

The same handler, the bank example written with the SDK (`chiefofstate_examples.bank`), runs twice as a real
process: once over the gRPC write-handler protocol, once over the HTTP one. Each gets its own node (SQLite
in a temporary directory, or PostgreSQL when COS_DB_HOST is set). In `--rounds` interleaved rounds, the
same closed-loop load of deposits goes to each node over gRPC for `--duration` seconds; figures are
medians over the rounds, and the node's and the handler's CPU per command are read from /proc, which
other jobs on a shared machine barely move. What differs between the two is only the node's
write-handler adapter and the handler's serving stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chiefofstate_examples.bank import client as bank
from grpc import aio

from benchmarks.http_bench_common import LoadResult, closed_loop, median
from benchmarks.processes import cpu_seconds
from chiefofstate.cli.processes import (
    Process,
    node_environment,
    start_bank_write_handler,
    start_node,
)
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub

CALL_TIMEOUT_S = 10.0
PROTOCOLS = ("grpc", "http")
THROUGHPUT_TARGET = 0.8  # HTTP handler's commands/s over the gRPC handler's (docs/performance.md, "HTTP")


@contextlib.contextmanager
def _handler_and_node(protocol: str, scratch: Path) -> Iterator[tuple[Process, Process]]:
    logs = scratch / "logs"
    handler = start_bank_write_handler(logs, protocol=protocol)
    port = handler.ports["write_side"]
    node: Process | None = None
    try:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("COS_", "LOG_"))}
        env.update(
            COS_WRITE_SIDE_HOST="127.0.0.1",
            COS_WRITE_SIDE_PORT=str(port),
            COS_WRITE_SIDE_PROTOCOL=protocol,
            COS_DB_PATH=str(scratch / f"cos-{protocol}.db"),
            LOG_LEVEL="WARN",
        )
        for key in ("COS_DB_HOST", "COS_DB_PORT", "COS_DB_USER", "COS_DB_PASSWORD", "COS_DB_NAME"):
            if key in os.environ:
                env[key] = os.environ[key]
        node = start_node(node_environment(env), logs, name=f"node-{protocol}-handler")
        yield handler, node
    finally:
        if node is not None:
            node.stop()
        handler.stop()


@dataclass
class HandlerComparison:
    rounds: list[dict[str, LoadResult]]
    node_cpu_s: list[dict[str, float]]
    handler_cpu_s: list[dict[str, float]]
    concurrency: int

    def throughput(self, protocol: str) -> float:
        return median([round_[protocol].throughput for round_ in self.rounds])

    def p99_ms(self, protocol: str) -> float:
        return median([round_[protocol].percentile_ms(0.99) for round_ in self.rounds])

    def cpu_us_per_command(self, protocol: str, cpu: list[dict[str, float]]) -> float:
        return median(
            [
                spent[protocol] / round_[protocol].calls * 1e6
                for round_, spent in zip(self.rounds, cpu, strict=True)
                if round_[protocol].calls
            ]
        )

    @property
    def throughput_ratio(self) -> float:
        """Median over the rounds of each round's HTTP/gRPC ratio (both measured seconds apart)."""
        ratios = [round_["http"].throughput / round_["grpc"].throughput for round_ in self.rounds]
        return median(ratios)

    @property
    def failures(self) -> int:
        return sum(result.failures for round_ in self.rounds for result in round_.values())

    def report(self) -> str:
        lines = [
            f"HTTP against gRPC write handler (SDK bank): {len(self.rounds)} interleaved rounds, "
            f"{self.concurrency} commands in flight, medians over the rounds",
            "",
            "| write handler | commands/s | p50 ms | p99 ms | node CPU µs/command | handler CPU µs/command "
            "| commands | failures |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for protocol in PROTOCOLS:
            p50 = median([round_[protocol].percentile_ms(0.5) for round_ in self.rounds])
            calls = sum(round_[protocol].calls for round_ in self.rounds)
            failures = sum(round_[protocol].failures for round_ in self.rounds)
            lines.append(
                f"| {protocol} | {self.throughput(protocol):,.0f} | {p50:.2f} | "
                f"{self.p99_ms(protocol):.2f} | "
                f"{self.cpu_us_per_command(protocol, self.node_cpu_s):,.0f} | "
                f"{self.cpu_us_per_command(protocol, self.handler_cpu_s):,.0f} | {calls} | {failures} |"
            )
        node_ratio = self.cpu_us_per_command("http", self.node_cpu_s) / self.cpu_us_per_command(
            "grpc", self.node_cpu_s
        )
        lines += [
            "",
            f"HTTP/gRPC write handler: throughput {self.throughput_ratio:.2f} "
            f"(target >= {THROUGHPUT_TARGET}), node CPU per command {node_ratio:.2f}",
        ]
        return "\n".join(lines)


async def run(duration_s: float, concurrency: int, rounds: int, warmup_s: float = 0.5) -> HandlerComparison:
    with (
        tempfile.TemporaryDirectory(prefix="cos-bench-handlers-") as scratch,
        _handler_and_node("grpc", Path(scratch)) as (grpc_handler, grpc_node),
        _handler_and_node("http", Path(scratch)) as (http_handler, http_node),
    ):
        processes = {"grpc": (grpc_node, grpc_handler), "http": (http_node, http_handler)}
        async with (
            aio.insecure_channel(f"127.0.0.1:{grpc_node.ports['grpc']}") as grpc_channel,
            aio.insecure_channel(f"127.0.0.1:{http_node.ports['grpc']}") as http_channel,
        ):
            stubs = {
                "grpc": ChiefOfStateServiceStub(grpc_channel),
                "http": ChiefOfStateServiceStub(http_channel),
            }
            # One account per worker: commands of one entity run one at a time (§3.2).
            await asyncio.gather(
                *(
                    stubs[protocol].ProcessCommand(
                        pb.ProcessCommandRequest(entity_id=f"acct-{i}", command=bank.open_account("B", 0)),
                        timeout=CALL_TIMEOUT_S,
                    )
                    for protocol in PROTOCOLS
                    for i in range(concurrency)
                )
            )
            deposit = bank.deposit(1)
            measured: list[dict[str, LoadResult]] = []
            node_cpu: list[dict[str, float]] = []
            handler_cpu: list[dict[str, float]] = []
            for _ in range(rounds):
                results: dict[str, LoadResult] = {}
                spent_node: dict[str, float] = {}
                spent_handler: dict[str, float] = {}
                for protocol in PROTOCOLS:
                    stub = stubs[protocol]

                    async def process(worker: int, stub: ChiefOfStateServiceStub = stub) -> object:
                        request = pb.ProcessCommandRequest(entity_id=f"acct-{worker}", command=deposit)
                        return await stub.ProcessCommand(request, timeout=CALL_TIMEOUT_S)

                    node, handler = processes[protocol]
                    await closed_loop("warm-up", process, concurrency, warmup_s)
                    node_before, handler_before = cpu_seconds(node.popen.pid), cpu_seconds(handler.popen.pid)
                    results[protocol] = await closed_loop(protocol, process, concurrency, duration_s)
                    spent_node[protocol] = cpu_seconds(node.popen.pid) - node_before
                    spent_handler[protocol] = cpu_seconds(handler.popen.pid) - handler_before
                measured.append(results)
                node_cpu.append(spent_node)
                handler_cpu.append(spent_handler)
            return HandlerComparison(measured, node_cpu, handler_cpu, concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.http_write_handler", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per workload (default 3)")
    parser.add_argument("--concurrency", type=int, default=32, help="commands in flight (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    comparison = asyncio.run(run(args.duration, args.concurrency, args.rounds))
    print(comparison.report())
    return 0 if comparison.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

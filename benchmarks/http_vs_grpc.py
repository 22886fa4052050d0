"""ProcessCommand and GetState over HTTP/JSON against the same calls over gRPC, side by side in one run.

    python -m benchmarks.http_vs_grpc [--duration 3] [--concurrency 32] [--rounds 3]

Starts the bank write handler and one node (`COS_SERVER_PROTOCOL=both`) as real processes, then runs
`--rounds` interleaved rounds: in each, a closed-loop load of deposits (ProcessCommand) and of GetState
through each protocol for `--duration` seconds, one after the other, so that a change in the machine's
load hits both protocols alike. Figures are medians over the rounds. Both protocols reach the same node
and the same command path, so the ratio isolates the API layer.

The HTTP client is a lean keep-alive HTTP/1.1 client on uvloop (one connection per worker) in a process
of its own (benchmarks.http_load_process), not httpx, which spends milliseconds of CPU per
call and would measure itself. Each round also measures that client
against a trivial HTTP server in its own process (benchmarks.trivial_http_server): the run is valid only
when the client reaches at least 3 x the node's HTTP rate there, and says so with its results.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chiefofstate_examples.bank import client as bank
from grpc import aio

from benchmarks.http_bench_common import (
    Call,
    Headroom,
    LoadResult,
    bank_and_node,
    closed_loop,
    median,
    trivial_http_server,
)
from benchmarks.processes import cpu_seconds
from chiefofstate.cli.processes import Process
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub

CALL_TIMEOUT_S = 10.0
WORKLOADS = ("ProcessCommand gRPC", "ProcessCommand HTTP", "GetState gRPC", "GetState HTTP")
TRIVIAL = "trivial HTTP server"
# the targets of docs/performance.md, "HTTP": HTTP throughput over gRPC's, HTTP p99 over gRPC's
GET_STATE_THROUGHPUT_TARGET = 0.9
GET_STATE_P99_TARGET = 1.3
PROCESS_THROUGHPUT_TARGET = 0.95


@dataclass
class Comparison:
    rounds: list[dict[str, LoadResult]]
    concurrency: int
    # per round and workload: CPU seconds the server process (the node, or the trivial server) spent
    server_cpu_s: list[dict[str, float]]

    def server_cpu_us_per_call(self, name: str) -> float:
        """The server's CPU per call: unlike calls/s, barely moved by other jobs on a shared machine."""
        return median(
            [
                cpu[name] / round_[name].calls * 1e6
                for round_, cpu in zip(self.rounds, self.server_cpu_s, strict=True)
                if round_[name].calls
            ]
        )

    def throughput(self, name: str) -> float:
        return median([round_[name].throughput for round_ in self.rounds])

    def p99_ms(self, name: str) -> float:
        return median([round_[name].percentile_ms(0.99) for round_ in self.rounds])

    def throughput_ratio(self, rpc: str) -> float:
        """Median over the rounds of each round's HTTP/gRPC ratio (both measured seconds apart)."""
        return median(
            [
                round_[f"{rpc} HTTP"].throughput / round_[f"{rpc} gRPC"].throughput
                for round_ in self.rounds
                if round_[f"{rpc} gRPC"].throughput
            ]
        )

    def p99_ratio(self, rpc: str) -> float:
        return median(
            [
                round_[f"{rpc} HTTP"].percentile_ms(0.99) / round_[f"{rpc} gRPC"].percentile_ms(0.99)
                for round_ in self.rounds
            ]
        )

    @property
    def headroom(self) -> Headroom:
        node_rate = max(self.throughput(f"{rpc} HTTP") for rpc in ("ProcessCommand", "GetState"))
        return Headroom(self.throughput(TRIVIAL), node_rate)

    @property
    def failures(self) -> int:
        return sum(result.failures for round_ in self.rounds for result in round_.values())

    def met(self) -> bool:
        return (
            self.headroom.valid
            and self.throughput_ratio("GetState") >= GET_STATE_THROUGHPUT_TARGET
            and self.p99_ratio("GetState") <= GET_STATE_P99_TARGET
            and self.throughput_ratio("ProcessCommand") >= PROCESS_THROUGHPUT_TARGET
        )

    def _cpu_ratio(self, rpc: str) -> float:
        grpc_cpu = self.server_cpu_us_per_call(f"{rpc} gRPC")
        return self.server_cpu_us_per_call(f"{rpc} HTTP") / grpc_cpu if grpc_cpu else float("nan")

    def report(self) -> str:
        lines = [
            f"HTTP against gRPC: {len(self.rounds)} interleaved rounds, {self.concurrency} in flight, "
            "medians over the rounds",
            "",
            "| workload | calls/s | p50 ms | p99 ms | server CPU µs/call | calls | failures |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in (*WORKLOADS, TRIVIAL):
            calls = sum(round_[name].calls for round_ in self.rounds)
            failures = sum(round_[name].failures for round_ in self.rounds)
            p50 = median([round_[name].percentile_ms(0.5) for round_ in self.rounds])
            lines.append(
                f"| {name} | {self.throughput(name):,.0f} | {p50:.2f} | {self.p99_ms(name):.2f} | "
                f"{self.server_cpu_us_per_call(name):,.0f} | {calls} | {failures} |"
            )
        lines.append("")
        lines.append(self.headroom.line())
        void = "" if self.headroom.valid else " (INVALID: client-bound)"
        lines.append(
            f"GetState HTTP/gRPC: throughput {self.throughput_ratio('GetState'):.2f} "
            f"(target >= {GET_STATE_THROUGHPUT_TARGET}), p99 {self.p99_ratio('GetState'):.2f} "
            f"(target <= {GET_STATE_P99_TARGET}), node CPU per call "
            f"{self._cpu_ratio('GetState'):.2f}{void}"
        )
        lines.append(
            f"ProcessCommand HTTP/gRPC: throughput {self.throughput_ratio('ProcessCommand'):.2f} "
            f"(target >= {PROCESS_THROUGHPUT_TARGET}), p99 {self.p99_ratio('ProcessCommand'):.2f}, "
            f"node CPU per call {self._cpu_ratio('ProcessCommand'):.2f}{void}"
        )
        return "\n".join(lines)


Workload = Callable[[], Awaitable[tuple[LoadResult, int]]]  # the measured window, and calls made in all
# One: on a 2-core machine a second client process takes CPU from the server it measures (it reached
# about half the trivial server's rate of one); more only pay on more cores.
HTTP_CLIENT_PROCESSES = 1


async def http_load(
    port: int, method: str, path: str, body: bytes, concurrency: int, warmup_s: float, duration_s: float
) -> tuple[LoadResult, int]:
    """`concurrency` HTTP workers split among HTTP_CLIENT_PROCESSES benchmarks.http_load_process
    processes; `{worker}` in `path` is each worker's number."""
    shares = [
        concurrency // HTTP_CLIENT_PROCESSES + (i < concurrency % HTTP_CLIENT_PROCESSES)
        for i in range(HTTP_CLIENT_PROCESSES)
        if i < concurrency
    ]
    first_workers = [sum(shares[:i]) for i in range(len(shares))]
    with tempfile.TemporaryDirectory(prefix="cos-bench-http-load-") as scratch:
        outs = [Path(scratch) / f"load-{i}.json" for i in range(len(shares))]
        reports = await _load_processes(
            port, method, path, body, shares, first_workers, outs, warmup_s, duration_s
        )
    latencies = [latency for report in reports for latency in report["latencies_s"]]
    result = LoadResult(
        path,
        sum(report["calls"] for report in reports),
        sum(report["failures"] for report in reports),
        max(report["seconds"] for report in reports),
        latencies,
    )
    return result, sum(report["warm_calls"] + report["calls"] + report["failures"] for report in reports)


async def _load_processes(
    port: int,
    method: str,
    path: str,
    body: bytes,
    shares: list[int],
    first_workers: list[int],
    outs: list[Path],
    warmup_s: float,
    duration_s: float,
) -> list[dict[str, Any]]:
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.http_load_process",
            *("--port", str(port), "--method", method, "--path", path, "--body", body.decode()),
            *("--concurrency", str(share), "--first-worker", str(first), "--out", str(out)),
            *("--warmup", str(warmup_s), "--duration", str(duration_s)),
        )
        for share, first, out in zip(shares, first_workers, outs, strict=True)
    ]
    for child in children:
        if await child.wait() != 0:
            raise RuntimeError(f"an HTTP load process exited with {child.returncode}")
    return [json.loads(out.read_text()) for out in outs]


def _base64(command: object) -> str:
    return base64.b64encode(command.SerializeToString()).decode()  # type: ignore[attr-defined]


async def run(duration_s: float, concurrency: int, rounds: int, warmup_s: float = 0.5) -> Comparison:
    with (
        tempfile.TemporaryDirectory(prefix="cos-bench-trivial-") as scratch,
        bank_and_node() as (_, node),
        trivial_http_server(Path(scratch)) as trivial,
    ):
        return await _measure(node, trivial, duration_s, concurrency, rounds, warmup_s)


async def _measure(
    node: Process, trivial: Process, duration_s: float, concurrency: int, rounds: int, warmup_s: float
) -> Comparison:
    ports = node.ports
    async with aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
        cos = ChiefOfStateServiceStub(channel)
        deposit = bank.deposit(1)
        deposit_body = json.dumps({"command": _base64(deposit)}).encode()

        # One account per worker and protocol: commands of one entity run one at a time (§3.2).
        await asyncio.gather(
            *(
                cos.ProcessCommand(
                    pb.ProcessCommandRequest(entity_id=f"{proto}-{i}", command=bank.open_account("B", 0)),
                    timeout=CALL_TIMEOUT_S,
                )
                for proto in ("grpc", "http")
                for i in range(concurrency)
            )
        )

        async def grpc_process(worker: int) -> object:
            request = pb.ProcessCommandRequest(entity_id=f"grpc-{worker}", command=deposit)
            return await cos.ProcessCommand(request, timeout=CALL_TIMEOUT_S)

        async def grpc_state(worker: int) -> object:
            return await cos.GetState(pb.GetStateRequest(entity_id=f"grpc-{worker}"), timeout=CALL_TIMEOUT_S)

        def in_process(call: Call) -> Workload:
            async def load() -> tuple[LoadResult, int]:
                # Warm right before measuring: caches, connections and code paths.
                warm = await closed_loop("warm-up", call, concurrency, warmup_s)
                result = await closed_loop("measured", call, concurrency, duration_s)
                return result, warm.calls + warm.failures + result.calls + result.failures

            return load

        def http(port: int, method: str, path: str, body: bytes = b"") -> Workload:
            async def load() -> tuple[LoadResult, int]:
                return await http_load(port, method, path, body, concurrency, warmup_s, duration_s)

            return load

        state_path = "/v1/entities/http-{worker}/state"
        workloads: dict[str, Workload] = {
            "ProcessCommand gRPC": in_process(grpc_process),
            "ProcessCommand HTTP": http(
                ports["http"], "POST", "/v1/commands/http-{worker}/process", deposit_body
            ),
            "GetState gRPC": in_process(grpc_state),
            "GetState HTTP": http(ports["http"], "GET", state_path),
            TRIVIAL: http(trivial.ports["http"], "GET", state_path),
        }
        measured: list[dict[str, LoadResult]] = []
        cpu: list[dict[str, float]] = []
        for _ in range(rounds):
            this_round: dict[str, LoadResult] = {}
            round_cpu: dict[str, float] = {}
            for name, load in workloads.items():
                server = trivial if name == TRIVIAL else node
                cpu_before = cpu_seconds(server.popen.pid)
                result, all_calls = await load()
                this_round[name] = result
                # CPU per call over the warm-up and the window alike: both are spent on calls
                per_call = (cpu_seconds(server.popen.pid) - cpu_before) / all_calls if all_calls else 0.0
                round_cpu[name] = per_call * result.calls
            measured.append(this_round)
            cpu.append(round_cpu)
        return Comparison(measured, concurrency, cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.http_vs_grpc", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per workload (default 3)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    comparison = asyncio.run(run(args.duration, args.concurrency, args.rounds))
    print(comparison.report())
    return 0 if comparison.failures == 0 and comparison.headroom.valid else 1


if __name__ == "__main__":
    sys.exit(main())

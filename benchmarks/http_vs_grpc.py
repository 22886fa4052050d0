"""ProcessCommand and GetState over HTTP/JSON against the same calls over gRPC, in one run.

    python -m benchmarks.http_vs_grpc [--duration 5] [--concurrency 32]

Starts the bank write handler and one node (`COS_SERVER_PROTOCOL=both`) as real processes, then runs a
closed-loop load of deposits (ProcessCommand) and GetState through each protocol for `--duration`
seconds, and prints throughput and p50/p99 latency per workload plus the HTTP/gRPC ratios. Both
protocols reach the same node and the same command path, so the ratio isolates the API layer (JSON,
base64, FastAPI/uvicorn versus protobuf and grpc.aio). The load generator shares the machine's cores
with the node and the handler; it is one process for both protocols, so both pay the same tax, except
that an httpx client costs more CPU per call than a grpc.aio one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys

import httpx
from chiefofstate_examples.bank import client as bank
from google.protobuf.message import Message
from grpc import aio

from benchmarks.http_bench_common import (
    TABLE_HEADER,
    KeepAliveConnection,
    LoadResult,
    bank_and_node,
    closed_loop,
)
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub

CALL_TIMEOUT_S = 10.0


def _base64(message: Message) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


async def run(duration_s: float, concurrency: int) -> list[LoadResult]:
    with bank_and_node() as (_, node):
        grpc_target = f"127.0.0.1:{node.ports['grpc']}"
        http_base = f"http://127.0.0.1:{node.ports['http']}"
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with (
            aio.insecure_channel(grpc_target) as channel,
            httpx.AsyncClient(base_url=http_base, limits=limits, timeout=CALL_TIMEOUT_S) as http,
        ):
            cos = ChiefOfStateServiceStub(channel)
            deposit = bank.deposit(1)
            deposit_body = json.dumps({"command": _base64(deposit)}).encode()
            headers = {"Content-Type": "application/json"}

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

            connections = [KeepAliveConnection("127.0.0.1", node.ports["http"]) for _ in range(concurrency)]

            async def lean_http(worker: int, method: str, path: str, body: bytes = b"") -> object:
                status, reply = await connections[worker].request(method, path, body)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {reply[:200]!r}")
                return json.loads(reply)

            async def http_process(worker: int) -> object:
                return await lean_http(worker, "POST", f"/v1/commands/http-{worker}/process", deposit_body)

            async def http_state(worker: int) -> object:
                return await lean_http(worker, "GET", f"/v1/entities/http-{worker}/state")

            async def httpx_process(worker: int) -> object:
                reply = await http.post(
                    f"/v1/commands/http-{worker}/process", content=deposit_body, headers=headers
                )
                reply.raise_for_status()
                return reply.json()

            async def httpx_state(worker: int) -> object:
                reply = await http.get(f"/v1/entities/http-{worker}/state")
                reply.raise_for_status()
                return reply.json()

            async def grpc_state(worker: int) -> object:
                return await cos.GetState(
                    pb.GetStateRequest(entity_id=f"grpc-{worker}"), timeout=CALL_TIMEOUT_S
                )

            workloads = [
                ("ProcessCommand gRPC", grpc_process),
                ("ProcessCommand HTTP", http_process),
                ("GetState gRPC", grpc_state),
                ("GetState HTTP", http_state),
                # the same HTTP calls from an httpx client: what a typical Python caller sees
                ("ProcessCommand HTTP (httpx client)", httpx_process),
                ("GetState HTTP (httpx client)", httpx_state),
            ]
            results = []
            try:
                for name, call in workloads:
                    # Warm right before measuring: connections, caches and code paths; uvicorn closes
                    # keep-alive connections idle for 5 s, so warming everything first would not do.
                    await closed_loop("warm-up", call, concurrency, min(1.0, duration_s / 4))
                    results.append(await closed_loop(name, call, concurrency, duration_s))
                return results
            finally:
                for connection in connections:
                    await connection.close()


def report(results: list[LoadResult], concurrency: int) -> str:
    by_name = {result.name: result for result in results}
    lines = [f"concurrency {concurrency}", "", TABLE_HEADER, *(result.row() for result in results), ""]
    for rpc in ("ProcessCommand", "GetState"):
        grpc_result, http_result = by_name[f"{rpc} gRPC"], by_name[f"{rpc} HTTP"]
        ratio = http_result.throughput / grpc_result.throughput if grpc_result.throughput else float("nan")
        lines.append(
            f"{rpc}: HTTP/gRPC throughput {ratio:.2f}, p50 {http_result.percentile_ms(0.5):.2f} vs "
            f"{grpc_result.percentile_ms(0.5):.2f} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.http_vs_grpc", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per workload (default 4)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.duration, args.concurrency))
    print(report(results, args.concurrency))
    return 0 if all(result.failures == 0 for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Subscription fan-out: events/s delivered to 1, 10 and 100 subscribers, against the command rate.

    python -m benchmarks.subscription_fanout [--duration 4] [--concurrency 32] [--subscribers 1,10,100]

Starts the bank write handler and a node with `COS_SUBSCRIPTION_ENABLED=true`, then for each subscriber
count runs a closed-loop load of deposits (one event each) over gRPC while a separate reader process
holds that many `SubscribeAll` streams and counts what they receive. Reported per count: the command
rate, the rate of events delivered (all subscribers together, counted until the streams drain), the
fan-out ratio delivered/s ÷ commands/s (ideal: the number of subscribers), completeness (events
delivered ÷ events owed) and the command rate relative to the run without subscribers. Subscribers that
fall more than COS_SUBSCRIPTION_BUFFER_SIZE events behind are ended by the node (RESOURCE_EXHAUSTED) and
counted as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass

from chiefofstate_examples.bank import client as bank
from grpc import aio

from benchmarks.http_bench_common import bank_and_node, closed_loop
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub

CALL_TIMEOUT_S = 10.0
STREAMS_PER_CHANNEL = 10
DRAIN_LIMIT_S = 10.0


# --- the reader process -----------------------------------------------------------------------


async def read_streams(target: str, subscribers: int) -> None:
    """Hold `subscribers` SubscribeAll streams; print "ready", then a JSON line of counts every 0.2 s
    until stdin closes."""
    channels = [aio.insecure_channel(target) for _ in range(max(1, -(-subscribers // STREAMS_PER_CHANNEL)))]
    received = [0] * subscribers
    endings: Counter[str] = Counter()

    async def consume(index: int) -> None:
        stub = ChiefOfStateServiceStub(channels[index // STREAMS_PER_CHANNEL])
        call = stub.SubscribeAll(pb.SubscribeAllRequest(subscription_id=f"bench-{index}"))
        await call.initial_metadata()  # registered from here on
        ready_count[0] += 1
        try:
            async for _ in call:
                received[index] += 1
        except aio.AioRpcError as error:
            endings[error.code().name] += 1

    ready_count = [0]
    readers = [asyncio.create_task(consume(i)) for i in range(subscribers)]
    try:
        for _ in range(3000):  # at most 30 s for every stream to be registered
            if ready_count[0] == subscribers:
                break
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        stdin_closed = asyncio.create_task(asyncio.to_thread(sys.stdin.read))
        while not stdin_closed.done():
            print(json.dumps({"received": sum(received), "ended": dict(endings)}), flush=True)
            await asyncio.wait([stdin_closed], timeout=0.2)
        print(json.dumps({"received": sum(received), "ended": dict(endings)}), flush=True)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for channel in channels:
            await channel.close()


# --- the driver -------------------------------------------------------------------------------


@dataclass
class FanOutResult:
    subscribers: int
    commands_per_s: float
    commands: int
    delivered: int
    delivered_per_s: float
    ended: dict[str, int]

    def row(self, baseline_rate: float) -> str:
        owed = self.commands * self.subscribers
        fan_out = self.delivered_per_s / self.commands_per_s if self.commands_per_s else 0.0
        complete = f"{self.delivered / owed:.3f}" if owed else "—"
        relative = self.commands_per_s / baseline_rate if baseline_rate else float("nan")
        ended = ", ".join(f"{code} {count}" for code, count in self.ended.items()) or "none"
        cells = [
            str(self.subscribers),
            f"{self.commands_per_s:,.0f}",
            f"{relative:.2f}",
            f"{self.delivered_per_s:,.0f}",
            f"{fan_out:.2f}",
            complete,
            ended,
        ]
        return "| " + " | ".join(cells) + " |"


HEADER = (
    "| subscribers | commands/s | vs none | events delivered/s | delivered/s ÷ commands/s | "
    "delivered ÷ owed | ended early |\n| ---: | ---: | ---: | ---: | ---: | ---: | --- |"
)


async def measure(
    cos: ChiefOfStateServiceStub, target: str, subscribers: int, concurrency: int, duration_s: float
) -> FanOutResult:
    deposit = bank.deposit(1)

    async def command(worker: int) -> object:
        return await cos.ProcessCommand(
            pb.ProcessCommandRequest(entity_id=f"fan-{worker}", command=deposit), timeout=CALL_TIMEOUT_S
        )

    reader = None
    if subscribers:
        reader = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.subscription_fanout", "--reader", target, str(subscribers),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert reader.stdout is not None and reader.stdin is not None
        line = await asyncio.wait_for(reader.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"the reader did not start: {line!r}")
    started = time.perf_counter()
    load = await closed_loop(f"{subscribers} subscribers", command, concurrency, duration_s)
    delivered, ended = 0, {}
    if reader is not None:
        assert reader.stdout is not None and reader.stdin is not None
        owed = load.calls * subscribers
        drain_until = time.perf_counter() + DRAIN_LIMIT_S
        while time.perf_counter() < drain_until:
            status = json.loads(await asyncio.wait_for(reader.stdout.readline(), 10))
            delivered, ended = status["received"], status["ended"]
            if delivered >= owed or sum(ended.values()) == subscribers:
                break
        elapsed = time.perf_counter() - started
        reader.stdin.close()
        await asyncio.wait_for(reader.wait(), 30)
    else:
        elapsed = load.seconds
    return FanOutResult(subscribers, load.throughput, load.calls, delivered, delivered / elapsed, ended)


async def run(counts: list[int], concurrency: int, duration_s: float) -> list[FanOutResult]:
    with bank_and_node(COS_SUBSCRIPTION_ENABLED="true") as (_, node):
        target = f"127.0.0.1:{node.ports['grpc']}"
        async with aio.insecure_channel(target) as channel:
            cos = ChiefOfStateServiceStub(channel)
            await asyncio.gather(
                *(
                    cos.ProcessCommand(
                        pb.ProcessCommandRequest(entity_id=f"fan-{i}", command=bank.open_account("F", 0)),
                        timeout=CALL_TIMEOUT_S,
                    )
                    for i in range(concurrency)
                )
            )

            async def warm(worker: int) -> object:
                return await cos.GetState(
                    pb.GetStateRequest(entity_id=f"fan-{worker}"), timeout=CALL_TIMEOUT_S
                )

            await closed_loop("warm-up", warm, concurrency, 0.5)
            return [await measure(cos, target, count, concurrency, duration_s) for count in [0, *counts]]


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--reader"]:
        asyncio.run(read_streams(args_in[1], int(args_in[2])))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.subscription_fanout", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load per run (default 4)")
    parser.add_argument("--concurrency", type=int, default=32, help="commands in flight (default 32)")
    parser.add_argument("--subscribers", default="1,10,100", help="comma-separated counts (default 1,10,100)")
    args = parser.parse_args(args_in)
    counts = [int(part) for part in args.subscribers.split(",") if part.strip()]
    results = asyncio.run(run(counts, args.concurrency, args.duration))
    baseline = results[0].commands_per_s
    print(f"concurrency {args.concurrency}, {args.duration:g}s of deposits per run (one event each)\n")
    print(HEADER)
    for result in results:
        print(result.row(baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Subscription fan-out: what streaming events to 1, 100 and 500 subscribers costs, and what it leaves
for commands.

    python -m benchmarks.subscription_fanout [--duration 4] [--concurrency 16] [--subscribers 1,100,500]
                                             [--read-rate N]

Starts the bank write handler and a node with `COS_SUBSCRIPTION_ENABLED=true` (SQLite, or PostgreSQL
when COS_DB_HOST is set), then, for no subscribers and for each count, holds that many `SubscribeAll`
streams in a separate reader process (benchmarks/fanout_streams.py) while `--concurrency` deposits (one
event each) and as many `GetState` calls run in a closed loop for `--duration` seconds. The streams are
read as fast as the reader can, or with `--read-rate N` at most N messages per second each: slow
subscribers, which the node must end once they pass its bounds, and a reader that leaves the machine's
CPU to the node.

Two tables come out:

* delivery: events delivered per second to all subscribers together during the load, against a bare
  grpc.aio server (no subscription logic, the same message written again and again) streaming to the
  same number of streams read by the same reader. The ratio says how close the node's fan-out comes
  to what grpc.aio can stream at all. With few subscribers the node is held back by the command rate
  (each event is one command), not by the fan-out, so the ratio there is low by construction;
  "delivered ÷ owed" says whether every subscriber got every event. Beside the rates, the CPU time of
  each server process per message sent, which depends less than rates on what else the machine is
  running; for the node, the CPU it spent beyond what the run without subscribers spent per deposit
  (and its GetState calls), divided by the events delivered: an estimate of the fan-out's own cost.
* commands: deposits per second and the GetState p99 with subscribers attached, as ratios to the run
  without any (measured first and last; the better of the two counts). A fan-out that never starves
  commands keeps both near 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from chiefofstate_examples.bank import client as bank
from grpc import aio

from benchmarks.http_bench_common import bank_and_node, closed_loop
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub

CALL_TIMEOUT_S = 10.0
STREAMS = "benchmarks.fanout_streams"
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


@dataclass
class Run:
    subscribers: int
    commands_per_s: float = 0.0
    get_p99_ms: float = 0.0
    commands: int = 0
    delivered: int = 0
    delivered_per_s: float = 0.0
    bare_per_s: float = 0.0
    node_cpu_share: float = 0.0  # node CPU seconds per second of load
    bare_cpu_us: float = 0.0  # bare server CPU per message streamed
    ended: dict[str, int] = field(default_factory=dict)


class Reader:
    """The reader process: `count` SubscribeAll streams on `target`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(cls, target: str, count: int, rate: float = 0.0) -> Reader:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", STREAMS, "reader", target, str(count), str(rate),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 90)
        if line.strip() != b"ready":
            raise RuntimeError(f"the reader did not start: {line!r}")
        return cls(process)

    async def counts(self) -> tuple[int, dict[str, int]]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(b"?\n")
        status = json.loads(await asyncio.wait_for(self._process.stdout.readline(), 30))
        return int(status["received"]), dict(status["ended"])

    async def stop(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        await asyncio.wait_for(self._process.wait(), 30)


async def measure_node(
    cos: ChiefOfStateServiceStub, target: str, node_pid: int, subscribers: int, args: argparse.Namespace
) -> Run:
    deposit = bank.deposit(1)

    async def command(worker: int) -> object:
        return await cos.ProcessCommand(
            pb.ProcessCommandRequest(entity_id=f"fan-{worker}", command=deposit), timeout=CALL_TIMEOUT_S
        )

    async def get_state(worker: int) -> object:
        return await cos.GetState(pb.GetStateRequest(entity_id=f"fan-{worker}"), timeout=CALL_TIMEOUT_S)

    run = Run(subscribers)
    reader = await Reader.start(target, subscribers, args.read_rate) if subscribers else None
    try:
        before = (await reader.counts())[0] if reader else 0
        started, cpu_before = time.perf_counter(), cpu_seconds(node_pid)
        commands, gets = await asyncio.gather(
            closed_loop("deposits", command, args.concurrency, args.duration),
            closed_loop("get", get_state, args.concurrency, args.duration),
        )
        run.node_cpu_share = (cpu_seconds(node_pid) - cpu_before) / (time.perf_counter() - started)
        if reader is not None:
            during = (await reader.counts())[0] - before
            run.delivered_per_s = during / (time.perf_counter() - started)
            # Then let the streams drain (bounded) to see whether every event reached every subscriber.
            drain_until = time.perf_counter() + 10
            owed = commands.calls * subscribers
            while time.perf_counter() < drain_until:
                received, run.ended = await reader.counts()
                run.delivered = received - before
                if run.delivered >= owed or sum(run.ended.values()) == subscribers:
                    break
                await asyncio.sleep(0.2)
    finally:
        if reader is not None:
            await reader.stop()
    run.commands_per_s, run.commands = commands.throughput, commands.calls
    run.get_p99_ms = gets.percentile_ms(0.99)
    return run


async def measure_bare(message: bytes, subscribers: int, duration_s: float) -> tuple[float, float]:
    """Messages per second a bare grpc.aio server streams to `subscribers` streams of the same reader,
    and its CPU µs per message."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", STREAMS, "bare", message.hex(), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert server.stdout is not None and server.stdin is not None
    try:
        port = int(await asyncio.wait_for(server.stdout.readline(), 60))
        reader = await Reader.start(f"127.0.0.1:{port}", subscribers)
        try:
            before = (await reader.counts())[0]
            started, cpu_before = time.perf_counter(), cpu_seconds(server.pid)
            await asyncio.sleep(duration_s)
            sent = (await reader.counts())[0] - before
            cpu_us = (cpu_seconds(server.pid) - cpu_before) / max(sent, 1) * 1e6
            return sent / (time.perf_counter() - started), cpu_us
        finally:
            await reader.stop()
    finally:
        server.stdin.close()
        await asyncio.wait_for(server.wait(), 30)


async def run_all(counts: list[int], args: argparse.Namespace) -> list[Run]:
    with bank_and_node(COS_SUBSCRIPTION_ENABLED="true") as (_, node):
        target = f"127.0.0.1:{node.ports['grpc']}"
        async with aio.insecure_channel(target) as channel:
            cos = ChiefOfStateServiceStub(channel)
            opened = await asyncio.gather(
                *(
                    cos.ProcessCommand(
                        pb.ProcessCommandRequest(entity_id=f"fan-{i}", command=bank.open_account("F", 0)),
                        timeout=CALL_TIMEOUT_S,
                    )
                    for i in range(args.concurrency)
                )
            )
            pid = node.popen.pid
            warm_up = argparse.Namespace(concurrency=args.concurrency, duration=3.0, read_rate=0.0)
            await measure_node(cos, target, pid, 0, warm_up)
            # Without subscribers first and last: the better of the two is the baseline.
            runs = [await measure_node(cos, target, pid, count, args) for count in [0, *counts, 0]]
    # A message of the node's own shape and size: a deposit's command in place of its event.
    sample = pb.SubscribeAllResponse(
        subscription_id="bench-0", event=bank.deposit(1), resulting_state=opened[0].state, meta=opened[0].meta
    ).SerializeToString()
    for run in runs:
        if run.subscribers:
            run.bare_per_s, run.bare_cpu_us = await measure_bare(sample, run.subscribers, args.duration)
    return runs


def baseline(runs: list[Run]) -> Run:
    """The runs without subscribers merged, the better figure of each."""
    alone = [run for run in runs if not run.subscribers]
    best = max(alone, key=lambda run: run.commands_per_s)
    return Run(
        0,
        commands_per_s=best.commands_per_s,
        get_p99_ms=min(run.get_p99_ms for run in alone),
        node_cpu_share=best.node_cpu_share,
    )


def fan_out_cpu_us(run: Run, base: Run) -> float:
    """Node CPU per delivered event beyond the commands' share, scaled from the run without subscribers."""
    if not run.delivered_per_s or not base.commands_per_s:
        return float("nan")
    for_commands = base.node_cpu_share * run.commands_per_s / base.commands_per_s
    return max(run.node_cpu_share - for_commands, 0.0) / run.delivered_per_s * 1e6


def delivery_table(runs: list[Run]) -> str:
    lines = [
        "| subscribers | events delivered/s | bare grpc.aio msgs/s | ratio | delivered ÷ owed "
        "| ended early | node CPU µs/event | bare CPU µs/msg |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for run in runs:
        if not run.subscribers:
            continue
        owed = run.commands * run.subscribers
        ended = ", ".join(f"{code} {count}" for code, count in run.ended.items()) or "none"
        ratio = run.delivered_per_s / run.bare_per_s if run.bare_per_s else float("nan")
        lines.append(
            f"| {run.subscribers} | {run.delivered_per_s:,.0f} | {run.bare_per_s:,.0f} | {ratio:.2f} | "
            f"{run.delivered / owed if owed else float('nan'):.3f} | {ended} | "
            f"{fan_out_cpu_us(run, baseline(runs)):.1f} | {run.bare_cpu_us:.1f} |"
        )
    return "\n".join(lines)


def command_table(runs: list[Run]) -> str:
    """Ratios to the better of the two runs without subscribers."""
    base = baseline(runs)
    lines = [
        "| subscribers | deposits/s | vs none | GetState p99 ms | vs none | node CPU |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        rate = run.commands_per_s / base.commands_per_s if base.commands_per_s else float("nan")
        p99 = run.get_p99_ms / base.get_p99_ms if base.get_p99_ms else float("nan")
        lines.append(
            f"| {run.subscribers} | {run.commands_per_s:,.0f} | {rate:.2f} | "
            f"{run.get_p99_ms:.2f} | {p99:.2f} | {run.node_cpu_share:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.subscription_fanout", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load per run (default 4)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="deposits, and as many GetState calls, in flight (default 16)",
    )
    parser.add_argument(
        "--subscribers", default="1,100,500", help="comma-separated counts (default 1,100,500)"
    )
    parser.add_argument(
        "--read-rate", type=float, default=0.0, help="messages/s each stream is read at (default: at once)"
    )
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.subscribers.split(",") if part.strip()]
    runs = asyncio.run(run_all(counts, args))
    print(
        f"{args.concurrency} deposits (one event each) and {args.concurrency} GetState calls in flight, ",
        end="",
    )
    pace = f"read at {args.read_rate:g}/s each" if args.read_rate else "read as fast as possible"
    print(f"{args.duration:g}s per run; streams {pace}\n")
    print(delivery_table(runs) + "\n")
    print(command_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

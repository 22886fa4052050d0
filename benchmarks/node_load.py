"""One node under steady load on PostgreSQL, for quick A/B experiments: `python -m benchmarks.node_load`.

Starts the minimal write handler and `cos serve` as processes on a database of its own (created on the
given server, dropped at the end), keeps `--concurrency` requests in flight from this process for a
warm-up and then a measured window, and prints one line: throughput, latency percentiles, the mean
group-commit batch (from the node's /metrics) and the CPU per request of the node, the write handler,
the database backends and this load generator (from /proc). No floor is measured: compare lines of the
same run, or use `python -m benchmarks` for ratios. Extra `--env KEY=VALUE` pairs go to the node, so
one setting can be compared with another in back-to-back runs.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import asyncpg

from benchmarks.loadgen import Channels, Measurement, Workload
from benchmarks.processes import Fleet, cpu_seconds
from chiefofstate.node.event_loop import run_on_event_loop


def scraped(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def summed(text: str, name: str) -> float:
    """The sum of every labelled series of one metric (e.g. all rpc/code pairs of a histogram's _sum)."""
    return sum(float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def stage_means_ms(before: str, after: str, commands: int) -> dict[str, float]:
    """Where a command's time went inside the node, per command (mean ms), from its own histograms:
    the whole call, the write handler calls, and the group commit's transactions (shared by a batch)."""

    def delta(name: str) -> float:
        return summed(after, name) - summed(before, name)

    per = 1000 / commands if commands else 0.0
    request = delta("cos_request_duration_seconds_sum") * per
    handler = delta("cos_write_handler_call_duration_seconds_sum") * per
    append = delta("cos_journal_append_duration_seconds_sum") * per
    return {"request": request, "handler": handler, "append": append, "rest": request - handler - append}


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def phase(arguments: argparse.Namespace, name: str, seconds: float) -> Workload:
    """One phase of load (warm-up or measured) as the benchmark's load generator runs it: hot and get
    workloads keep the same entities across phases, new ones take fresh ids in each."""
    return Workload(
        targets=[],
        rpc="get" if arguments.workload == "get" else "process",
        entities="new" if arguments.workload == "new" else "hot",
        prefix=f"load-{name}" if arguments.workload == "new" else "load",
        workers=arguments.concurrency,
        first_worker=0,
        total_workers=arguments.concurrency,
        warmup_s=0.0,
        window_s=seconds,
        windows=1,
        prime=name == "warmup",
    )


async def database_pids(connect: dict[str, str], database: str) -> list[int]:
    connection = await asyncpg.connect(**connect, database="postgres")
    try:
        rows = await connection.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    finally:
        await connection.close()
    return [row["pid"] for row in rows]


async def measure(arguments: argparse.Namespace) -> str:
    connect = {"host": arguments.pg_host, "port": str(arguments.pg_port), "user": arguments.pg_user}
    database = "cos_load_" + uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(**connect, database="postgres")
    await admin.execute(f'CREATE DATABASE "{database}"')
    fleet = Fleet(Path(tempfile.mkdtemp(prefix="cos-node-load-")), {**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        handler = fleet.start_handler()
        store = {
            "COS_DB_HOST": arguments.pg_host,
            "COS_DB_PORT": str(arguments.pg_port),
            "COS_DB_USER": arguments.pg_user,
            "COS_DB_PASSWORD": "",
            "COS_DB_NAME": database,
            **dict(pair.split("=", 1) for pair in arguments.env),
        }
        node = fleet.start_node(store, handler, variant=arguments.variant)
        channels = Channels()
        try:
            stubs = await channels.stubs([f"127.0.0.1:{node.ports['grpc']}"])
            warmup = Measurement(phase(arguments, "warmup", arguments.warmup), stubs)
            await warmup.prime()
            await warmup.run(time.monotonic())
            backends = await database_pids(connect, database)
            metrics_port = node.ports["metrics"]
            before = metrics_text(metrics_port)
            cpu_before = [cpu_seconds(node.popen.pid), cpu_seconds(handler.popen.pid)]
            db_before = sum(cpu_seconds(pid) for pid in backends)
            own_before = time.process_time()
            measured = Measurement(phase(arguments, "measured", arguments.seconds), stubs)
            await measured.run(time.monotonic())
            own = time.process_time() - own_before
            db = sum(cpu_seconds(pid) for pid in backends) - db_before
            node_cpu, handler_cpu = (
                cpu_seconds(process.popen.pid) - start
                for process, start in zip((node, handler), cpu_before, strict=True)
            )
            after = metrics_text(metrics_port)
        finally:
            await channels.close()
    finally:
        fleet.stop_all()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()

    (window,) = measured.windows
    if window.errors:
        raise SystemExit(f"requests failed in the measured window: {dict(window.errors)}")
    latencies = sorted(window.latencies_us)
    count = len(latencies)
    if count == 0:
        raise SystemExit("no request completed in the measured window")

    def percentile(share: float) -> float:
        return latencies[min(count - 1, int(count * share))] / 1e3

    batches = scraped(after, "cos_journal_append_batch_size_count") - scraped(
        before, "cos_journal_append_batch_size_count"
    )
    appended = scraped(after, "cos_journal_append_batch_size_sum") - scraped(
        before, "cos_journal_append_batch_size_sum"
    )
    per_op = 1e6 / count
    stages = stage_means_ms(before, after, count) if arguments.workload != "get" else {}
    breakdown = "  node ms/cmd: " + " ".join(f"{name} {value:.2f}" for name, value in stages.items())
    return (
        f"{arguments.label}{arguments.workload} c={arguments.concurrency}:"
        f" {count / arguments.seconds:,.0f} ops/s"
        f"  p50 {percentile(0.5):.1f}  p90 {percentile(0.9):.1f}  p99 {percentile(0.99):.1f}"
        f"  max {latencies[-1] / 1e3:.0f} ms  p99/p50 {percentile(0.99) / percentile(0.5):.2f}"
        f"  batch {appended / batches if batches else 0:.1f}"
        f"  µs/op: node {node_cpu * per_op:.0f} handler {handler_cpu * per_op:.0f}"
        f" database {db * per_op:.0f} generator {own * per_op:.0f}"
        f"{breakdown if stages else ''}"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=("hot", "new", "get"), default="hot")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="more node settings")
    parser.add_argument("--label", default="", help="printed first, to tell runs apart")
    parser.add_argument("--variant", default="", help="an experiment of benchmarks/variants.py")
    arguments = parser.parse_args()
    if arguments.label:
        arguments.label += " "
    print(run_on_event_loop(measure(arguments), "uvloop"), flush=True)


if __name__ == "__main__":
    cli()

"""Command throughput with tracing exporting to a local OTLP receiver, against tracing off, in one run.

    python -m benchmarks.tracing_overhead [--seconds 8] [--concurrency 32] [--rounds 3]

Each round starts a fresh bank handler and node for each variant (SQLite, or PostgreSQL when COS_DB_HOST
is set), drives ProcessCommand over gRPC with a closed loop, and reports the median over rounds. The
receiver is a real OTLP/gRPC server in a process of its own (benchmarks/otlp_sink.py) that counts the
spans it is sent. A third variant samples 10 % of traces (OTEL_TRACES_SAMPLER=parentbased_traceidratio); a
fourth pushes metrics over OTLP every second instead of tracing (OTEL_METRICS_EXPORTER=otlp).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from chiefofstate_examples.bank import client as bank
from grpc import aio

from benchmarks.http_bench_common import TABLE_HEADER, LoadResult, bank_and_node, closed_loop, median
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub


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


def _traces(port: int, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        **extra,
    }


def _metrics(port: int) -> dict[str, str]:
    # pushed every second (the default is every minute), so the export's own cost shows too
    return {
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_METRICS_INSECURE": "true",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    }


# (label, the node and handler environment for the receiver's port); None: no telemetry pushed
VARIANTS: tuple[tuple[str, Callable[[int], dict[str, str]] | None], ...] = (
    ("off", None),
    ("on", _traces),
    (
        "on, 10 % sampled",
        lambda port: _traces(
            port, OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1"
        ),
    ),
    ("metrics over OTLP, no traces", _metrics),
)


@contextlib.contextmanager
def span_sink() -> Iterator[tuple[int, Callable[[], int]]]:
    """The counting OTLP receiver in its own process: its port, and a function that stops it and
    returns how many spans it received."""
    with tempfile.TemporaryDirectory(prefix="cos-otlp-") as scratch:
        count_file = Path(scratch) / "spans"
        sink = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.otlp_sink", "--count-file", str(count_file)],
            stdout=subprocess.PIPE,
            text=True,
        )

        def stop() -> int:
            if sink.poll() is None:
                sink.send_signal(signal.SIGTERM)
                sink.wait(30)
            return int(count_file.read_text()) if count_file.exists() else 0

        try:
            assert sink.stdout is not None
            line = sink.stdout.readline()
            if not line.startswith("listening on "):
                raise RuntimeError(f"the OTLP sink did not start: {line!r}")
            yield int(line.split()[-1]), stop
        finally:
            stop()


async def run(seconds: float, concurrency: int, rounds: int, port: int) -> dict[str, list[LoadResult]]:
    """Every variant once per round, in turn, so background load lands on all of them alike."""
    results: dict[str, list[LoadResult]] = {label: [] for label, _ in VARIANTS}
    for round_number in range(rounds):
        for label, environment in VARIANTS:
            env = environment(port) if environment is not None else {}
            with bank_and_node(**env) as (_, node):
                name = f"{label} #{round_number + 1}"
                results[label].append(await _drive(node.ports["grpc"], name, seconds, concurrency))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with span_sink() as (port, stop_sink):
        results = asyncio.run(run(args.seconds, args.concurrency, args.rounds, port))
        spans = stop_sink()
    print(TABLE_HEADER)
    for label, _ in VARIANTS:
        for result in results[label]:
            print(result.row())
    off_rate = median([result.throughput for result in results["off"]])
    print(f"\nmedian ProcessCommand/s, no telemetry pushed: {off_rate:,.0f}")
    for label, _ in VARIANTS[1:]:
        rate = median([result.throughput for result in results[label]])
        ratio = rate / off_rate
        print(f"{label}: {rate:,.0f}/s, ratio to off {ratio:.3f} (overhead {100 * (1 - ratio):.1f} %)")
    print(f"spans and metric exports received by the OTLP receiver (its own process): {spans}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

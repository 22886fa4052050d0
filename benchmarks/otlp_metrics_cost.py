"""What recording the OTLP metrics costs per call, in-process: `python -m benchmarks.otlp_metrics_cost`.

The node records `rpc.server.duration` once per served call and `rpc.client.duration` once per write
handler call (docs/operations.md, "Metrics over OTLP"). This measures one such recording with the
node's own aggregation (telemetry/otlp_metrics.py) against the OpenTelemetry SDK's histogram
instrument recording the same value with the same attributes, in the same run, best of `--repeats`.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, InMemoryMetricReader

from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.otlp_metrics import OtlpMetrics

SERVICE, METHOD = "chief_of_state.v1.ChiefOfStateService", "ProcessCommand"


def best_us(call: Callable[[], None], calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6


def measure(calls: int, repeats: int) -> tuple[float, float]:
    """(µs per recording with the node's aggregation, µs with the SDK's instrument)."""
    otlp = OtlpMetrics("cos", NodeMetrics().registry, ConsoleMetricExporter(out=io.StringIO()))
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    histogram = provider.get_meter("cos").create_histogram("rpc.server.duration", unit="ms")
    attributes = {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": METHOD,
        "rpc.grpc.status_code": 0,
    }
    node = best_us(lambda: otlp.rpc_server(SERVICE, METHOD, "OK", 0.002), calls, repeats)
    sdk = best_us(lambda: histogram.record(2.0, attributes), calls, repeats)
    provider.shutdown()
    return node, sdk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    node, sdk = measure(args.calls, args.repeats)
    print(f"one rpc.server.duration recording: node {node:.2f} µs, OpenTelemetry SDK instrument {sdk:.2f} µs")
    print(
        f"node ÷ SDK: {node / sdk:.3f}; per command (3 recordings: the call, HandleCommand, HandleEvent): "
        f"node {3 * node:.1f} µs, SDK {3 * sdk:.1f} µs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

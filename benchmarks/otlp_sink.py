"""A real OTLP/gRPC receiver in a process of its own that only counts spans (and metric exports), for
benchmarks.

    python -m benchmarks.otlp_sink --count-file PATH

Prints `listening on PORT` once serving; on SIGTERM or SIGINT writes the number of spans received to
PATH and exits. A collector runs apart from the node in production; so does this one here, so that
decoding the spans does not take CPU from the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from grpc import aio
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from chiefofstate.node.event_loop import run_on_event_loop


class CountingSink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: aio.ServicerContext[object, object],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += sum(
            len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


class MetricsSink(metrics_service_pb2_grpc.MetricsServiceServicer):
    """Accepts metric exports (counted with the spans: a benchmark wants to know they arrived)."""

    def __init__(self, counter: CountingSink) -> None:
        self._counter = counter

    async def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: aio.ServicerContext[object, object],
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._counter.spans += 1
        return metrics_service_pb2.ExportMetricsServiceResponse()


async def serve() -> int:
    """Serves until SIGTERM or SIGINT; returns the number of spans received."""
    sink = CountingSink()
    server = aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsSink(sink), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on {port}", flush=True)
    await stop.wait()
    await server.stop(1.0)
    return sink.spans


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count-file", type=Path, required=True)
    count_file = parser.parse_args().count_file
    count_file.write_text(str(run_on_event_loop(serve(), "uvloop")))


if __name__ == "__main__":
    main()

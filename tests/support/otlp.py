"""A real OTLP/gRPC trace receiver for tests, built from the opentelemetry-proto service definitions."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from grpc import aio
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def _plain(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, object]
    links: tuple[str, ...]  # span ids this span links to
    status_code: int


@dataclass
class SpanCollector(trace_service_pb2_grpc.TraceServiceServicer):
    spans: list[ReceivedSpan] = field(default_factory=list)

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: aio.ServicerContext[object, object],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = {a.key: _plain(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes={a.key: _plain(a.value) for a in span.attributes},
                            links=tuple(link.span_id.hex() for link in span.links),
                            status_code=span.status.code,
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(self, predicate: object, timeout_s: float = 20.0) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if callable(predicate) and predicate(self.spans):
                return list(self.spans)
            await asyncio.sleep(0.1)
        raise TimeoutError(f"spans never matched; received: {[s.name for s in self.spans]}")


async def start_receiver() -> tuple[aio.Server, int, SpanCollector]:
    collector = SpanCollector()
    server = aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, collector


@dataclass(frozen=True)
class ReceivedPoint:
    """One data point of a metric as a collector receives it."""

    service: str
    metric: str
    unit: str
    attributes: dict[str, object]
    value: float  # the sum for a histogram, else the point's value
    count: int  # a histogram's count; 0 for other kinds


@dataclass
class MetricCollector(metrics_service_pb2_grpc.MetricsServiceServicer):
    points: list[ReceivedPoint] = field(default_factory=list)

    def take(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        for resource_metrics in request.resource_metrics:
            resource = {a.key: _plain(a.value) for a in resource_metrics.resource.attributes}
            service = str(resource.get("service.name", ""))
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        attributes = {a.key: _plain(a.value) for a in point.attributes}
                        if kind == "histogram":
                            value, count = point.sum, point.count
                        else:
                            value = point.as_double if point.HasField("as_double") else point.as_int
                            count = 0
                        self.points.append(
                            ReceivedPoint(service, metric.name, metric.unit, attributes, value, count)
                        )

    async def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: aio.ServicerContext[object, object],
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self.take(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def named(self, metric: str, **attributes: object) -> list[ReceivedPoint]:
        return [
            point
            for point in self.points
            if point.metric == metric and all(point.attributes.get(k) == v for k, v in attributes.items())
        ]

    async def wait_for_metric(
        self, metric: str, timeout_s: float = 30.0, **attributes: object
    ) -> ReceivedPoint:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.named(metric, **attributes)
            if found:
                return found[-1]
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no {metric} {attributes}; received: {sorted({p.metric for p in self.points})}")


async def start_metrics_receiver() -> tuple[aio.Server, int, MetricCollector]:
    """An OTLP/gRPC metrics receiver on a free port."""
    collector = MetricCollector()
    server = aio.server()
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, collector


async def start_metrics_http_receiver() -> tuple[asyncio.Server, int, MetricCollector]:
    """An OTLP/HTTP (protobuf) metrics receiver: POST /v1/metrics, one request per connection or
    kept alive, answered 200 with an empty export response."""
    collector = MetricCollector()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next(
                    (
                        int(line.split(":", 1)[1])
                        for line in lines
                        if line.lower().startswith("content-length:")
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                if lines[0].startswith("POST /v1/metrics"):
                    collector.take(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
                reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                    + f"Content-Length: {len(reply)}\r\n\r\n".encode()
                    + reply
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1]), collector

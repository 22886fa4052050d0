"""A real OTLP/gRPC trace receiver for tests, built from the opentelemetry-proto service definitions."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from grpc import aio
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

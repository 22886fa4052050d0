"""OpenTelemetry tracing, configured by the standard OTEL_* variables (docs/contract.md §10.7, §12).

Off unless an OTLP endpoint is set, and always off with OTEL_SDK_DISABLED=true or upstream's
OTEL_JAVAAGENT_ENABLED=false. Off means a no-op tracer: no exporter thread, no context extraction,
nothing on the hot path but a flag check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from chiefofstate.config.tracing import TracingSettings

# The one context manager `span` hands out when tracing is off (callers that skip building a span's
# attributes when off return it too).
NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

# Span names upstream emits, so existing dashboards and queries keep working (docs/contract.md §12).
SPAN_PROCESS_COMMAND = "CosService.processCommand"
SPAN_GET_STATE = "CosService.getState"
SPAN_SUBSCRIBE = "CosService.subscribe"
SPAN_SUBSCRIBE_ALL = "CosService.subscribeAll"
SPAN_ENTITY_COMMAND = "Entity.handleCommand"
SPAN_ENTITY_GET_STATE = "PersistentEntity.HandleGetStateCommand"
SPAN_REMOTE_CALLS = "PersistentEntity.HandleRemoteCommandsAndEvents"
SPAN_HANDLE_EVENT = "Entity.handleEvent"
SPAN_PERSIST = "Entity.persistEventAndReply"
SPAN_REMOTE_HANDLE_COMMAND = "RemoteCommandHandler.HandleCommand"
SPAN_REMOTE_HANDLE_EVENT = "RemoteCommandHandler.HandleEvent"
SPAN_HTTP_HANDLE_COMMAND = "HttpCommandHandler.HandleCommand"
SPAN_HTTP_HANDLE_EVENT = "HttpEventHandler.HandleEvent"
# Spans of our own, for steps upstream does not name.
SPAN_MAILBOX = "Entity.mailbox"
SPAN_RECOVERY = "Entity.recover"
SPAN_JOURNAL_BATCH = "Journal.appendBatch"
SPAN_FORWARD = "Cluster.forward"


class Tracing:
    """The node's tracer; `enabled` is checked before any work done only for tracing."""

    def __init__(self, settings: TracingSettings) -> None:
        self.enabled = settings.enabled
        self._provider: TracerProvider | None = None
        if not settings.enabled:
            self.tracer: trace.Tracer = trace.NoOpTracer()
            return
        # Imported only when on, so a node without tracing never loads the exporter machinery.
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

        exporter: SpanExporter
        if settings.traces_protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            exporter = HttpExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        self._provider = provider
        self.tracer = provider.get_tracer("chiefofstate")

    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        parent: Context | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        links: Sequence[Link] = (),
    ) -> AbstractContextManager[trace.Span | None]:
        """A span made current for the block; None when tracing is off.

        Off, this returns one shared do-nothing context manager: the command path creates several spans
        per command, and a generator per span would be paid even with tracing off.
        """
        if not self.enabled:
            return NO_SPAN
        return self._recorded_span(name, kind, parent, attributes, links)

    @contextlib.contextmanager
    def _recorded_span(
        self,
        name: str,
        kind: SpanKind,
        parent: Context | None,
        attributes: Mapping[str, AttributeValue] | None,
        links: Sequence[Link],
    ) -> Iterator[trace.Span]:
        """An exception leaving the block marks the span as an error with the failure's status name."""
        with self.tracer.start_as_current_span(
            name, context=parent, kind=kind, attributes=attributes, links=links, record_exception=False
        ) as span:
            try:
                yield span
            except Exception as failure:
                code = getattr(getattr(failure, "code", None), "name", type(failure).__name__)
                span.set_attribute("cos.status", str(code))
                span.set_status(Status(StatusCode.ERROR, str(failure) or str(code)))
                raise

    def current_link(self) -> Link | None:
        """A link to the current span, for work done later on its behalf (a group-commit batch)."""
        if not self.enabled:
            return None
        context = trace.get_current_span().get_span_context()
        return Link(context) if context.is_valid else None

    def extract(self, metadata: Sequence[tuple[str, str | bytes]]) -> Context | None:
        """The caller's trace context from request metadata (OTEL_PROPAGATORS decides the formats)."""
        if not self.enabled:
            return None
        carrier = {key: value for key, value in metadata if isinstance(value, str)}
        return propagate.extract(carrier)

    def inject(self) -> list[tuple[str, str]]:
        """Headers carrying the current span's context to the next process."""
        if not self.enabled:
            return []
        carrier: MutableMapping[str, str] = {}
        propagate.inject(carrier)
        return list(carrier.items())

    def shutdown(self) -> None:
        """Flush what is buffered and stop the exporter thread."""
        if self._provider is not None:
            self._provider.shutdown()


TRACING_OFF = Tracing(TracingSettings(enabled=False, service_name=""))

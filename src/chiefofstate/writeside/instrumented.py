"""Wraps any write handler with a client span per call (carrying the trace to the handler's process)
and a latency histogram by rpc and outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager

from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from chiefofstate.core.errors import Code, CosError
from chiefofstate.core.headers import HeaderValue
from chiefofstate.gen.chief_of_state.v1 import writeside_pb2
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.ports.write_handler import WriteHandler
from chiefofstate.telemetry import tracing as spans
from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.tracing import NO_SPAN, Tracing

WRITE_SIDE_SERVICE = writeside_pb2.DESCRIPTOR.services_by_name["WriteSideHandlerService"].full_name


class InstrumentedWriteHandler:
    def __init__(
        self,
        inner: WriteHandler,
        tracing: Tracing,
        metrics: NodeMetrics,
        protocol: str,
        target: tuple[str, int] = ("", 0),
    ) -> None:
        self._inner = inner
        self._target = target  # the handler's host and port, named in the OTLP client metrics
        self._tracing = tracing
        self._metrics = metrics
        # upstream names the client spans after its handler classes, one pair per protocol
        # (docs/contract.md §12)
        if protocol == "http":
            self._command_span, self._event_span = (
                spans.SPAN_HTTP_HANDLE_COMMAND,
                spans.SPAN_HTTP_HANDLE_EVENT,
            )
        else:
            self._command_span, self._event_span = (
                spans.SPAN_REMOTE_HANDLE_COMMAND,
                spans.SPAN_REMOTE_HANDLE_EVENT,
            )
        self._system = protocol

    def _span(self, name: str, rpc: str, entity_id: str) -> AbstractContextManager[object]:
        """Upstream's span for the call, around the standard client span of the call itself."""
        if not self._tracing.enabled:
            return NO_SPAN  # no attributes built for a span that is not recorded
        attributes = {"rpc.method": rpc, "cos.entity_id": entity_id}
        return self._tracing.span(name, kind=SpanKind.INTERNAL, attributes=attributes)

    def _client_span(self, rpc: str) -> AbstractContextManager[object]:
        """The standard client span (named as OpenTelemetry's gRPC or HTTP client instrumentation names
        it); its context is what the handler receives, so the handler's server span is its child."""
        if not self._tracing.enabled:
            return NO_SPAN
        host, port = self._target
        target: dict[str, AttributeValue] = {"server.address": host, "server.port": port}
        if self._system == "http":
            return self._tracing.span(
                "POST", kind=SpanKind.CLIENT, attributes={"http.request.method": "POST", **target}
            )
        attributes = {"rpc.system": "grpc", "rpc.service": WRITE_SIDE_SERVICE, "rpc.method": rpc, **target}
        return self._tracing.span(f"{WRITE_SIDE_SERVICE}/{rpc}", kind=SpanKind.CLIENT, attributes=attributes)

    def _with_trace(self, headers: Sequence[tuple[str, HeaderValue]]) -> Sequence[tuple[str, HeaderValue]]:
        """The headers plus the current span's context; the same sequence when tracing is off."""
        trace_headers = self._tracing.inject()
        return [*headers, *trace_headers] if trace_headers else headers

    # Both calls are timed inline rather than through a shared wrapper: one coroutine per call is all
    # this layer adds on the command path.
    async def handle_command(
        self,
        request: HandleCommandRequest,
        headers: Sequence[tuple[str, HeaderValue]],
        timeout_s: float,
    ) -> HandleCommandResponse:
        started = time.perf_counter()
        code = "OK"
        try:
            with (
                self._span(self._command_span, "HandleCommand", request.prior_event_meta.entity_id),
                self._client_span("HandleCommand"),
            ):
                return await self._inner.handle_command(request, self._with_trace(headers), timeout_s)
        except BaseException as error:
            code = _code_name(error)
            raise
        finally:
            self._observe("HandleCommand", code, time.perf_counter() - started)

    async def handle_event(
        self,
        request: HandleEventRequest,
        timeout_s: float,
        headers: Sequence[tuple[str, HeaderValue]] = (),
    ) -> HandleEventResponse:
        started = time.perf_counter()
        code = "OK"
        try:
            with (
                self._span(self._event_span, "HandleEvent", request.event_meta.entity_id),
                self._client_span("HandleEvent"),
            ):
                return await self._inner.handle_event(request, timeout_s, self._with_trace(headers))
        except BaseException as error:
            code = _code_name(error)
            raise
        finally:
            self._observe("HandleEvent", code, time.perf_counter() - started)

    def _observe(self, rpc: str, code: str, seconds: float) -> None:
        metrics = self._metrics
        metrics.observe_handler_call(rpc, code, seconds)
        if metrics.otlp is not None:
            metrics.otlp.write_handler_call(self._system, rpc, code, seconds, *self._target)

    async def close(self) -> None:
        await self._inner.close()


def _code_name(error: BaseException) -> str:
    """The outcome label of a failed call: the status it fails the command with (an unexpected
    exception becomes INTERNAL on the command path; a cancelled call is the caller giving up)."""
    if isinstance(error, CosError):
        return error.code.name
    if isinstance(error, asyncio.CancelledError):
        return Code.CANCELLED.name
    return Code.INTERNAL.name

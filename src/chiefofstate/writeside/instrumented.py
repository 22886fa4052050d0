"""Wraps any write handler with a client span per call (carrying the trace to the handler's process)
and a latency histogram by rpc and outcome."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from opentelemetry.trace import SpanKind

from chiefofstate.core.errors import CosError
from chiefofstate.core.headers import HeaderValue
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.telemetry import tracing as spans
from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.tracing import Tracing
from chiefofstate.writeside.port import WriteHandler

Response = TypeVar("Response")


class InstrumentedWriteHandler:
    def __init__(self, inner: WriteHandler, tracing: Tracing, metrics: NodeMetrics, protocol: str) -> None:
        self._inner = inner
        self._tracing = tracing
        self._metrics = metrics
        # upstream names the client spans after its handler classes, one pair per protocol (SPEC.md §12)
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

    async def _measured(
        self,
        rpc: str,
        span_name: str,
        entity_id: str,
        call: Callable[[Sequence[tuple[str, HeaderValue]]], Awaitable[Response]],
    ) -> Response:
        started = time.perf_counter()
        code = "OK"
        attributes = {"rpc.system": self._system, "rpc.method": rpc, "cos.entity_id": entity_id}
        try:
            with self._tracing.span(span_name, kind=SpanKind.CLIENT, attributes=attributes):
                return await call(self._tracing.inject())
        except CosError as error:
            code = error.code.name
            raise
        finally:
            self._metrics.observe_handler_call(rpc, code, time.perf_counter() - started)

    async def handle_command(
        self,
        request: HandleCommandRequest,
        headers: Sequence[tuple[str, HeaderValue]],
        timeout_s: float,
    ) -> HandleCommandResponse:
        return await self._measured(
            "HandleCommand",
            self._command_span,
            request.prior_event_meta.entity_id,
            lambda trace_headers: self._inner.handle_command(request, [*headers, *trace_headers], timeout_s),
        )

    async def handle_event(
        self,
        request: HandleEventRequest,
        timeout_s: float,
        headers: Sequence[tuple[str, HeaderValue]] = (),
    ) -> HandleEventResponse:
        return await self._measured(
            "HandleEvent",
            self._event_span,
            request.event_meta.entity_id,
            lambda trace_headers: self._inner.handle_event(request, timeout_s, [*headers, *trace_headers]),
        )

    async def close(self) -> None:
        await self._inner.close()

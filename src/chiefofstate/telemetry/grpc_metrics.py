"""Prometheus metrics for every method of every service the gRPC server serves (docs/operations.md),
recorded by wrapping each method's handler as it is registered.

Names and labels are those of go-grpc-prometheus and py-grpc-prometheus (`grpc_server_started_total`,
`grpc_server_handled_total`, `grpc_server_handling_seconds`, `grpc_server_msg_sent_total` with
`grpc_type`, `grpc_service`, `grpc_method`, `grpc_code`), so their dashboards and alerts apply. The
status is named as py-grpc-prometheus names it (`NOT_FOUND`), like the node's own `code` labels.

The wrapper is on the path of every command, so the work per call is two clock reads, two counters and
a histogram update on series bound in advance (a method's series are bound once per status code). The
handlers are wrapped once, at registration, through `measured_server`: a grpc.aio server interceptor would
do the same but costs a coroutine and a handler lookup on every call, several microseconds of a cached
GetState's budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc import aio

from chiefofstate.aio.wrapping_server import WrappingServer
from chiefofstate.telemetry.loop_metrics import CounterSeries, LoopCounter, LoopHistogram
from chiefofstate.telemetry.metrics import LATENCY_BUCKETS, NodeMetrics

# go-grpc-prometheus's grpc_type values, by (request streaming, response streaming)
_GRPC_TYPES = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}
HANDLER_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}

Context = aio.ServicerContext[Any, Any]


def failure_code(error: BaseException, context: Context) -> grpc.StatusCode:
    """The status a call that raised `error` ends with, as grpc.aio answers it to the client."""
    code = context.code()  # set by context.abort() or context.set_code()
    if code is not None:
        return code
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        # grpc.aio cancels the handler both when the client goes away and when the deadline passes.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN  # what grpc.aio answers for an unexpected exception


def success_code(context: Context) -> grpc.StatusCode:
    """A handler that returns normally may still have set a status with context.set_code()."""
    return context.code() or grpc.StatusCode.OK


def split_method(full_method: str) -> tuple[str, str]:
    """("pkg.Service", "Method") from "/pkg.Service/Method"."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


class MethodSeries:
    """The bound series of one method; a status code's `handled` series is bound on its first use."""

    __slots__ = (
        "_handled",
        "_handled_family",
        "_handled_ok",
        "_labels",
        "_node",
        "seconds",
        "sent",
        "started",
    )

    def __init__(self, metrics: GrpcServerMetrics, grpc_type: str, service: str, method: str) -> None:
        labels = (grpc_type, service, method)
        self._labels = labels
        self._node = metrics.node
        self._handled_family = metrics.handled
        self._handled: dict[grpc.StatusCode, CounterSeries] = {}
        self.started = metrics.started.labels(*labels)
        self.seconds = metrics.seconds.labels(*labels)
        self.sent = metrics.sent.labels(*labels) if grpc_type in ("server_stream", "bidi_stream") else None
        self._handled_ok = self._handled_series(grpc.StatusCode.OK)

    def _handled_series(self, code: grpc.StatusCode) -> CounterSeries:
        series = self._handled[code] = self._handled_family.labels(*self._labels, code.name)
        return series

    def finish(self, code: grpc.StatusCode, seconds: float) -> None:
        # OK without a dict lookup: hashing an Enum member runs Python code, on every call.
        handled = self._handled_ok if code is grpc.StatusCode.OK else self._handled.get(code)
        if handled is None:
            handled = self._handled_series(code)
        handled.inc()
        self.seconds.observe(seconds)
        otlp = self._node.otlp
        if otlp is not None:  # also pushed over OTLP as rpc.server.duration
            otlp.rpc_server(self._labels[1], self._labels[2], code.name, seconds)


class GrpcServerMetrics:
    def __init__(self, metrics: NodeMetrics) -> None:
        self.node = metrics
        registry = metrics.registry
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = LoopCounter(
            "grpc_server_started_total", "RPCs started on the server.", labels, registry
        )
        self.handled = LoopCounter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            [*labels, "grpc_code"],
            registry,
        )
        self.seconds = LoopHistogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end (the whole stream for streaming RPCs).",
            labels,
            registry,
            LATENCY_BUCKETS,
        )
        self.sent = LoopCounter(
            "grpc_server_msg_sent_total", "Messages sent by the server on streaming RPCs.", labels, registry
        )
        self._series: dict[str, MethodSeries] = {}
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def initialize(self, service_names: Iterable[str]) -> None:
        """Expose zero-valued series for every method of these services before their first call, as
        go-grpc-prometheus's InitializeMetrics does, so rate() and increase() see the first calls."""
        pool = descriptor_pool.Default()
        for service_name in service_names:
            try:
                service = pool.FindServiceByName(service_name)
            except KeyError:
                continue  # not in the default pool: its series appear on the first call
            for method in service.methods:
                kind = _GRPC_TYPES[(method.client_streaming, method.server_streaming)]
                self.method_series(f"/{service.full_name}/{method.name}", kind)

    def method_series(self, full_method: str, grpc_type: str) -> MethodSeries:
        series = self._series.get(full_method)
        if series is None:
            series = self._series[full_method] = MethodSeries(self, grpc_type, *split_method(full_method))
        return series

    def measured(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` of the full method name `method`, recording its calls; built once per method."""
        measured = self._handlers.get(method)
        if measured is None:
            measured = self._handlers[method] = self._measured_handler(method, handler)
        return measured

    def _measured_handler(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        streaming = (handler.request_streaming, handler.response_streaming)
        series = self.method_series(method, _GRPC_TYPES[streaming])
        behavior: Any = (
            handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        )
        measured: Callable[[Any, Context], object]
        if inspect.isasyncgenfunction(behavior):
            measured = measured_generator(behavior, series)
        elif inspect.iscoroutinefunction(behavior):
            measured = measured_coroutine(behavior, series)
        else:
            return handler  # a synchronous behaviour (grpc.aio's migration thread pool): not measured
        return HANDLER_FACTORIES[streaming](
            measured, handler.request_deserializer, handler.response_serializer
        )


def measured_coroutine(
    behavior: Callable[[Any, Any], Awaitable[Any]], series: MethodSeries
) -> Callable[[Any, Context], Awaitable[Any]]:
    """Wraps a coroutine behaviour: a unary reply, or a stream written with context.write()."""
    start = series.started.inc
    finish = series.finish
    clock = time.perf_counter
    sent = series.sent
    if sent is not None:
        count_sent = sent.inc

        async def measured_stream(request: Any, context: Context) -> Any:
            start()
            began = clock()
            try:
                result = await behavior(request, _CountingContext(context, count_sent))
            except BaseException as error:
                finish(failure_code(error, context), clock() - began)
                raise
            finish(success_code(context), clock() - began)
            return result

        return measured_stream

    async def measured(request: Any, context: Context) -> Any:
        start()
        began = clock()
        try:
            result = await behavior(request, context)
        except BaseException as error:
            finish(failure_code(error, context), clock() - began)
            raise
        finish(success_code(context), clock() - began)
        return result

    return measured


def measured_generator(
    behavior: Callable[[Any, Context], AsyncGenerator[Any, None]], series: MethodSeries
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    """Wraps an async-generator behaviour (a stream of yielded replies)."""
    finish = series.finish
    clock = time.perf_counter

    async def measured(request: Any, context: Context) -> AsyncIterator[Any]:
        series.started.inc()
        began = clock()
        try:
            async with contextlib.aclosing(behavior(request, context)) as replies:
                async for reply in replies:
                    yield reply
                    if series.sent is not None:
                        series.sent.inc()
        except BaseException as error:
            finish(failure_code(error, context), clock() - began)
            raise
        finish(success_code(context), clock() - began)

    return measured


class _CountingContext:
    """The call's context with its writes counted; everything else goes to the real context."""

    __slots__ = ("_context", "_count")

    def __init__(self, context: Context, count: Callable[[], None]) -> None:
        self._context = context
        self._count = count

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._count()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def measured_server(server: aio.Server, metrics: GrpcServerMetrics) -> WrappingServer:
    """The server as registration functions see it: every handler added through it is measured.
    A method no service answers is UNIMPLEMENTED, answered by grpc and not counted."""
    return WrappingServer(server, metrics.measured)

"""The standard gRPC server span for every call the node serves, as OpenTelemetry's gRPC
instrumentation makes it (and upstream's agent): named `package.Service/Method`, kind SERVER, with
`rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code`, in the caller's trace. The node's
own spans (`CosService.processCommand`, …) are its children (docs/operations.md, "Tracing").

Like the metrics, the handlers are wrapped once at registration (WrappingServer), and only when tracing
is on: a node without tracing serves its handlers unwrapped.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from chiefofstate.aio.wrapping_server import Handler, WrappingServer
from chiefofstate.telemetry.grpc_metrics import HANDLER_FACTORIES, failure_code, split_method, success_code
from chiefofstate.telemetry.tracing import Tracing

Context = aio.ServicerContext[Any, Any]
# The statuses that make a server span an error, as the semantic conventions list them (a caller's
# mistake, such as NOT_FOUND or INVALID_ARGUMENT, is not the server's error).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def traced_server(server: aio.Server, tracing: Tracing) -> aio.Server:
    """`server` as registration functions see it, every handler wrapped in its server span."""
    return WrappingServer(server, lambda method, handler: _traced(method, handler, tracing))


def _traced(method: str, handler: Handler, tracing: Tracing) -> Handler:
    streaming = (handler.request_streaming, handler.response_streaming)
    behavior: Any = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    service, name = split_method(method)
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    span_name = method.lstrip("/")

    def start(context: Context) -> Span:
        parent = tracing.extract(tuple(context.invocation_metadata() or ()))
        return tracing.tracer.start_span(
            span_name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )

    wrapped: Callable[[Any, Context], object]
    if inspect.isasyncgenfunction(behavior):
        wrapped = _generator(behavior, start)
    elif inspect.iscoroutinefunction(behavior):
        wrapped = _coroutine(behavior, start)
    else:
        return handler  # a synchronous behaviour (grpc.aio's thread pool): no span
    return HANDLER_FACTORIES[streaming](wrapped, handler.request_deserializer, handler.response_serializer)


def start_server_span(tracing: Tracing, method: str, metadata: Sequence[tuple[str, str | bytes]]) -> Span:
    """The server span of the full method `method` called with `metadata`, for a request that arrives
    some other way than as a call of its own (a forwarded request carried on a stream): the same span
    its call would have had."""
    service, name = split_method(method)
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    parent = tracing.extract(metadata)
    return tracing.tracer.start_span(
        method.lstrip("/"), context=parent, kind=SpanKind.SERVER, attributes=attributes
    )


def end_server_span(span: Span, code: grpc.StatusCode) -> None:
    _finish(span, code)


def _finish(span: Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


def _coroutine(
    behavior: Callable[[Any, Context], Awaitable[Any]], start: Callable[[Context], Span]
) -> Callable[[Any, Context], Awaitable[Any]]:
    async def traced(request: Any, context: Context) -> Any:
        span = start(context)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            result = await behavior(request, context)
        except BaseException as error:
            _finish(span, failure_code(error, context))
            raise
        finally:
            otel_context.detach(token)
        _finish(span, success_code(context))
        return result

    return traced


def _generator(
    behavior: Callable[[Any, Context], AsyncIterator[Any]], start: Callable[[Context], Span]
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def traced(request: Any, context: Context) -> AsyncIterator[Any]:
        span = start(context)
        current = trace.set_span_in_context(span)
        replies = behavior(request, context)
        try:
            while True:
                # The span is current while the handler runs, not while the reply waits to be sent:
                # each step attaches and detaches in the same context.
                token = otel_context.attach(current)
                try:
                    reply = await anext(replies)
                except StopAsyncIteration:
                    break
                finally:
                    otel_context.detach(token)
                yield reply
        except BaseException as error:
            _finish(span, failure_code(error, context))
            raise
        _finish(span, success_code(context))

    return traced

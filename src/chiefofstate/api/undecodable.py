"""Requests whose bytes are not the method's protobuf message are the caller's mistake: they get
`INVALID_ARGUMENT` and one WARN line, where grpc.aio would answer `UNKNOWN` and log a stack trace at
ERROR (docs/contract.md §3.10).

grpc.aio decodes a request before any handler runs, so the check wraps every registered handler: the
decoder answers a marker instead of raising, and the behaviour refuses the marker. Methods whose
requests stream (server reflection) are left as they are.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import grpc
from grpc import aio

log = logging.getLogger("chiefofstate.api")

_MAX_REASON_CHARS = 200
Context = aio.ServicerContext[Any, Any]


class Undecodable:
    """What a request decoder answers for bytes it cannot parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode_or_mark(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as error:  # protobuf's DecodeError, or a RuntimeError from upb
            return Undecodable(str(error)[:_MAX_REASON_CHARS] or type(error).__name__)

    return decode_or_mark


async def _refuse(method: str, request: Undecodable, context: Context) -> None:
    log.warning("request refused: method=%s status=INVALID_ARGUMENT reason=%s", method, request.reason)
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request is not a valid protobuf message for {method}: {request.reason}",
    )


def checked_handler(method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` of the full method name `method`, refusing undecodable requests."""
    if handler.request_streaming or handler.request_deserializer is None:
        return handler
    decode = _tolerant(handler.request_deserializer)
    serialize = handler.response_serializer
    if not handler.response_streaming:
        behavior: Any = handler.unary_unary
        if not inspect.iscoroutinefunction(behavior):
            return handler

        async def checked_unary(request: Any, context: Context) -> Any:
            if isinstance(request, Undecodable):
                await _refuse(method, request, context)
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(checked_unary, decode, serialize)
    streaming: Any = handler.unary_stream
    if inspect.isasyncgenfunction(streaming):

        async def checked_generator(request: Any, context: Context) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _refuse(method, request, context)
            async for reply in streaming(request, context):
                yield reply

        return grpc.unary_stream_rpc_method_handler(checked_generator, decode, serialize)
    if inspect.iscoroutinefunction(streaming):

        async def checked_stream(request: Any, context: Context) -> Any:
            if isinstance(request, Undecodable):
                await _refuse(method, request, context)
            return await streaming(request, context)

        return grpc.unary_stream_rpc_method_handler(checked_stream, decode, serialize)
    return handler


class _CheckedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        checked = self._handlers.get(method)
        if checked is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None
            # Bounded: only methods some registered service answers are kept.
            checked = self._handlers[method] = checked_handler(method, handler)
        return checked


class RequestCheckingServer(aio.Server):
    """The server as registration functions see it: every handler added through it refuses requests
    that do not decode; everything else goes to the wrapped server (which may be a MeasuredServer)."""

    def __init__(self, server: aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            [_CheckedGenericHandler(handler) for handler in generic_rpc_handlers]
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: checked_handler(f"/{service_name}/{name}", handler)
                for name, handler in method_handlers.items()
            },
        )

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 (grpc's signature)
        return await self._server.wait_for_termination(timeout)

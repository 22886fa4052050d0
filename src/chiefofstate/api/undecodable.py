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
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

from chiefofstate.aio.wrapping_server import WrappingServer
from chiefofstate.core.errors import InvalidArgument

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


def _refusal(method: str, reason: str) -> str:
    log.warning("request refused: method=%s status=INVALID_ARGUMENT reason=%s", method, reason)
    return f"the request is not a valid protobuf message for {method}: {reason}"


def undecodable_request(method: str, error: Exception) -> InvalidArgument:
    """The refusal of a request a handler decodes itself (one taken as bytes), logged as the wrapped
    handlers log theirs."""
    return InvalidArgument(_refusal(method, str(error)[:_MAX_REASON_CHARS] or type(error).__name__))


async def _refuse(method: str, request: Undecodable, context: Context) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(method, request.reason))


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


def request_checking_server(server: aio.Server) -> WrappingServer:
    """The server as registration functions see it: every handler added through it refuses requests
    that do not decode; everything else goes to the wrapped server (which may be a measured one)."""
    return WrappingServer(server, checked_handler)

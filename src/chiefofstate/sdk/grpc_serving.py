"""The handlers over gRPC: `WriteSideHandlerService` and `ReadSideHandlerService` servicers, with the
standard health service and server reflection registered next to them.

Rejections become statuses here, in one place: the code and message of `Rejected`, and its details
packed into a `google.rpc.Status` in the `grpc-status-details-bin` trailer. Any other exception is a bug
in the handler: INTERNAL naming the exception, with the traceback logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2

# googleapis-common-protos ships .pyi files but no py.typed marker, so mypy will not read them
from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from chiefofstate.gen.chief_of_state.v1 import (
    readside_pb2,
    readside_pb2_grpc,
    writeside_pb2,
    writeside_pb2_grpc,
)
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest, HandleReadSideResponse
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.sdk import headers_context
from chiefofstate.sdk.read import ReadHandler
from chiefofstate.sdk.rejected import Rejected
from chiefofstate.sdk.write import WriteHandler

log = logging.getLogger("chiefofstate.sdk")

WRITE_SERVICE: Final = writeside_pb2.DESCRIPTOR.services_by_name["WriteSideHandlerService"].full_name
READ_SERVICE: Final = readside_pb2.DESCRIPTOR.services_by_name["ReadSideHandlerService"].full_name

Reply = TypeVar("Reply")


async def _answer(
    context: grpc.aio.ServicerContext[Any, Any], work: Callable[[], Awaitable[Reply]], rpc: str
) -> Reply:
    token = headers_context.enter(context.invocation_metadata() or ())
    try:
        return await work()
    except Rejected as rejected:
        await _abort(context, rejected)
    except Exception as error:
        log.exception("%s failed", rpc)
        await context.abort(grpc.StatusCode.INTERNAL, f"{rpc} failed: {type(error).__name__}: {error}")
    finally:
        headers_context.leave(token)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], rejected: Rejected) -> NoReturn:
    if not rejected.details:
        await context.abort(rejected.code, rejected.message)
    packed = []
    for detail in rejected.details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    code_number, _ = rejected.code.value
    status = status_pb2.Status(code=code_number, message=rejected.message, details=packed)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # it always raises


class WriteServicer(writeside_pb2_grpc.WriteSideHandlerServiceServicer):
    def __init__(self, handler: WriteHandler[Any]) -> None:
        self._handler = handler

    async def HandleCommand(
        self,
        request: HandleCommandRequest,
        context: grpc.aio.ServicerContext[HandleCommandRequest, HandleCommandResponse],
    ) -> HandleCommandResponse:
        return await _answer(context, lambda: self._handler.handle_command_call(request), "HandleCommand")

    async def HandleEvent(
        self,
        request: HandleEventRequest,
        context: grpc.aio.ServicerContext[HandleEventRequest, HandleEventResponse],
    ) -> HandleEventResponse:
        return await _answer(context, lambda: self._handler.handle_event_call(request), "HandleEvent")


class ReadServicer(readside_pb2_grpc.ReadSideHandlerServiceServicer):
    def __init__(self, handler: ReadHandler[Any]) -> None:
        self._handler = handler

    async def HandleReadSide(
        self,
        request: HandleReadSideRequest,
        context: grpc.aio.ServicerContext[HandleReadSideRequest, HandleReadSideResponse],
    ) -> HandleReadSideResponse:
        return await _answer(context, lambda: self._handler.handle_read_side_call(request), "HandleReadSide")


async def start_grpc(
    handler: WriteHandler[Any] | ReadHandler[Any], host: str, port: int
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """A started server for `handler` on host:port (0 = any free port); OSError when it cannot bind."""
    # grpc turns SO_REUSEPORT on by default: a second server on a busy port would start and silently
    # share the calls; a bind error is what the user needs to see
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    if isinstance(handler, WriteHandler):
        writeside_pb2_grpc.add_WriteSideHandlerServiceServicer_to_server(WriteServicer(handler), server)
        service = WRITE_SERVICE
    else:
        readside_pb2_grpc.add_ReadSideHandlerServiceServicer_to_server(ReadServicer(handler), server)
        service = READ_SERVICE
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (service, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(target)
    except RuntimeError as error:  # grpc reports a failed bind this way
        raise OSError(f"cannot listen on {target}: {error}") from error
    await server.start()
    for name in ("", service):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, bound

"""The handlers over HTTP: upstream's HTTP write-handler protocol (`POST /v1/writeside/handleCommand`,
`POST /v1/writeside/handleEvent`) and HTTP read-handler protocol (`POST /v1/readside/handle`), with the
JSON encoding the node uses (every `Any` is the base64 of its serialized bytes).

A refusal is an HTTP error status with `{"error": message, "code": "<gRPC code name>", "details":
[base64 Any, ...]}` (`details` only when the rejection has some). The node turns every non-200 answer
into INTERNAL for its caller (the protocol cannot carry a status), quoting the start of this body.
`GET /health` answers 200 while serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, Final

import grpc
import uvicorn
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chiefofstate.core.json_codec import JsonShapeError, encode_any, message_from_json, message_to_json
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import HandleCommandRequest, HandleEventRequest
from chiefofstate.sdk import binding, headers_context
from chiefofstate.sdk.read import ReadHandler
from chiefofstate.sdk.rejected import Rejected
from chiefofstate.sdk.write import WriteHandler

log = logging.getLogger("chiefofstate.sdk")

COMMAND_PATH: Final = "/v1/writeside/handleCommand"
EVENT_PATH: Final = "/v1/writeside/handleEvent"
READ_SIDE_PATH: Final = "/v1/readside/handle"

_HTTP_STATUS: Final = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def refusal(rejected: Rejected) -> Response:
    body: dict[str, object] = {"error": rejected.message, "code": rejected.code.name}
    if rejected.details:
        body["details"] = [encode_any(binding.pack(detail)) for detail in rejected.details]
    return JSONResponse(body, status_code=_HTTP_STATUS.get(rejected.code, 500))


def _endpoint(
    request_class: type[Message], work: Callable[[Any], Awaitable[Message]], rpc: str
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            call = message_from_json(request_class, body)
        except (UnicodeDecodeError, json.JSONDecodeError, JsonShapeError, ValueError) as error:
            return refusal(Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"bad {rpc} body: {error}"))
        token = headers_context.enter(headers_context.from_http(request.headers.items()))
        try:
            reply = await work(call)
        except Rejected as rejected:
            return refusal(rejected)
        except Exception as error:
            log.exception("%s failed", rpc)
            return refusal(
                Rejected(grpc.StatusCode.INTERNAL, f"{rpc} failed: {type(error).__name__}: {error}")
            )
        finally:
            headers_context.leave(token)
        return JSONResponse(message_to_json(reply))

    return endpoint


async def _health(_: Request) -> Response:
    return JSONResponse({"status": "SERVING"})


def http_app(
    handler: WriteHandler[Any] | ReadHandler[Any], middleware: Sequence[Middleware] = ()
) -> Starlette:
    """The handler as an ASGI app, wrapped in `middleware` (Starlette's, outermost first)."""
    routes = [Route("/health", _health, methods=["GET"])]
    if isinstance(handler, WriteHandler):
        routes += [
            Route(
                COMMAND_PATH,
                _endpoint(HandleCommandRequest, handler.handle_command_call, "handleCommand"),
                methods=["POST"],
            ),
            Route(
                EVENT_PATH,
                _endpoint(HandleEventRequest, handler.handle_event_call, "handleEvent"),
                methods=["POST"],
            ),
        ]
    else:
        routes.append(
            Route(
                READ_SIDE_PATH,
                _endpoint(HandleReadSideRequest, handler.handle_read_side_call, "handle"),
                methods=["POST"],
            )
        )
    return Starlette(routes=routes, middleware=list(middleware))


class _SignalFreeServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # whoever runs the server handles SIGTERM and SIGINT


def _listen(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets; without it each keep-alive answer
    # waits ~40 ms for the client's delayed ACK
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(1024)
    except OSError as error:
        listener.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    return listener


class HttpHandlerServer:
    """uvicorn serving one handler app on a socket bound before it starts (a busy port is an OSError)."""

    def __init__(
        self,
        handler: WriteHandler[Any] | ReadHandler[Any],
        host: str,
        port: int,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self._listener = _listen(host, port)
        self.port = int(self._listener.getsockname()[1])
        config = uvicorn.Config(
            http_app(handler, middleware),
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
        )
        self._server = _SignalFreeServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._listener]), name="cos-sdk-http")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise OSError(f"cannot serve on port {self.port}")
            await asyncio.sleep(0.01)

    async def stop(self, grace: float) -> None:
        self._server.should_exit = True  # uvicorn finishes requests in flight, closes idle connections
        if self._task is None:
            self._listener.close()
            return
        done, _ = await asyncio.wait([self._task], timeout=grace + 1)
        if not done:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._listener.close()

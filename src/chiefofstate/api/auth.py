"""Bearer-token checks at the gRPC and HTTP edges, with COS_AUTH_TOKENS_FILE (docs/operations.md,
"Security").

Every call carries `authorization: Bearer <token>`. The read-side services (upstream's
ReadSideManagerService and the ReadSideAdminService of `cos readside list`) need an `admin` token, every
other service a `client` or `admin` one; the gRPC health service needs none, so that probes keep working.
On the cluster port a forwarded call carries its caller's headers, token included, and the member that
owns the entity checks that token again with the same rules: every member must read the same tokens.
A refusal never echoes the token it was given, and nothing here logs one. The tokens in force are the
TokenFile's, which follows the file while the node runs.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio
from grpc_health.v1 import health

from chiefofstate.aio.wrapping_server import WrappingServer
from chiefofstate.api.token_file import TokenFile
from chiefofstate.core.auth import Role, Verdict
from chiefofstate.core.errors import Code
from chiefofstate.gen.chief_of_state.v1 import manager_pb2
from chiefofstate.gen.chiefofstate.internal.v1 import readside_admin_pb2

# Upstream's manager, `cos readside list`'s, and the holds a member's whole-read-side call sends to the
# others; named from the protos, as api/readside_manager.py serves them (which itself sits on the gRPC
# server this module guards).
ADMIN_SERVICES = (
    manager_pb2.DESCRIPTOR.services_by_name["ReadSideManagerService"].full_name,
    readside_admin_pb2.DESCRIPTOR.services_by_name["ReadSideAdminService"].full_name,
    readside_admin_pb2.DESCRIPTOR.services_by_name["ProjectionHoldService"].full_name,
)
_OPEN_SERVICES = (health.SERVICE_NAME,)

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    _Handler = grpc.RpcMethodHandler[Any, Any]
_MESSAGES = {
    Verdict.UNAUTHENTICATED: "a valid bearer token is required (authorization: Bearer <token>)",
    Verdict.PERMISSION_DENIED: "this call needs a token with the admin role",
}


def needed_role(method: str) -> Role | None:
    """The role a full gRPC method path needs; None for the services open to everyone."""
    service = method.lstrip("/").split("/", 1)[0]
    if service in _OPEN_SERVICES:
        return None
    return Role.ADMIN if service in ADMIN_SERVICES else Role.CLIENT


def _authorization(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def token_checking_server(server: aio.Server, tokens: TokenFile) -> WrappingServer:
    """The server as registration functions see it: every handler added through it checks the caller's
    token first. The role a method needs is worked out once, as it is registered, not at every call."""
    return WrappingServer(server, lambda method, handler: guarded_handler(method, handler, tokens))


def guarded_handler(method: str, handler: _Handler, tokens: TokenFile) -> _Handler:
    """`handler` of the full method name `method`, answering UNAUTHENTICATED or PERMISSION_DENIED to a
    call without a good enough token before its behaviour runs."""
    role = needed_role(method)
    if role is None:
        return handler

    def verdict_of(context: aio.ServicerContext[Any, Any]) -> Verdict:
        return tokens.book.check(_authorization(context.invocation_metadata()), role)

    kind = _KINDS[(handler.request_streaming, handler.response_streaming)]
    behavior = getattr(handler, kind.attribute)
    if inspect.isasyncgenfunction(behavior):

        async def guarded_generator(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            verdict = verdict_of(context)
            if verdict is not Verdict.ALLOWED:
                await _refuse(context, verdict)
            async for reply in behavior(request, context):
                yield reply

        guarded: Callable[..., Any] = guarded_generator
    elif inspect.iscoroutinefunction(behavior):

        async def guarded_coroutine(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            verdict = verdict_of(context)
            if verdict is not Verdict.ALLOWED:
                await _refuse(context, verdict)
            return await behavior(request, context)

        guarded = guarded_coroutine
    else:
        # A plain function runs in grpc's thread pool, where it cannot be refused like this; serving it
        # unchecked would be a hole, so the node refuses to start.
        raise TypeError(f"{method}: a token check needs an async behaviour")
    return kind.build(  # type: ignore[no-any-return]
        guarded,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def refusal_message(verdict: Verdict) -> str:
    """What a caller refused with `verdict` is told (by the forwarding stream as by a call's refusal)."""
    return _MESSAGES[verdict]


async def _refuse(context: aio.ServicerContext[Any, Any], verdict: Verdict) -> None:
    """Ends the call with the verdict's status; context.abort raises, so the behaviour never runs."""
    unauthenticated = verdict is Verdict.UNAUTHENTICATED
    code = grpc.StatusCode.UNAUTHENTICATED if unauthenticated else grpc.StatusCode.PERMISSION_DENIED
    await context.abort(code, _MESSAGES[verdict])


@dataclass(frozen=True, slots=True)
class _Kind:
    attribute: str  # where grpc keeps the behaviour of a handler of this kind
    build: Callable[..., Any]  # grpc's constructor of a handler of this kind


_KINDS = {
    (False, False): _Kind("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): _Kind("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): _Kind("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): _Kind("stream_stream", grpc.stream_stream_rpc_method_handler),
}


class TokenMiddleware:
    """The HTTP API's check: 401 without a valid token (with `WWW-Authenticate: Bearer`); every route of
    the API needs the client role."""

    def __init__(self, app: ASGIApp, tokens: TokenFile) -> None:
        self._app = app
        self._tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        header = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                header = value.decode("latin-1")
                break
        verdict = self._tokens.book.check(header, Role.CLIENT)
        if verdict is Verdict.ALLOWED:
            await self._app(scope, receive, send)
            return
        unauthenticated = verdict is Verdict.UNAUTHENTICATED
        status, code = (401, Code.UNAUTHENTICATED) if unauthenticated else (403, Code.PERMISSION_DENIED)
        # Imported here: the HTTP framework's modules stay out of a gRPC-only node's start-up.
        from chiefofstate.api.http_errors import error_body

        body = json.dumps(error_body(code, _MESSAGES[verdict])).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="chiefofstate"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

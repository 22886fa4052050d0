"""Bearer-token checks at the gRPC and HTTP edges, with COS_AUTH_TOKENS_FILE (docs/operations.md,
"Security").

Every call carries `authorization: Bearer <token>`. The read-side services (upstream's
ReadSideManagerService and the ReadSideAdminService of `cos readside list`) need an `admin` token, every
other service a `client` or `admin` one; the gRPC health service needs none, so that probes keep working.
On the cluster port a forwarded call carries its caller's headers, token included, and the member that
owns the entity checks that token again with the same rules: every member must read the same tokens.
A refusal never echoes the token it was given, and nothing here logs one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio
from grpc_health.v1 import health
from starlette.types import ASGIApp, Receive, Scope, Send

from chiefofstate.api.http_errors import error_body
from chiefofstate.api.readside_manager import ADMIN_SERVICE, HOLD_SERVICE, MANAGER_SERVICE
from chiefofstate.core.auth import Role, TokenBook, Verdict
from chiefofstate.core.errors import Code

# upstream's manager, `cos readside list`'s, and the holds a member's manager call sends to the others
ADMIN_SERVICES = (MANAGER_SERVICE, ADMIN_SERVICE, HOLD_SERVICE)
_OPEN_SERVICES = (health.SERVICE_NAME,)

if TYPE_CHECKING:
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


class TokenInterceptor(aio.ServerInterceptor):
    def __init__(self, tokens: TokenBook) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        role = needed_role(handler_call_details.method)
        if handler is None or role is None:
            return handler
        verdict = self._tokens.check(_authorization(handler_call_details.invocation_metadata), role)
        if verdict is Verdict.ALLOWED:
            return handler
        return _refusing(handler, verdict)


def _refusing(handler: _Handler, verdict: Verdict) -> _Handler:
    unauthenticated = verdict is Verdict.UNAUTHENTICATED
    code = grpc.StatusCode.UNAUTHENTICATED if unauthenticated else grpc.StatusCode.PERMISSION_DENIED
    message = _MESSAGES[verdict]

    async def refuse(_request: object, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    async def refuse_stream(_request: object, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # never reached: makes this an async generator, as a streaming handler is

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **serializers)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializers)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **serializers)
    return grpc.unary_unary_rpc_method_handler(refuse, **serializers)


class TokenMiddleware:
    """The HTTP API's check: 401 without a valid token (with `WWW-Authenticate: Bearer`); every route of
    the API needs the client role."""

    def __init__(self, app: ASGIApp, tokens: TokenBook) -> None:
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
        verdict = self._tokens.check(header, Role.CLIENT)
        if verdict is Verdict.ALLOWED:
            await self._app(scope, receive, send)
            return
        unauthenticated = verdict is Verdict.UNAUTHENTICATED
        status, code = (401, Code.UNAUTHENTICATED) if unauthenticated else (403, Code.PERMISSION_DENIED)
        body = json.dumps(error_body(code, _MESSAGES[verdict])).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="chiefofstate"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

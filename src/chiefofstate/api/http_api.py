"""The HTTP/JSON API: ProcessCommand and GetState over HTTP (docs/contract.md §8, decision D5).

The same CommandPath as the gRPC service runs every command; this module only turns HTTP requests
into its arguments and its answers into §8.4 JSON. Every answer, including a refused route, method,
content type or body, is JSON, so clients never have to parse plain text.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from chiefofstate.api import http_docs
from chiefofstate.api.command_path import CommandPath
from chiefofstate.api.http_answers import Answer, answer_get_state, answer_process_command
from chiefofstate.api.http_docs import EXAMPLE_COMMAND, EXAMPLE_STATE, connection_responses
from chiefofstate.api.http_errors import failure_response, rejection_response
from chiefofstate.api.http_metrics import Receive, Scope, Send

JSON = "application/json"

PROCESS_ROUTE = "/v1/commands/{entityId}/process"
STATE_ROUTE = "/v1/entities/{entityId}/state"
_ROUTES_HINT = f"the API serves POST {PROCESS_ROUTE} and GET {STATE_ROUTE}"
# `:entity_id` lets an entity id contain "/" (percent-encoded or not), as over gRPC.
_PROCESS_TEMPLATE = "/v1/commands/{entityId:entity_id}/process"
_STATE_TEMPLATE = "/v1/entities/{entityId:entity_id}/state"
_PROCESS_PREFIX, _PROCESS_SUFFIX = "/v1/commands/", "/process"
_STATE_PREFIX, _STATE_SUFFIX = "/v1/entities/", "/state"


class StateHeader(BaseModel):
    key: str
    string_value: str | None = None
    bytes_value: str | None = Field(None, description="base64")


class StateMeta(BaseModel):
    entity_id: str | None = None
    revision_number: int | None = Field(None, description="omitted when 0")
    revision_date: str | None = Field(None, description="ISO-8601 UTC instant, e.g. 2025-01-31T10:00:00.120Z")
    data: dict[str, str] | None = Field(None, description="key → base64 of a serialized Any")
    headers: list[StateHeader] | None = None


class ProcessCommandBody(BaseModel):
    entity_id: str | None = Field(None, description="optional; the path's entity id always wins")
    command: str | None = Field(None, description="base64 of the serialized google.protobuf.Any")


class StateReply(BaseModel):
    state: str | None = Field(None, description="base64 of the serialized google.protobuf.Any")
    meta: StateMeta


class ErrorReply(BaseModel):
    error: str
    code: str = Field(description="the gRPC status code name, e.g. NOT_FOUND")


def _error(description: str, code: str, example: str) -> dict[str, Any]:
    return {
        "model": ErrorReply,
        "description": description,
        "content": {"application/json": {"example": {"error": example, "code": code}}},
    }


# Every status a route answers (decision D5 maps the gRPC codes; api/http_errors.py is that map).
_COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error(
        "INVALID_ARGUMENT: a bad entity id, JSON, base64 or Any, or a command the write handler refused "
        "as invalid",
        "INVALID_ARGUMENT",
        "entity_id must not contain control characters",
    ),
    401: _error(
        "UNAUTHENTICATED: no valid bearer token (only when the node has COS_AUTH_TOKENS_FILE)",
        "UNAUTHENTICATED",
        "a valid bearer token is required",
    ),
    403: _error(
        "PERMISSION_DENIED: the token's role may not call this",
        "PERMISSION_DENIED",
        "this token may not do that",
    ),
    **connection_responses(),
    429: _error("RESOURCE_EXHAUSTED: too many requests queued for the entity", "RESOURCE_EXHAUSTED", "busy"),
    431: {
        **_error(
            "the headers are too large (also sent as plain text by the connection layer)",
            "INVALID_ARGUMENT",
            "headers exceed 8192 bytes",
        ),
    },
    500: _error("INTERNAL, and every gRPC code without a status of its own", "INTERNAL", "internal error"),
    503: _error(
        "UNAVAILABLE: the write handler or the database cannot be reached, or the node holds its maximum of "
        "connections (then as plain text)",
        "UNAVAILABLE",
        "the store is unavailable",
    ),
    504: _error(
        "DEADLINE_EXCEEDED: no answer in time; nothing was written", "DEADLINE_EXCEEDED", "timed out"
    ),
}
_PROCESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_COMMON_RESPONSES,
    404: _error("NOT_FOUND, as the write handler answered it", "NOT_FOUND", "account acct-9 does not exist"),
    409: _error(
        "ALREADY_EXISTS or ABORTED, as the write handler answered it", "ALREADY_EXISTS", "already open"
    ),
    412: _error(
        "FAILED_PRECONDITION, as the write handler answered it", "FAILED_PRECONDITION", "insufficient funds"
    ),
    413: _error("the body is larger than the node accepts", "RESOURCE_EXHAUSTED", "the body is too large"),
    415: _error(
        "Content-Type is not application/json", "INVALID_ARGUMENT", "Content-Type must be application/json"
    ),
}
_STATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_COMMON_RESPONSES,
    404: _error("NOT_FOUND: the entity has no state", "NOT_FOUND", "NOT_FOUND"),
}
_STATE_EXAMPLE = {"state": EXAMPLE_STATE, "meta": {"entity_id": "acct-1", "revision_number": 2}}

EntityId = Annotated[str, PathParameter(alias="entityId", description="the entity id")]


class _EntityIdConvertor(Convertor[str]):
    """Like starlette's `path` (an id may contain "/"), but also matching line breaks: a percent-encoded
    control character reaches the command path, which refuses it with 400 exactly as gRPC refuses it
    (docs/contract.md §3.1), instead of the route failing to match (404)."""

    regex = "[\\s\\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("entity_id", _EntityIdConvertor())


def create_http_app(commands: CommandPath, *, max_body_bytes: int, body_timeout_s: float) -> FastAPI:
    app = FastAPI(
        title="Chief of State",
        description="ProcessCommand and GetState over HTTP/JSON. Every protobuf Any is the base64 "
        "encoding of the serialized Any message; errors are {error, code} with the gRPC code name.",
        redoc_url=None,
        docs_url=None,  # api/http_docs.py serves /docs from the installed Swagger UI package
    )
    http_docs.install(app)

    @app.exception_handler(StarletteHTTPException)
    async def route_rejected(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 404:
            message = f"no route for {request.method} {request.url.path}; {_ROUTES_HINT}"
        elif error.status_code == 405:
            allowed = (error.headers or {}).get("Allow", "")
            message = f"method {request.method} is not allowed on {request.url.path}; use {allowed}"
        else:
            message = str(error.detail)
        return rejection_response(error.status_code, message, error.headers)

    @app.exception_handler(Exception)
    async def unexpected_failure(request: Request, error: Exception) -> Response:
        # Decision D5: even a failure nobody foresaw answers JSON (starlette still logs its trace).
        return failure_response(error)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, error: RequestValidationError) -> Response:
        return rejection_response(400, f"invalid request: {error.errors()}")

    @app.post(
        _PROCESS_TEMPLATE,
        summary="ProcessCommand",
        response_model=StateReply,
        responses={
            **_PROCESS_RESPONSES,
            200: {"content": {"application/json": {"example": _STATE_EXAMPLE}}},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": ProcessCommandBody.model_json_schema(),
                        # the bank example's OpenAccount{owner: "Vi", initial_balance: 1000}
                        "example": {"command": EXAMPLE_COMMAND},
                    }
                },
            }
        },
    )
    async def process_command(entity_id: EntityId, request: Request) -> Response:
        status, body = await answer_process_command(
            commands,
            entity_id,
            request.scope["headers"],
            request.receive,
            max_body_bytes=max_body_bytes,
            body_timeout_s=body_timeout_s,
        )
        return Response(body, status_code=status, media_type=JSON)

    @app.get(
        _STATE_TEMPLATE,
        summary="GetState",
        response_model=StateReply,
        responses={**_STATE_RESPONSES, 200: {"content": {"application/json": {"example": _STATE_EXAMPLE}}}},
    )
    async def get_state(entity_id: EntityId, request: Request) -> Response:
        status, body = await answer_get_state(commands, entity_id, request.scope["headers"])
        return Response(body, status_code=status, media_type=JSON)

    return app


def _entity_id(path: str, prefix: str, suffix: str) -> str | None:
    """The id in `prefix{id}suffix`, as the `entity_id` convertor matches it (any characters, even
    none), or None when `path` is not of that form."""
    if len(path) >= len(prefix) + len(suffix) and path.startswith(prefix) and path.endswith(suffix):
        return path[len(prefix) : len(path) - len(suffix)]
    return None


class HttpApi:
    """The node's HTTP API as an ASGI application: ProcessCommand and GetState straight to their answers,
    everything else (the docs, a refused route or method) through the FastAPI app.

    A request through FastAPI passes eleven middleware and routing layers and a dependency solver
    before and after its handler: more CPU than the cached GetState it serves. Here the two routes are
    matched as FastAPI would match them, and `scope["route"]` is set to FastAPI's own route, so the
    metrics and spans around this app name the same route template (docs/operations.md).
    """

    def __init__(
        self, commands: CommandPath, framework: FastAPI, *, max_body_bytes: int, body_timeout_s: float
    ) -> None:
        self._commands = commands
        self._framework = framework
        self._max_body_bytes = max_body_bytes
        self._body_timeout_s = body_timeout_s
        routes = {getattr(route, "path", None): route for route in framework.routes}
        self._process_route = routes[_PROCESS_TEMPLATE]
        self._state_route = routes[_STATE_TEMPLATE]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            method, path = scope["method"], scope["path"]
            if method == "POST":
                entity_id = _entity_id(path, _PROCESS_PREFIX, _PROCESS_SUFFIX)
                if entity_id is not None:
                    scope["route"] = self._process_route
                    answer = answer_process_command(
                        self._commands,
                        entity_id,
                        scope["headers"],
                        receive,
                        max_body_bytes=self._max_body_bytes,
                        body_timeout_s=self._body_timeout_s,
                    )
                    await _respond(send, answer)
                    return
            elif method == "GET":
                entity_id = _entity_id(path, _STATE_PREFIX, _STATE_SUFFIX)
                if entity_id is not None:
                    scope["route"] = self._state_route
                    await _respond(send, answer_get_state(self._commands, entity_id, scope["headers"]))
                    return
        await self._framework(scope, receive, send)


async def _respond(send: Send, answering: Awaitable[Answer]) -> None:
    try:
        status, body = await answering
    except Exception as error:
        # As the FastAPI app does for a failure nobody foresaw: a JSON 500 (decision D5), then the
        # exception goes on to the server, which logs its trace.
        response = failure_response(error)
        status, body = response.status_code, bytes(response.body)
        await _send_json(send, status, body)
        raise
    await _send_json(send, status, body)


async def _send_json(send: Send, status: int, body: bytes) -> None:
    # the head starlette's JSONResponse sends
    headers = [(b"content-length", str(len(body)).encode("latin-1")), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_http_api(commands: CommandPath, *, max_body_bytes: int, body_timeout_s: float) -> HttpApi:
    framework = create_http_app(commands, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s)
    return HttpApi(commands, framework, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s)

"""The HTTP/JSON API: ProcessCommand and GetState over HTTP (docs/contract.md §8, decision D5).

The same CommandPath as the gRPC service runs every command; this module only turns HTTP requests
into its arguments and its answers into §8.4 JSON. Every answer, including a refused route, method,
content type or body, is JSON, so clients never have to parse plain text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from chiefofstate.api import http_docs
from chiefofstate.api.command_path import CommandPath
from chiefofstate.api.http_docs import EXAMPLE_COMMAND, EXAMPLE_STATE, connection_responses
from chiefofstate.api.http_errors import failure_response, rejection_response
from chiefofstate.core.errors import CosError
from chiefofstate.core.headers import HeaderValue
from chiefofstate.core.json_codec import JsonShapeError, decode_base64, message_from_json, message_to_json
from chiefofstate.core.limits import clip
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb

log = logging.getLogger("chiefofstate.api.http")

PROCESS_ROUTE = "/v1/commands/{entityId}/process"
STATE_ROUTE = "/v1/entities/{entityId}/state"
_ROUTES_HINT = f"the API serves POST {PROCESS_ROUTE} and GET {STATE_ROUTE}"


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


class _BadRequest(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


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
        # `:entity_id` lets an entity id contain "/" (percent-encoded or not), as over gRPC.
        "/v1/commands/{entityId:entity_id}/process",
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
        try:
            body = await _json_body(request, max_body_bytes, body_timeout_s)
            command_request = message_from_json(pb.ProcessCommandRequest, body)
            metadata = _metadata(request)
        except JsonShapeError as error:
            return rejection_response(400, str(error))
        except _BadRequest as error:
            return rejection_response(error.status_code, error.message)
        if command_request.entity_id and command_request.entity_id != entity_id:
            log.info(
                "entity_id %r in the body differs from %r in the path; the path wins (docs/contract.md §8.2)",
                clip(command_request.entity_id),
                clip(entity_id),
            )
        try:
            state = await commands.process_command(entity_id, command_request.command, metadata, None)
        except CosError as error:
            return failure_response(error)
        return JSONResponse(message_to_json(pb.ProcessCommandResponse.FromString(state.reply)))

    @app.get(
        "/v1/entities/{entityId:entity_id}/state",
        summary="GetState",
        response_model=StateReply,
        responses={**_STATE_RESPONSES, 200: {"content": {"application/json": {"example": _STATE_EXAMPLE}}}},
    )
    async def get_state(entity_id: EntityId, request: Request) -> Response:
        try:
            state = commands.cached_state(entity_id)
            if state is None:
                state = await commands.get_state(entity_id, None, _trace_metadata(request))
        except CosError as error:
            return failure_response(error)
        return JSONResponse(message_to_json(pb.GetStateResponse.FromString(state.reply)))

    return app


async def _json_body(request: Request, max_body_bytes: int, timeout_s: float) -> object:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise _BadRequest(415, f"Content-Type must be application/json (got {media_type or 'none'})")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise _BadRequest(413, f"the body is larger than {max_body_bytes} bytes")
    body = bytearray()
    try:
        # A client that trickles its body must not hold a request open forever.
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_body_bytes:
                    raise _BadRequest(413, f"the body is larger than {max_body_bytes} bytes")
    except TimeoutError:
        raise _BadRequest(400, f"the body did not arrive within {timeout_s:g}s") from None
    except ClientDisconnect:
        # The connection was closed (by the client, or by the server's own body deadline): nobody is
        # left to read an answer, but the request still ends as a refusal, never as a crash.
        raise _BadRequest(400, "the connection closed before the whole body arrived") from None
    try:
        return json.loads(body)
    except RecursionError:
        raise _BadRequest(400, "the body is not valid JSON: it is nested too deeply") from None
    except ValueError as error:
        # Also an integer longer than Python converts (4,300 digits): a client's mistake, never a 500.
        raise _BadRequest(400, f"the body is not valid JSON: {str(error)[:200]}") from None


def _trace_metadata(request: Request) -> list[tuple[str, HeaderValue]]:
    # GetState persists nothing: only the trace context is read from its headers
    return [(name, value) for name, value in request.headers.items() if not name.endswith("-bin")]


def _metadata(request: Request) -> list[tuple[str, HeaderValue]]:
    """HTTP headers as gRPC-style metadata (§3.3): names lower-cased, `-bin` values base64-decoded."""
    metadata: list[tuple[str, HeaderValue]] = []
    for name, value in request.headers.items():
        if name.endswith("-bin"):
            metadata.append((name, decode_base64(value, f"header {name}")))
        else:
            metadata.append((name, value))
    return metadata

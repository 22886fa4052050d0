"""What ProcessCommand and GetState over HTTP answer (docs/contract.md §8): the status and JSON body of
each, from the raw ASGI request (headers, the body's messages).

No web framework here: the node's hot routes call these straight from the ASGI front (api/http_api.py),
where a framework's routing, dependency solving and middleware stack would cost more CPU than the
command path itself; the FastAPI routes that document the API call the same functions.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from chiefofstate.api.command_path import CommandPath
from chiefofstate.api.http_errors import failure_response, rejection_response
from chiefofstate.api.http_json import state_reply_json
from chiefofstate.core.errors import CosError
from chiefofstate.core.headers import HeaderValue
from chiefofstate.core.json_codec import JsonShapeError, decode_base64, message_from_json
from chiefofstate.core.limits import clip
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb

log = logging.getLogger("chiefofstate.api.http")

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
RawHeaders = Iterable[tuple[bytes, bytes]]
Answer = tuple[int, bytes]  # status, JSON body


class _BadRequest(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def _refused(status_code: int, message: str) -> Answer:
    response = rejection_response(status_code, message)
    return response.status_code, bytes(response.body)


def _failed(error: BaseException) -> Answer:
    response = failure_response(error)
    return response.status_code, bytes(response.body)


async def answer_process_command(
    commands: CommandPath,
    entity_id: str,
    headers: RawHeaders,
    receive: Receive,
    *,
    max_body_bytes: int,
    body_timeout_s: float,
) -> Answer:
    try:
        header_list = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
        body = await _json_body(header_list, receive, max_body_bytes, body_timeout_s)
        command_request = message_from_json(pb.ProcessCommandRequest, body)
        metadata = _metadata(header_list)
    except JsonShapeError as error:
        return _refused(400, str(error))
    except _BadRequest as error:
        return _refused(error.status_code, error.message)
    if command_request.entity_id and command_request.entity_id != entity_id:
        log.info(
            "entity_id %r in the body differs from %r in the path; the path wins (docs/contract.md §8.2)",
            clip(command_request.entity_id),
            clip(entity_id),
        )
    try:
        state = await commands.process_command(entity_id, command_request.command, metadata, None)
    except CosError as error:
        return _failed(error)
    return 200, state_reply_json(state.reply)


async def answer_get_state(commands: CommandPath, entity_id: str, headers: RawHeaders) -> Answer:
    try:
        state = commands.cached_state(entity_id)
        if state is None:
            # GetState persists nothing: only the trace context is read from its headers
            trace_metadata: list[tuple[str, HeaderValue]] = [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in headers
                if not name.endswith(b"-bin")
            ]
            state = await commands.get_state(entity_id, None, trace_metadata)
    except CosError as error:
        return _failed(error)
    return 200, state_reply_json(state.reply)


def _header(headers: list[tuple[str, str]], name: str) -> str:
    return next((value for key, value in headers if key == name), "")


async def _json_body(
    headers: list[tuple[str, str]], receive: Receive, max_body_bytes: int, timeout_s: float
) -> object:
    media_type = _header(headers, "content-type").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise _BadRequest(415, f"Content-Type must be application/json (got {media_type or 'none'})")
    declared = _header(headers, "content-length")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise _BadRequest(413, f"the body is larger than {max_body_bytes} bytes")
    try:
        # A client that trickles its body must not hold a request open forever.
        async with asyncio.timeout(timeout_s):
            body = await _whole_body(receive, max_body_bytes)
    except TimeoutError:
        raise _BadRequest(400, f"the body did not arrive within {timeout_s:g}s") from None
    try:
        return json.loads(body)
    except RecursionError:
        raise _BadRequest(400, "the body is not valid JSON: it is nested too deeply") from None
    except ValueError as error:
        # Also an integer longer than Python converts (4,300 digits): a client's mistake, never a 500.
        raise _BadRequest(400, f"the body is not valid JSON: {str(error)[:200]}") from None


async def _whole_body(receive: Receive, max_body_bytes: int) -> bytes:
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body = message.get("body", b"")  # the usual case: the whole body came with the head
        if len(body) > max_body_bytes:
            raise _BadRequest(413, f"the body is larger than {max_body_bytes} bytes")
        return bytes(body)
    collected = bytearray()
    while True:
        if message["type"] != "http.request":
            # The connection was closed (by the client, or by the server's own body deadline): nobody
            # is left to read an answer, but the request still ends as a refusal, never as a crash.
            raise _BadRequest(400, "the connection closed before the whole body arrived")
        collected += message.get("body", b"")
        if len(collected) > max_body_bytes:
            raise _BadRequest(413, f"the body is larger than {max_body_bytes} bytes")
        if not message.get("more_body", False):
            return bytes(collected)
        message = await receive()


def _metadata(headers: list[tuple[str, str]]) -> list[tuple[str, HeaderValue]]:
    """HTTP headers as gRPC-style metadata (§3.3): names lower-cased, `-bin` values base64-decoded."""
    metadata: list[tuple[str, HeaderValue]] = []
    for name, value in headers:
        if name.endswith("-bin"):
            metadata.append((name, decode_base64(value, f"header {name}")))
        else:
            metadata.append((name, value))
    return metadata

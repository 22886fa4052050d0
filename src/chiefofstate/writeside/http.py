"""HTTP adapter of the write-handler port: upstream's HTTP write-side protocol (docs/contract.md §9).

`POST /v1/writeside/handleCommand` and `POST /v1/writeside/handleEvent` with §8.4 JSON bodies.
An HTTP handler cannot choose the gRPC status its refusals become: every non-200 answer is INTERNAL
with upstream's message (§3.10). Transport failures map as the gRPC adapter's do: no answer in time
is DEADLINE_EXCEEDED (decision D4: the command is abandoned, nothing is written) and a refused
connection is UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import Sequence
from typing import TypeVar

from google.protobuf.message import Message

from chiefofstate.core.errors import DeadlineExceeded, Internal, Unavailable
from chiefofstate.core.headers import HeaderValue
from chiefofstate.core.json_codec import JsonShapeError, message_from_json, message_to_json
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.writeside.http_client import ConnectFailed, ExchangeFailed, HttpConnectionPool

COMMAND_PATH = "/v1/writeside/handleCommand"
EVENT_PATH = "/v1/writeside/handleEvent"
_BODY_EXCERPT = 200  # characters of a failed reply quoted in the error, as upstream
# A refused connection is tried again after these delays (doubling), while the call has time; what is
# kept at the end lets UNAVAILABLE reach the caller before its own deadline does.
_FIRST_RETRY_DELAY_S = 0.05
_MAX_RETRY_DELAY_S = 0.5
_ANSWER_RESERVE_S = 0.1

Reply = TypeVar("Reply", bound=Message)
# compact UTF-8 JSON, byte for byte what the httpx client before this one sent
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def outgoing_headers(selected: Sequence[tuple[str, HeaderValue]]) -> list[tuple[str, str]]:
    """Propagated headers as HTTP headers: bytes values (the `-bin` keys) base64-encoded (§9)."""
    headers: list[tuple[str, str]] = []
    for key, value in selected:
        if isinstance(value, bytes):
            headers.append((key.lower(), base64.b64encode(value).decode("ascii")))
        else:
            headers.append((key.lower(), value))
    return headers


class HttpWriteHandler:
    """One bounded pool of keep-alive connections shared by both calls; each call is bounded by the
    `timeout_s` it is given, and waits for a free connection within that time when all are busy."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        use_tls: bool,
        max_connections: int = 128,
        max_reply_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        # https uses the system trust store, as upstream does (docs/contract.md §9).
        self._pool = HttpConnectionPool(
            host,
            port,
            ssl_context=ssl.create_default_context() if use_tls else None,
            max_connections=max_connections,
            max_reply_bytes=max_reply_bytes,
        )

    async def handle_command(
        self,
        request: HandleCommandRequest,
        headers: Sequence[tuple[str, HeaderValue]],
        timeout_s: float,
    ) -> HandleCommandResponse:
        return await self._post(
            COMMAND_PATH, "command", request, HandleCommandResponse, outgoing_headers(headers), timeout_s
        )

    async def handle_event(
        self,
        request: HandleEventRequest,
        timeout_s: float,
        headers: Sequence[tuple[str, HeaderValue]] = (),
    ) -> HandleEventResponse:
        return await self._post(
            EVENT_PATH, "event", request, HandleEventResponse, outgoing_headers(headers), timeout_s
        )

    async def close(self) -> None:
        await self._pool.close()

    async def _post(
        self,
        path: str,
        kind: str,
        request: Message,
        reply_class: type[Reply],
        headers: list[tuple[str, str]],
        timeout_s: float,
    ) -> Reply:
        body = _encode(message_to_json(request)).encode()
        give_up_at = time.monotonic() + timeout_s - min(_ANSWER_RESERVE_S, timeout_s / 10)
        retry_delay_s = _FIRST_RETRY_DELAY_S
        try:
            # Bounds the whole exchange, waiting for a connection included, so a handler that trickles
            # its answer cannot outlive the command's deadline either.
            async with asyncio.timeout(timeout_s):
                while True:
                    try:
                        reply = await self._pool.post(path, body, headers)
                        break
                    except ConnectFailed:
                        # Nothing was sent: a handler that is restarting is waited for, within the
                        # call's time, as the gRPC adapter waits for its channel.
                        if time.monotonic() + retry_delay_s >= give_up_at:
                            raise
                        await asyncio.sleep(retry_delay_s)
                        retry_delay_s = min(retry_delay_s * 2, _MAX_RETRY_DELAY_S)
        except TimeoutError:
            raise DeadlineExceeded(
                f"HTTP {kind} handler did not answer within {timeout_s:.3g}s; nothing was written"
            ) from None
        except ConnectFailed as error:
            raise Unavailable(f"HTTP {kind} handler unreachable: {error}") from None
        except (ExchangeFailed, ValueError) as error:
            # ValueError: a propagated header value that HTTP cannot carry (nothing was sent)
            raise Internal(f"HTTP {kind} handler request failed: {error}") from None
        if reply.status != 200:
            excerpt = reply.body.decode("utf-8", errors="replace")[:_BODY_EXCERPT]
            raise Internal(
                f"HTTP {kind} handler request failed with status {reply.status} {reply.reason}: {excerpt}"
            )
        return _parse_reply(reply.body, reply_class, kind)


def _parse_reply(content: bytes, reply_class: type[Reply], kind: str) -> Reply:
    try:
        return message_from_json(reply_class, json.loads(content))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Internal(f"HTTP {kind} handler replied with malformed JSON: {error}") from None
    except JsonShapeError as error:
        raise Internal(f"HTTP {kind} handler replied with an unexpected body: {error}") from None

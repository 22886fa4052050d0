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
import itertools
import json
import ssl
import time
from collections.abc import Sequence
from typing import TypeVar

import httpx
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

COMMAND_PATH = "/v1/writeside/handleCommand"
EVENT_PATH = "/v1/writeside/handleEvent"
_BODY_EXCERPT = 200  # characters of a failed reply quoted in the error, as upstream
# A refused connection is tried again after these delays (doubling), while the call has time; what is
# kept at the end lets UNAVAILABLE reach the caller before its own deadline does.
_FIRST_RETRY_DELAY_S = 0.05
_MAX_RETRY_DELAY_S = 0.5
_ANSWER_RESERVE_S = 0.1

Reply = TypeVar("Reply", bound=Message)


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
    """Pooled httpx clients shared by both calls; each call is bounded by the `timeout_s` it is given.

    httpcore scans every connection of a pool on each request, so one large pool costs more CPU per
    call as concurrency grows (encode/httpx#3215); several small pools used round-robin keep each
    scan short. `pool_size` clients of `connections_per_client` connections bound the calls in flight.
    """

    def __init__(
        self, host: str, port: int, *, use_tls: bool, pool_size: int = 8, connections_per_client: int = 16
    ) -> None:
        scheme = "https" if use_tls else "http"
        authority = f"[{host}]" if ":" in host else host
        # https uses the system trust store, as upstream does (docs/contract.md §9).
        verify: ssl.SSLContext | bool = ssl.create_default_context() if use_tls else False
        limits = httpx.Limits(
            max_connections=connections_per_client, max_keepalive_connections=connections_per_client
        )
        self._clients = [
            httpx.AsyncClient(
                base_url=f"{scheme}://{authority}:{port}",
                verify=verify,
                limits=limits,
                trust_env=False,  # a proxy variable must not reroute calls to the user's handler
            )
            for _ in range(pool_size)
        ]
        self._next_client = itertools.cycle(self._clients)

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
        for client in self._clients:
            await client.aclose()

    async def _post(
        self,
        path: str,
        kind: str,
        request: Message,
        reply_class: type[Reply],
        headers: list[tuple[str, str]],
        timeout_s: float,
    ) -> Reply:
        body = message_to_json(request)
        give_up_at = time.monotonic() + timeout_s - min(_ANSWER_RESERVE_S, timeout_s / 10)
        retry_delay_s = _FIRST_RETRY_DELAY_S
        try:
            # httpx's timeout bounds each phase; the outer one bounds the whole exchange, so a
            # handler that trickles its answer cannot outlive the command's deadline either.
            async with asyncio.timeout(timeout_s):
                while True:
                    try:
                        response = await next(self._next_client).post(
                            path, json=body, headers=headers, timeout=timeout_s
                        )
                        break
                    except httpx.ConnectError:
                        # Nothing was sent: a handler that is restarting is waited for, within the
                        # call's time, as the gRPC adapter waits for its channel.
                        if time.monotonic() + retry_delay_s >= give_up_at:
                            raise
                        await asyncio.sleep(retry_delay_s)
                        retry_delay_s = min(retry_delay_s * 2, _MAX_RETRY_DELAY_S)
        except (TimeoutError, httpx.TimeoutException):
            raise DeadlineExceeded(
                f"HTTP {kind} handler did not answer within {timeout_s:.3g}s; nothing was written"
            ) from None
        except httpx.ConnectError as error:
            raise Unavailable(f"HTTP {kind} handler unreachable: {error or type(error).__name__}") from None
        except httpx.HTTPError as error:
            raise Internal(f"HTTP {kind} handler request failed: {error or type(error).__name__}") from None
        except UnicodeEncodeError as error:  # a propagated header value that HTTP cannot carry
            raise Internal(f"HTTP {kind} handler request failed: {error}") from None
        if response.status_code != 200:
            raise Internal(
                f"HTTP {kind} handler request failed with status {response.status_code} "
                f"{response.reason_phrase}: {response.text[:_BODY_EXCERPT]}"
            )
        return _parse_reply(response.content, reply_class, kind)


def _parse_reply(content: bytes, reply_class: type[Reply], kind: str) -> Reply:
    try:
        return message_from_json(reply_class, json.loads(content))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Internal(f"HTTP {kind} handler replied with malformed JSON: {error}") from None
    except JsonShapeError as error:
        raise Internal(f"HTTP {kind} handler replied with an unexpected body: {error}") from None

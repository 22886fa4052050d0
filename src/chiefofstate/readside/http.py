"""HTTP adapter of the read-handler port: `POST /v1/readside/handle` with §8.4 JSON (docs/contract.md §5.3).

A reply is a success only when the status is 200 and the JSON body says `"successful": true`; a
missing or null `successful` is false. Any other status, a timeout, a refused connection or a body that
is not a JSON object is a failed call.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Sequence

import httpx
from google.protobuf.message import DecodeError

from chiefofstate.core.json_codec import message_to_json
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest
from chiefofstate.ports.read_handler import (
    ENTITY_ID_HEADER,
    EVENT_TAG_HEADER,
    DeliveryFailed,
    ReadSideCall,
    header_value,
)

HANDLE_PATH = "/v1/readside/handle"
_BODY_EXCERPT = 200  # characters of an unexpected reply quoted in the failure


def request_body(request: HandleReadSideRequest) -> bytes:
    """`read_side_id` is always present (§8.4), even though proto JSON would leave an empty one out."""
    return json.dumps(message_to_json(request, always=("read_side_id",)), separators=(",", ":")).encode()


def successful(status: int, body: bytes) -> bool:
    """The handler's answer; raises DeliveryFailed when the reply is not a 200 with a JSON object."""
    excerpt = body[:_BODY_EXCERPT].decode("utf-8", errors="replace")
    if status != 200:
        raise DeliveryFailed(f"read handler answered HTTP {status}: {excerpt}")
    try:
        answer = json.loads(body)
    except ValueError:
        raise DeliveryFailed(f"read handler answered with a body that is not JSON: {excerpt}") from None
    if not isinstance(answer, dict):
        raise DeliveryFailed(f"read handler answered with JSON that is not an object: {excerpt}")
    return answer.get("successful") is True


class HttpReadHandler:
    """One pooled client per read side; each call is bounded by the read side's timeout."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        use_tls: bool,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        scheme = "https" if use_tls else "http"
        authority = f"[{host}]" if ":" in host else host
        self._url = f"{scheme}://{authority}:{port}{HANDLE_PATH}"
        verify: ssl.SSLContext | bool = ssl.create_default_context() if use_tls else False
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.AsyncClient(
            transport=transport
            or httpx.AsyncHTTPTransport(
                verify=verify,
                limits=limits,
                # Without TCP_NODELAY the body waits for the handler's delayed ACK (~40 ms a call).
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            ),
            trust_env=False,  # a proxy variable must not reroute events to another host
        )

    async def handle(
        self, call: ReadSideCall, shard: int, timeout_s: float, trace_headers: Sequence[tuple[str, str]] = ()
    ) -> bool:
        headers = {
            **dict(trace_headers),
            "content-type": "application/json",
            ENTITY_ID_HEADER: header_value(call.entity_id),
            EVENT_TAG_HEADER: str(shard),
        }
        try:
            body = request_body(call.message())
        except DecodeError as error:
            raise DeliveryFailed(f"unreadable event row: {error}") from None
        try:
            reply = await self._client.post(self._url, content=body, headers=headers, timeout=timeout_s)
        except httpx.TimeoutException:
            raise DeliveryFailed(f"read handler did not answer within {timeout_s:g}s") from None
        except httpx.HTTPError as error:
            raise DeliveryFailed(f"cannot reach the read handler at {self._url}: {error!r}") from None
        return successful(reply.status_code, reply.content)

    async def close(self) -> None:
        await self._client.aclose()

"""gRPC adapter of the write-handler port: a pool of channels to the application's handler."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio

from chiefofstate.core.errors import Code, CosError, DeadlineExceeded, HandlerFailed, Internal, Unavailable
from chiefofstate.core.headers import HeaderValue, to_outgoing_metadata
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.gen.chief_of_state.v1.writeside_pb2_grpc import WriteSideHandlerServiceStub

STATUS_DETAILS_KEY = "grpc-status-details-bin"


# gRPC's default reconnect backoff starts at 1 s and grows to two minutes; a call waits for a handler
# that is reconnecting (see GrpcWriteHandler), so the channel must try again often enough for a
# restarted handler to be found well within a command's time.
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
# Kept from the wait for an unreachable handler, so that UNAVAILABLE reaches the caller before its
# own deadline turns it into DEADLINE_EXCEEDED.
_ANSWER_RESERVE_S = 0.1


def channel_options(
    *,
    max_message_bytes: int,
    keepalive_enabled: bool,
    keepalive_time_s: int,
    keepalive_timeout_s: int,
    keepalive_without_calls: bool,
) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Separate channels must not share one TCP connection, or a pool of N is a pool of 1.
        ("grpc.use_local_subchannel_pool", 1),
        *RECONNECT_OPTIONS,
    ]
    if keepalive_enabled:
        options += [
            ("grpc.keepalive_time_ms", keepalive_time_s * 1000),
            ("grpc.keepalive_timeout_ms", keepalive_timeout_s * 1000),
            ("grpc.keepalive_permit_without_calls", int(keepalive_without_calls)),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return options


def status_details(error: aio.AioRpcError) -> bytes | None:
    """The serialized google.rpc.Status a server sent with its status, if any."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def translate_rpc_error(error: aio.AioRpcError) -> CosError:
    """The handler's status passes through unchanged, rich details included (docs/contract.md §3.10)."""
    code = error.code()
    message = error.details() or ""
    details = status_details(error)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(message or "Deadline Exceeded", details=details)
    if code is grpc.StatusCode.UNAVAILABLE:
        return Unavailable(message or "write handler unavailable", details=details)
    return HandlerFailed(message, code=Code(code.value[0]), details=details)


class GrpcWriteHandler:
    """Round-robins calls over `pool_size` channels (COS_GRPC_CLIENT_POOL_SIZE).

    A call on a channel that is not connected waits for it, within the call's time: a handler that
    restarts is found again as soon as it listens, instead of every command failing with UNAVAILABLE
    until the channel's next reconnect attempt (the read side waits the same way). A handler still
    unreachable when the time is nearly up gives UNAVAILABLE (docs/contract.md §3.10).
    """

    def __init__(
        self,
        target: str,
        *,
        pool_size: int,
        use_tls: bool,
        options: Sequence[tuple[str, int]],
    ) -> None:
        credentials = grpc.ssl_channel_credentials() if use_tls else None
        self._channels = [
            aio.secure_channel(target, credentials, options=options)
            if credentials
            else aio.insecure_channel(target, options=options)
            for _ in range(pool_size)
        ]
        self._next_channel = itertools.cycle(
            [(channel, WriteSideHandlerServiceStub(channel)) for channel in self._channels]
        )

    async def _connected_stub(self, timeout_s: float) -> tuple[Any, float]:
        """A stub whose channel is connected, and the time left for the call itself."""
        channel, stub = next(self._next_channel)
        if channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY:
            return stub, timeout_s
        started = time.monotonic()
        wait_s = max(0.0, timeout_s - min(_ANSWER_RESERVE_S, timeout_s / 10))
        try:
            async with asyncio.timeout(wait_s):
                await channel.channel_ready()
        except TimeoutError:
            raise Unavailable(
                f"the write handler was unreachable for {wait_s:.1f}s, all the time the call had"
            ) from None
        return stub, max(0.0, timeout_s - (time.monotonic() - started))

    async def handle_command(
        self,
        request: HandleCommandRequest,
        headers: Sequence[tuple[str, HeaderValue]],
        timeout_s: float,
    ) -> HandleCommandResponse:
        stub, timeout_s = await self._connected_stub(timeout_s)
        try:
            response: HandleCommandResponse = await stub.HandleCommand(
                request, timeout=timeout_s, metadata=to_outgoing_metadata(headers)
            )
        except aio.AioRpcError as error:
            raise translate_rpc_error(error) from None
        except (ValueError, TypeError) as error:
            # e.g. a header value that is not valid ASCII metadata
            raise Internal(str(error)) from None
        return response

    async def handle_event(
        self,
        request: HandleEventRequest,
        timeout_s: float,
        headers: Sequence[tuple[str, HeaderValue]] = (),
    ) -> HandleEventResponse:
        stub, timeout_s = await self._connected_stub(timeout_s)
        try:
            response: HandleEventResponse = await stub.HandleEvent(
                request, timeout=timeout_s, metadata=to_outgoing_metadata(headers) if headers else None
            )
        except aio.AioRpcError as error:
            raise translate_rpc_error(error) from None
        return response

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

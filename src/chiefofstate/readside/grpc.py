"""gRPC adapter of the read-handler port: `ReadSideHandlerService/HandleReadSide` (docs/contract.md §5.3)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc import aio

from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideResponse
from chiefofstate.ports.read_handler import (
    ENTITY_ID_HEADER,
    EVENT_TAG_HEADER,
    DeliveryFailed,
    ReadSideCall,
    header_value,
)

HANDLE_READ_SIDE = "/chief_of_state.v1.ReadSideHandlerService/HandleReadSide"

# gRPC's default reconnect backoff grows to two minutes. Calls wait for the handler to be reachable
# (wait_for_ready, bounded by the read side's timeout), so the channel must try again often enough for a
# handler that restarts — or that an operator resumes a halted projection for — to be found within it.
_RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]


class GrpcReadHandler:
    """One channel per read side, shared by its projections (HTTP/2 multiplexes their calls)."""

    def __init__(self, target: str, *, use_tls: bool, options: Sequence[tuple[str, int]]) -> None:
        options = [*options, *_RECONNECT_OPTIONS]
        if use_tls:
            self._channel = aio.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
        else:
            self._channel = aio.insecure_channel(target, options=options)
        # Requests go out already encoded (ReadSideCall.encoded), hence no request serializer.
        self._handle_read_side: aio.UnaryUnaryMultiCallable[bytes, HandleReadSideResponse] = (
            self._channel.unary_unary(
                HANDLE_READ_SIDE, response_deserializer=HandleReadSideResponse.FromString
            )
        )

    async def handle(
        self, call: ReadSideCall, shard: int, timeout_s: float, trace_headers: Sequence[tuple[str, str]] = ()
    ) -> bool:
        metadata = (
            (ENTITY_ID_HEADER, header_value(call.entity_id)),
            (EVENT_TAG_HEADER, str(shard)),
            *trace_headers,
        )
        try:
            # A handler being restarted is waited for (up to the timeout) rather than failed at once,
            # so a rolling deploy of the read handler does not halt projections under STOP.
            response: HandleReadSideResponse = await self._handle_read_side(
                call.encoded(), timeout=timeout_s, metadata=metadata, wait_for_ready=True
            )
        except aio.AioRpcError as error:
            raise DeliveryFailed(f"{error.code().name}: {error.details() or ''}".rstrip(": ")) from None
        return bool(response.successful)

    async def close(self) -> None:
        await self._channel.close()

"""Forwarded requests carried on one long-lived stream per peer instead of one gRPC call each.

A unary call per forwarded request costs both members a call's setup, its metadata and several trips
through the event loop; on a stream, each message carries every request that was ready when it was
written, and each reply message every answer ready, so under load one gRPC operation carries many
requests. The owner answers each request exactly as a direct call would have ended (status, message,
rich details, "not here"), so the Forwarder cannot tell which way a request went (docs/cluster.md,
"Forwarding").

Bounds: at most `max_in_flight` requests wait on a stream; beyond that, and for a request too large
for one message, the request goes as a call of its own, as do requests to a member that does not
serve the stream. When a stream fails, only the requests it carried fail: those still waiting to be
written (or sent while the owner was leaving, which it answers by ending the stream once everything
it took is answered) provably never ran; the others fail as a unary call cut off mid-way does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

import grpc
from grpc import aio

from chiefofstate.cluster.peers import (
    GET_STATE,
    PROCESS_COMMAND,
    NotHere,
    PeerClients,
    Unreachable,
    translated,
)
from chiefofstate.core.errors import Code, CosError
from chiefofstate.gen.chiefofstate.internal.v1 import forwarding_pb2 as fpb

log = logging.getLogger("chiefofstate.cluster")

FORWARD = "/chiefofstate.internal.v1.ForwardingService/Forward"
METHODS = {PROCESS_COMMAND: fpb.FORWARDED_METHOD_PROCESS_COMMAND, GET_STATE: fpb.FORWARDED_METHOD_GET_STATE}
# Protobuf's framing of one request in a message, at most: tags, lengths and the varints of id,
# method and timeout; and of one header. Sizes are bounded from these without serializing twice.
_REQUEST_OVERHEAD = 48
_HEADER_OVERHEAD = 16
_DEADLINE_EXCEEDED = "Deadline Exceeded"  # gRPC's own wording, as a unary call's caller sees it


_Call = aio.StreamStreamCall[Any, Any]


class _NotTaken(Exception):
    """The request was not carried (the stream's peer has no such service, or refused it for want of
    room): nothing ran, and it goes as a call of its own."""


def _approximate_size(request: bytes, metadata: Sequence[tuple[str, str | bytes]]) -> int:
    return len(request) + _REQUEST_OVERHEAD + sum(len(k) + len(v) + _HEADER_OVERHEAD for k, v in metadata)


def _headers(metadata: Sequence[tuple[str, str | bytes]]) -> list[fpb.ForwardedHeader]:
    return [
        fpb.ForwardedHeader(key=key, binary=value)
        if isinstance(value, bytes)
        else fpb.ForwardedHeader(key=key, text=value)
        for key, value in metadata
    ]


def _answer(reply: fpb.ForwardedReply) -> bytes:
    if reply.not_taken:
        raise _NotTaken()
    if reply.code == 0:
        return reply.reply
    if reply.not_here:
        raise NotHere(reply.message)
    raise CosError(reply.message, code=Code(reply.code), details=reply.details or None)


class _Stream:
    """One stream to one member: requests written in batches by one task, replies read by another,
    each matched to its waiting caller by id."""

    def __init__(self, channel: aio.Channel, max_in_flight: int, max_message_bytes: int) -> None:
        self.channel = channel
        self.ended = False
        self.unserved = False  # the member has no ForwardingService: send it unary calls
        self._max_in_flight = max_in_flight
        self._max_message_bytes = max_message_bytes
        self._waiting: dict[int, asyncio.Future[fpb.ForwardedReply]] = {}
        # Insertion order is write order: (the message, its size bound, when its deadline passes).
        self._outbox: dict[int, tuple[fpb.ForwardedRequest, int, float]] = {}
        self._written: set[int] = set()
        self._ready = asyncio.Event()
        self._next_id = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    def has_room(self) -> bool:
        return not self.ended and len(self._waiting) < self._max_in_flight

    def fits(self, size: int) -> bool:
        return size <= self._max_message_bytes

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def call(
        self,
        method: str,
        request: bytes,
        metadata: Sequence[tuple[str, str | bytes]],
        timeout_s: float,
        size: int,
    ) -> bytes:
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[fpb.ForwardedReply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        message = fpb.ForwardedRequest(
            id=request_id, method=METHODS[method], request=request, headers=_headers(metadata)
        )
        self._outbox[request_id] = (message, size, time.monotonic() + timeout_s)
        self._ready.set()
        try:
            async with asyncio.timeout(max(timeout_s, 0.001)):
                reply = await future
        except TimeoutError:
            self._give_up(request_id)
            raise CosError(_DEADLINE_EXCEEDED, code=Code.DEADLINE_EXCEEDED) from None
        except asyncio.CancelledError:
            self._give_up(request_id)  # the caller's call was cancelled: the owner stops too
            raise
        return _answer(reply)

    def _give_up(self, request_id: int) -> None:
        self._waiting.pop(request_id, None)
        if self._outbox.pop(request_id, None) is not None or self.ended:
            return  # never written, or nowhere to send the cancel
        if request_id in self._written:
            self._written.discard(request_id)
            cancel = fpb.ForwardedRequest(id=request_id, cancel=True)
            self._outbox[-request_id] = (cancel, _REQUEST_OVERHEAD, 0.0)
            self._ready.set()

    async def _run(self) -> None:
        call = self.channel.stream_stream(
            FORWARD,
            request_serializer=fpb.ForwardedRequests.SerializeToString,
            response_deserializer=fpb.ForwardedReplies.FromString,
        )()
        writer = asyncio.get_running_loop().create_task(self._write(call))
        # The member ended the stream after answering every request it took (it is leaving): the
        # others never ran.
        failure: Exception = Unreachable(
            CosError("the member owning the shard is leaving; nothing was written", code=Code.UNAVAILABLE),
            never_sent=True,
        )
        try:
            await self._read(call)
        except aio.AioRpcError as error:
            failure = self._failure(error)
        except asyncio.CancelledError:
            failure = Unreachable(
                CosError("the stream to the member owning the shard was closed", code=Code.UNAVAILABLE),
                never_sent=False,
            )
            raise
        finally:
            self.ended = True
            self._fail_waiting(failure)
            writer.cancel()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def _failure(self, error: aio.AioRpcError) -> Exception:
        if error.code() is grpc.StatusCode.UNIMPLEMENTED:
            # A member without the service (an older version): nothing ran; it gets unary calls.
            self.unserved = True
            return _NotTaken()
        failure = translated(error)
        if isinstance(failure, NotHere):  # only ever an answer to one request, never to a stream
            return Unreachable(CosError(str(failure), code=Code.UNAVAILABLE), never_sent=False)
        return failure

    def _fail_waiting(self, failure: Exception) -> None:
        for request_id, future in self._waiting.items():
            if future.done():
                continue
            if request_id not in self._written and isinstance(failure, Unreachable):
                # Still in the outbox when the stream ended: provably never sent.
                future.set_exception(Unreachable(failure.error, never_sent=True))
            else:
                future.set_exception(_copy(failure))
        self._waiting.clear()
        self._outbox.clear()
        self._written.clear()

    async def _write(self, call: _Call) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._outbox:
                    batch: list[fpb.ForwardedRequest] = []
                    room = self._max_message_bytes
                    now = time.monotonic()
                    for key, (message, size, expires_at) in list(self._outbox.items()):
                        if batch and size > room:
                            break
                        batch.append(message)
                        room -= size
                        del self._outbox[key]
                        if key > 0:
                            # What is left of the caller's deadline as the request leaves.
                            message.timeout_micros = max(int((expires_at - now) * 1_000_000), 1)
                            self._written.add(key)
                    await call.write(fpb.ForwardedRequests(requests=batch))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the call ended; the reader reports how
            log.debug("forwarding stream write failed: %s", error)
            call.cancel()

    async def _read(self, call: _Call) -> None:
        while True:
            message = await call.read()
            if message is aio.EOF:
                return
            for reply in cast(fpb.ForwardedReplies, message).replies:
                self._written.discard(reply.id)
                future = self._waiting.pop(reply.id, None)
                if future is not None and not future.done():
                    future.set_result(reply)


def _copy(failure: Exception) -> Exception:
    """The stream's failure as each of its requests raises it: one exception object per waiter."""
    if isinstance(failure, Unreachable):
        return Unreachable(failure.error, never_sent=failure.never_sent)
    if isinstance(failure, CosError):
        return CosError(failure.message, code=failure.code, details=failure.details)
    return type(failure)()


class ForwardStreams:
    """The forwarding member's streams, one per peer address, each opened at the first request for
    that peer and again after it ended. `call` has the contract of PeerClients.call."""

    def __init__(self, peers: PeerClients, max_in_flight: int, max_message_bytes: int) -> None:
        self._peers = peers
        self._max_in_flight = max_in_flight
        self._max_message_bytes = max_message_bytes
        self._streams: dict[str, _Stream] = {}
        self._ended: list[_Stream] = []  # awaited at close(), or as they accumulate
        self._unserved: set[aio.Channel] = set()

    def in_flight(self, address: str) -> int:
        stream = self._streams.get(address)
        return stream.in_flight if stream is not None else 0

    def _stream(self, address: str) -> _Stream | None:
        channel = self._peers.channel(address)
        stream = self._streams.get(address)
        if stream is not None and (stream.ended or stream.channel is not channel):
            # Its waiting requests finish on it (a replaced channel is closed later, as PeerClients
            # closes retired ones); it is closed once none wait.
            del self._streams[address]
            if stream.unserved:
                self._unserved.add(stream.channel)
            self._ended.append(stream)
            stream = None
        if stream is None:
            if channel in self._unserved:
                return None
            stream = self._streams[address] = _Stream(channel, self._max_in_flight, self._max_message_bytes)
        return stream

    async def call(
        self,
        address: str,
        method: str,
        request: bytes,
        metadata: Sequence[tuple[str, str | bytes]],
        timeout_s: float,
    ) -> bytes:
        await self._reap()
        stream = self._stream(address) if method in METHODS else None
        size = _approximate_size(request, metadata)
        if stream is None or not stream.has_room() or not stream.fits(size):
            return await self._peers.call(address, method, request, metadata, timeout_s)
        try:
            return await stream.call(method, request, metadata, timeout_s, size)
        except _NotTaken:
            return await self._peers.call(address, method, request, metadata, timeout_s)
        except Unreachable:
            if stream.ended:
                self._peers.forget(address, stream.channel)  # reconnect at once, as a unary call would
            raise

    async def _reap(self) -> None:
        for stream in list(self._ended):
            if stream.task.done():
                self._ended.remove(stream)
                with contextlib.suppress(asyncio.CancelledError):
                    await stream.task
            elif not stream.in_flight:
                stream.task.cancel()
        if len(self._unserved) > len(self._streams) + 64:  # channels long replaced, kept bounded
            self._unserved.clear()

    async def close(self) -> None:
        streams = [*self._streams.values(), *self._ended]
        self._streams.clear()
        self._ended.clear()
        for stream in streams:
            stream.task.cancel()
        for stream in streams:
            with contextlib.suppress(asyncio.CancelledError):
                await stream.task

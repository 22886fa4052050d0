"""The owner's side of the forwarding streams (cluster/forward_stream.py), on the cluster port.

Each request on a stream is served as the same request sent as a call of its own would be: the
caller's token checked with the same rules, the same server span in the caller's trace, the same
refusal of undecodable bytes, what is left of the caller's deadline, and the same command path; its
answer is the status, message and rich details that call would have ended with. Requests run
concurrently, each in a task of its own, so one slow entity never holds up another's answer. The
stream itself needs no token: it carries nothing of its own, and every request on it is checked.

A stream serves at most `max_in_flight` requests at once and answers "not taken" to any beyond that
(the sender then sends it as a call of its own). When the member leaves, its streams stop reading,
answer everything they took, and end: whatever the sender wrote after that provably never ran.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import trace

from chiefofstate.api.auth import refusal_message
from chiefofstate.api.command_path import CommandPath, decode_request
from chiefofstate.api.token_file import TokenFile
from chiefofstate.cluster.peers import GET_STATE, PROCESS_COMMAND
from chiefofstate.core.auth import Role, Verdict
from chiefofstate.core.errors import Code, CosError, ShardNotHere, as_cos_error, status_message
from chiefofstate.core.headers import Metadata
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chiefofstate.internal.v1 import forwarding_pb2 as fpb
from chiefofstate.telemetry.grpc_spans import end_server_span, start_server_span
from chiefofstate.telemetry.tracing import Tracing

Context = aio.ServicerContext[Any, Any]
FORWARDING_SERVICE_NAME = fpb.DESCRIPTOR.services_by_name["ForwardingService"].full_name
_METHODS = {fpb.FORWARDED_METHOD_PROCESS_COMMAND: PROCESS_COMMAND, fpb.FORWARDED_METHOD_GET_STATE: GET_STATE}
_REPLY_OVERHEAD = 32  # protobuf's framing of one reply in a message, at most
_DEADLINE_EXCEEDED = "Deadline Exceeded"  # gRPC's wording when a call's deadline passes


class ForwardingService:
    def __init__(
        self,
        commands: CommandPath,
        *,
        max_in_flight: int,
        max_message_bytes: int,
        tracing: Tracing,
        tokens: TokenFile | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.commands = commands
        self.max_in_flight = max_in_flight
        self.max_message_bytes = max_message_bytes
        self.tracing = tracing
        self.tokens = tokens
        self.clock = clock
        self._streams: set[_ServedStream] = set()
        self._leaving = False

    async def Forward(self, _requests: object, context: Context) -> None:
        if self._leaving:
            return  # the sender sends on elsewhere: nothing was read, so nothing ran
        stream = _ServedStream(self, context)
        self._streams.add(stream)
        try:
            await stream.serve()
        finally:
            self._streams.discard(stream)

    async def leave(self, timeout_s: float) -> None:
        """Stop taking requests, answer the ones taken (within `timeout_s`), and end every stream."""
        self._leaving = True
        streams = list(self._streams)
        for stream in streams:
            stream.stop_reading()
        waits = [asyncio.ensure_future(stream.ended.wait()) for stream in streams]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout_s)
            for wait in pending:
                wait.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def add_forwarding_service(service: ForwardingService, server: aio.Server) -> None:
    handler = grpc.stream_stream_rpc_method_handler(
        service.Forward,
        request_deserializer=fpb.ForwardedRequests.FromString,
        response_serializer=fpb.ForwardedReplies.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(FORWARDING_SERVICE_NAME, {"Forward": handler}),)
    )


def _metadata(request: fpb.ForwardedRequest) -> Metadata:
    # As gRPC hands a call's metadata over: bytes for the binary ("-bin") headers, text for the others.
    return tuple(
        (header.key, header.binary if header.key.endswith("-bin") else header.text)
        for header in request.headers
    )


def _authorization(metadata: Metadata) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def _failure(request_id: int, error: CosError) -> fpb.ForwardedReply:
    return fpb.ForwardedReply(
        id=request_id,
        code=error.code.value,
        message=status_message(error),
        details=error.details or b"",
        not_here=isinstance(error, ShardNotHere),
    )


class _ServedStream:
    """One sender's stream: a reader taking requests, a task per request, a writer sending replies in
    batches."""

    def __init__(self, service: ForwardingService, context: Context) -> None:
        self._service = service
        self._context = context
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._outbox: list[tuple[fpb.ForwardedReply, int]] = []
        self._ready = asyncio.Event()
        self._written = asyncio.Event()
        self._finishing = False
        self._reader: asyncio.Task[None] | None = None
        self.ended = asyncio.Event()

    def stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.cancel()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._reader = reader = loop.create_task(self._read())
        writer = loop.create_task(self._write())
        try:
            # Not `await reader`: the handler's own cancellation (the sender went away) must not be
            # mistaken for the reader stopped by `leave`.
            await asyncio.wait([reader])
            if not reader.cancelled() and reader.exception() is not None:
                # Never ended as OK: to the sender that would mean none of its unanswered requests ran.
                await self._context.abort(grpc.StatusCode.UNAVAILABLE, "the forwarding stream failed")
            while self._tasks:
                await asyncio.wait(list(self._tasks.values()))
            self._finishing = True
            self._ready.set()
            await writer
        finally:
            reader.cancel()
            writer.cancel()
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(reader, writer, *self._tasks.values(), return_exceptions=True)
            self.ended.set()

    async def _read(self) -> None:
        service = self._service
        while True:
            while len(self._outbox) > service.max_in_flight:
                # The sender is not reading its answers: take nothing more until it does.
                self._written.clear()
                await self._written.wait()
            message = await self._context.read()
            if message is aio.EOF:
                return
            received = service.clock()
            for request in message.requests:
                task = self._tasks.get(request.id)
                if request.cancel:
                    if task is not None:
                        task.cancel()  # the caller gave up, as a cancelled call's handler is cancelled
                    continue
                if task is not None or len(self._tasks) >= service.max_in_flight:
                    self._send(fpb.ForwardedReply(id=request.id, not_taken=True), _REPLY_OVERHEAD)
                    continue
                self._tasks[request.id] = asyncio.get_running_loop().create_task(
                    self._serve(request, received)
                )

    def _send(self, reply: fpb.ForwardedReply, size: int) -> None:
        self._outbox.append((reply, size))
        self._ready.set()

    async def _write(self) -> None:
        limit = self._service.max_message_bytes
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._outbox:
                batch: list[fpb.ForwardedReply] = []
                room = limit
                taken = 0
                for reply, size in self._outbox:
                    if batch and size > room:
                        break
                    batch.append(reply)
                    room -= size
                    taken += 1
                del self._outbox[:taken]
                await self._context.write(fpb.ForwardedReplies(replies=batch))
                self._written.set()
            if self._finishing:
                return

    async def _serve(self, request: fpb.ForwardedRequest, received: float) -> None:
        service = self._service
        method = _METHODS.get(request.method, "")
        metadata = _metadata(request)
        span = (
            start_server_span(service.tracing, method, metadata)
            if service.tracing.enabled and method
            else None
        )
        token = otel_context.attach(trace.set_span_in_context(span)) if span is not None else None
        code = grpc.StatusCode.CANCELLED
        try:
            try:
                body = await self._answer(method, request, metadata, received)
                reply = fpb.ForwardedReply(id=request.id, reply=body)
                size = len(body) + _REPLY_OVERHEAD
                if size > service.max_message_bytes:
                    raise CosError(
                        f"the reply ({len(body)} bytes) is larger than the largest message allowed "
                        f"({service.max_message_bytes} bytes)",
                        code=Code.RESOURCE_EXHAUSTED,
                    )
            except TimeoutError:
                reply = fpb.ForwardedReply(
                    id=request.id, code=Code.DEADLINE_EXCEEDED.value, message=_DEADLINE_EXCEEDED
                )
                size = _REPLY_OVERHEAD + len(_DEADLINE_EXCEEDED)
            except Exception as failure:
                error = as_cos_error(failure)
                reply = _failure(request.id, error)
                size = _REPLY_OVERHEAD + len(reply.message) + len(reply.details)
            code = grpc.StatusCode[Code(reply.code).name]
            self._send(reply, size)
        finally:
            if token is not None:
                otel_context.detach(token)
            if span is not None:
                end_server_span(span, code)
            self._tasks.pop(request.id, None)

    async def _answer(
        self, method: str, request: fpb.ForwardedRequest, metadata: Metadata, received: float
    ) -> bytes:
        service = self._service
        if service.tokens is not None:
            verdict = service.tokens.book.check(_authorization(metadata), Role.CLIENT)
            if verdict is not Verdict.ALLOWED:
                unauthenticated = verdict is Verdict.UNAUTHENTICATED
                code = Code.UNAUTHENTICATED if unauthenticated else Code.PERMISSION_DENIED
                raise CosError(refusal_message(verdict), code=code)
        left = request.timeout_micros / 1_000_000 - (service.clock() - received)
        if left <= 0:
            raise TimeoutError
        commands = service.commands
        # The caller's deadline ends the request here as it ends a call: whatever it is waiting for.
        async with asyncio.timeout(left):
            if method == PROCESS_COMMAND:
                command = decode_request(pb.ProcessCommandRequest, method, request.request)
                state = await commands.process_command(command.entity_id, command.command, metadata, left)
                return state.reply
            if method == GET_STATE:
                entity_id = decode_request(pb.GetStateRequest, method, request.request).entity_id
                cached = commands.cached_state(entity_id)
                if cached is not None:
                    return cached.reply
                return (await commands.get_state(entity_id, left, metadata)).reply
        raise CosError(f"no forwarded method {request.method}", code=Code.UNIMPLEMENTED)

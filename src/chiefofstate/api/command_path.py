"""The command path shared by the gRPC and HTTP APIs: validation, time budget, logging, the
request's span and metrics (docs/contract.md §3, §12).

Both protocols hand their requests to the same EntityHost through this class, so a command behaves
the same whichever door it came in by; only the encoding of the answer differs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TypeVar, cast

from google.protobuf.any_pb2 import Any as AnyProto
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from chiefofstate.api.undecodable import undecodable_request
from chiefofstate.cluster.forwarding import Forwarder, revision_of, state_of
from chiefofstate.core.command_rules import validate_entity_id
from chiefofstate.core.errors import Code, CosError, LeaseLost, ShardNotHere, as_cos_error
from chiefofstate.core.headers import Metadata
from chiefofstate.core.limits import clip, validate_type_url
from chiefofstate.entities.deadline import Deadline
from chiefofstate.entities.entity import EntityState
from chiefofstate.entities.host import EntityHost
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.tracing import (
    NO_SPAN,
    SPAN_GET_STATE,
    SPAN_PROCESS_COMMAND,
    TRACING_OFF,
    Tracing,
)

log = logging.getLogger("chiefofstate.api")


class CommandPath:
    def __init__(
        self,
        host: EntityHost,
        command_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        tracing: Tracing = TRACING_OFF,
        metrics: NodeMetrics | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        """`forwarder` sends on what this member does not serve; without one (a node alone, or the
        internal port that forwarded requests arrive on) such a request fails with `ShardNotHere`."""
        self._host = host
        self._forwarder = forwarder
        self._command_timeout_s = command_timeout_s
        self._clock = clock
        self._tracing = tracing
        self._metrics = metrics

    @property
    def tracing(self) -> Tracing:
        return self._tracing

    def _deadline(self, caller_left_s: float | None) -> Deadline:
        # Decision D4: the caller's deadline and COS_COMMAND_HANDLER_TIMEOUT bound the whole command.
        budget = min(self._command_timeout_s, caller_left_s if caller_left_s is not None else math.inf)
        return Deadline(self._clock() + budget, self._clock)

    def _request(
        self, rpc: str, span_name: str, entity_id: str, command_type: str, metadata: Metadata
    ) -> _RequestScope:
        span: AbstractContextManager[Span | None] = NO_SPAN
        if self._tracing.enabled:
            attributes = {"cos.entity_id": clip(entity_id)}
            if command_type:
                attributes["cos.command_type"] = clip(command_type)
            # Under the call's standard server span (gRPC or HTTP) when there is one, as upstream's are;
            # otherwise straight in the caller's trace.
            current = trace.get_current_span().get_span_context().is_valid
            span = self._tracing.span(
                span_name,
                kind=SpanKind.INTERNAL,
                parent=None if current else self._tracing.extract(metadata),
                attributes=attributes,
            )
        return _RequestScope(span, self._metrics, rpc, entity_id, command_type)

    @property
    def forwards(self) -> bool:
        """Whether requests for shards this member does not serve are sent on to their owner: the
        gRPC service then takes requests as bytes (`process_command_bytes`, `get_state_bytes`)."""
        return self._forwarder is not None

    async def process_command(
        self, entity_id: str, command: AnyProto, metadata: Metadata, caller_left_s: float | None
    ) -> EntityState:
        """The entity's new state; any failure is raised as a CosError and logged once."""
        with self._request(
            _PROCESS_COMMAND, SPAN_PROCESS_COMMAND, entity_id, command.type_url, metadata
        ) as span:
            validate_entity_id(entity_id)
            validate_type_url(command.type_url)
            deadline = self._deadline(caller_left_s)
            state = await self._command_here(entity_id, command, metadata, deadline)
            if state is None:
                forwarder = cast(Forwarder, self._forwarder)
                request = pb.ProcessCommandRequest(entity_id=entity_id, command=command).SerializeToString()
                state = state_of(await forwarder.process_command(entity_id, request, metadata, deadline))
            if span is not None:
                span.set_attribute("cos.revision", state.revision)
            return state

    async def process_command_bytes(
        self, data: bytes, metadata: Metadata, caller_left_s: float | None
    ) -> bytes:
        """The reply to a serialized ProcessCommandRequest. A request for a shard another member serves
        is sent there as it came, once its entity id has passed the same checks (docs/cluster.md,
        "Forwarding")."""
        request = decode_request(pb.ProcessCommandRequest, _PROCESS_COMMAND_METHOD, data)
        entity_id = request.entity_id
        command = request.command
        with self._request(
            _PROCESS_COMMAND, SPAN_PROCESS_COMMAND, entity_id, command.type_url, metadata
        ) as span:
            validate_entity_id(entity_id)
            validate_type_url(command.type_url)
            deadline = self._deadline(caller_left_s)
            state = await self._command_here(entity_id, command, metadata, deadline)
            if state is not None:
                reply = state.reply
                revision = state.revision
            else:
                forwarder = cast(Forwarder, self._forwarder)
                reply = await forwarder.process_command(entity_id, data, metadata, deadline)
                revision = revision_of(reply) if span is not None else 0
            if span is not None:
                span.set_attribute("cos.revision", revision)
            return reply

    async def _command_here(
        self, entity_id: str, command: AnyProto, metadata: Metadata, deadline: Deadline
    ) -> EntityState | None:
        """The command run on this member; None when another member serves its shard and this one
        forwards (a member that does not serve the shard enters no entity for it)."""
        if self._forwarder is not None and not self._host.admits(entity_id):
            return None
        try:
            return await self._host.process_command(entity_id, command, metadata, deadline)
        except (ShardNotHere, LeaseLost):
            # Not ours (any more: the lease moved while the command queued), and nothing was written.
            if self._forwarder is None:
                raise
            return None

    def cached_state(self, entity_id: str) -> EntityState | None:
        """The answer to a GetState of a cached entity nobody is using, counted as a whole request;
        None when the read must go through `get_state` (not cached, busy, an invalid id, or tracing on,
        which needs the request's span). Synchronous: such a read waits for nothing, and needs neither
        the caller's deadline nor its metadata."""
        if self._tracing.enabled:
            return None
        started = time.perf_counter()
        state = self._host.resting_state(entity_id)  # an invalid id is never cached: None
        if state is not None and self._metrics is not None:
            self._metrics.observe_request(_GET_STATE, _OK, "", time.perf_counter() - started)
        return state

    async def get_state(
        self, entity_id: str, caller_left_s: float | None, metadata: Metadata = ()
    ) -> EntityState:
        with self._request(_GET_STATE, SPAN_GET_STATE, entity_id, "", metadata) as span:
            validate_entity_id(entity_id)
            deadline = self._deadline(caller_left_s)
            state = await self._state_here(entity_id, deadline)
            if state is None:
                forwarder = cast(Forwarder, self._forwarder)
                request = pb.GetStateRequest(entity_id=entity_id).SerializeToString()
                state = state_of(await forwarder.get_state(entity_id, request, metadata, deadline))
            if span is not None:
                span.set_attribute("cos.revision", state.revision)
            return state

    def get_state_entity_id(self, data: bytes) -> str:
        """The entity id of a serialized GetStateRequest (INVALID_ARGUMENT when the bytes are not one),
        for the cached read the service tries before `get_state_bytes`."""
        return decode_request(pb.GetStateRequest, _GET_STATE_METHOD, data).entity_id

    async def get_state_bytes(
        self, entity_id: str, data: bytes, caller_left_s: float | None, metadata: Metadata
    ) -> bytes:
        """The reply to the serialized GetStateRequest `data` of `entity_id`; sent as it came to the
        member serving the shard when that is another one, as in `process_command_bytes`."""
        with self._request(_GET_STATE, SPAN_GET_STATE, entity_id, "", metadata) as span:
            validate_entity_id(entity_id)
            deadline = self._deadline(caller_left_s)
            state = await self._state_here(entity_id, deadline)
            if state is not None:
                reply = state.reply
                revision = state.revision
            else:
                forwarder = cast(Forwarder, self._forwarder)
                reply = await forwarder.get_state(entity_id, data, metadata, deadline)
                revision = revision_of(reply) if span is not None else 0
            if span is not None:
                span.set_attribute("cos.revision", revision)
            return reply

    async def _state_here(self, entity_id: str, deadline: Deadline) -> EntityState | None:
        """The state read on this member; None when another member serves the shard and this one
        forwards."""
        if self._forwarder is not None and not self._host.admits(entity_id):
            return None
        try:
            return await self._host.get_state(entity_id, deadline)
        except ShardNotHere:
            if self._forwarder is None:
                raise
            return None


_Decoded = TypeVar("_Decoded", pb.ProcessCommandRequest, pb.GetStateRequest)


def decode_request(message: type[_Decoded], method: str, data: bytes) -> _Decoded:
    """The request's message, or INVALID_ARGUMENT for bytes that are not one (docs/contract.md §3.10)."""
    try:
        return message.FromString(data)
    except Exception as error:  # protobuf's DecodeError, or a RuntimeError from upb
        raise undecodable_request(method, error) from None


_PROCESS_COMMAND_METHOD = f"/{pb.DESCRIPTOR.services_by_name['ChiefOfStateService'].full_name}/ProcessCommand"
_GET_STATE_METHOD = f"/{pb.DESCRIPTOR.services_by_name['ChiefOfStateService'].full_name}/GetState"
_PROCESS_COMMAND = "ProcessCommand"
_MAX_LOGGED_MESSAGE_CHARS = 1024
_GET_STATE = "GetState"


def _report(rpc: str, entity_id: str, command_type: str, error: CosError, unexpected: bool) -> None:
    """One log line per failed request; a GetState of an unknown entity is an answer, not a failure.
    Every field a client chose is cut to a bounded length (core/limits.py)."""
    entity_id, command_type = clip(entity_id), clip(command_type)
    message = clip(error.message, _MAX_LOGGED_MESSAGE_CHARS)
    if isinstance(error, ShardNotHere):
        # A member's internal port saying "not here" to a forwarding member, which re-routes: routing.
        log.debug("not served here: entity_id=%s rpc=%s shard=%d", entity_id, rpc, error.shard)
        return
    if rpc == _GET_STATE:
        if error.code is Code.NOT_FOUND:
            return
        log.warning(
            "get state failed: entity_id=%s status=%s message=%s",
            entity_id,
            error.code.name,
            message,
            extra={"entity_id": entity_id, "status": error.code.name},
            exc_info=unexpected,
        )
        return
    log.warning(
        "command failed: entity_id=%s command_type=%s status=%s message=%s",
        entity_id,
        command_type,
        error.code.name,
        message,
        extra={"entity_id": entity_id, "status": error.code.name},
        exc_info=unexpected,
    )


class _RequestScope:
    """One request's server span (joined to the caller's trace) and metrics; any failure leaves as a
    CosError, reported (logged) while the span is still current so the log line carries its ids.

    A class rather than a generator-based context manager: it is entered on every request, and this
    costs a third of what contextlib's machinery does.
    """

    __slots__ = ("_command_type", "_entity_id", "_metrics", "_rpc", "_span", "_started")

    def __init__(
        self,
        span: AbstractContextManager[Span | None],
        metrics: NodeMetrics | None,
        rpc: str,
        entity_id: str,
        command_type: str,
    ) -> None:
        self._span = span
        self._metrics = metrics
        self._rpc = rpc
        self._entity_id = entity_id
        self._command_type = command_type
        self._started = 0.0

    def __enter__(self) -> Span | None:
        self._started = time.perf_counter()
        return self._span.__enter__()

    def __exit__(
        self, kind: type[BaseException] | None, failure: BaseException | None, traceback: TracebackType | None
    ) -> None:
        code = _OK
        try:
            if isinstance(failure, Exception):
                error = as_cos_error(failure)
                code = error.code.name
                _report(self._rpc, self._entity_id, self._command_type, error, error is not failure)
                if error is not failure:
                    self._span.__exit__(type(error), error, None)
                    raise error from failure
            self._span.__exit__(kind, failure, traceback)
        finally:
            if self._metrics is not None:
                seconds = time.perf_counter() - self._started
                self._metrics.observe_request(self._rpc, code, self._command_type, seconds)


_OK = Code.OK.name

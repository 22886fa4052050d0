"""One delivery attempt of one event to a read side's handler, behind the read side's breaker.

What counts as a failed delivery (docs/contract.md §5.5): `successful=false`, an error status, a timeout, an
HTTP status other than 200, an unreadable body, or the breaker being open. Only the call failures count
against the breaker: `successful=false` is a business "no", not an outage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from chiefofstate.config.read_sides import ReadSideSettings
from chiefofstate.core.breaker import CircuitBreaker
from chiefofstate.core.errors import CosError
from chiefofstate.gen.chief_of_state.v1 import readside_pb2
from chiefofstate.ports.journal import JournalRow
from chiefofstate.ports.read_handler import DeliveryFailed, ReadHandler, ReadSideCall
from chiefofstate.telemetry.command_traces import CommandTraces
from chiefofstate.telemetry.tracing import TRACING_OFF, Tracing

REFUSED = "read handler answered successful=false"
# The client spans upstream names after its read-side handler classes (docs/contract.md §12).
SPAN_GRPC_READ_SIDE = "ReadSideHandler.HandleEvent"
READ_SIDE_SERVICE = readside_pb2.DESCRIPTOR.services_by_name["ReadSideHandlerService"].full_name
SPAN_HTTP_READ_SIDE = "HttpReadSideHandler.HandleEvent"


@dataclass(frozen=True, slots=True)
class Event:
    """A journal row as a read side sees it."""

    ordering: int
    entity_id: str
    revision: int
    call: ReadSideCall

    def describe(self) -> str:
        return f"event ordering {self.ordering} (entity {self.entity_id!r}, revision {self.revision})"


def event_of(row: JournalRow, read_side_id: str) -> Event:
    """The call for one row: the event, its resulting state and meta as stored (§5.3)."""
    return Event(
        row.ordering,
        row.entity_id,
        row.sequence_number,
        ReadSideCall(row.entity_id, row.payload, read_side_id),
    )


class GuardedReadHandler:
    """A read side's handler and its breaker (one per read side, shared by all its shards, §5.5)."""

    def __init__(
        self,
        read_side: ReadSideSettings,
        handler: ReadHandler,
        breaker: CircuitBreaker | None,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing = TRACING_OFF,
        command_traces: CommandTraces | None = None,
    ) -> None:
        self._handler = handler
        self._command_traces = command_traces
        self._breaker = breaker
        self._clock = clock
        self._tracing = tracing
        self._span_name = SPAN_HTTP_READ_SIDE if read_side.protocol == "http" else SPAN_GRPC_READ_SIDE
        # the standard client span of the call itself, inside upstream's span (docs/operations.md)
        target: dict[str, AttributeValue] = {"server.address": read_side.host, "server.port": read_side.port}
        if read_side.protocol == "http":
            self._client_span_name = "POST"
            self._client_attributes: dict[str, AttributeValue] = {"http.request.method": "POST", **target}
        else:
            self._client_span_name = f"{READ_SIDE_SERVICE}/HandleReadSide"
            self._client_attributes = {
                "rpc.system": "grpc",
                "rpc.service": READ_SIDE_SERVICE,
                "rpc.method": "HandleReadSide",
                **target,
            }
        self._read_side_id = read_side.read_side_id
        # The breaker's call timeout also bounds each call (§5.5).
        self._timeout_s = (
            min(read_side.timeout_s, breaker.settings.call_timeout_s) if breaker else read_side.timeout_s
        )

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self._breaker

    async def deliver(self, event: Event, shard: int) -> str | None:
        """None when the handler took the event; otherwise why the delivery failed."""
        breaker = self._breaker
        if breaker is not None:
            try:
                breaker.before_call(self._clock())
            except CosError as error:
                return str(error)
        started = self._clock()
        try:
            accepted = await self._traced(event, shard)
        except DeliveryFailed as error:
            if breaker is not None:
                now = self._clock()
                breaker.record(succeeded=False, duration_s=now - started, now=now)
            return str(error)
        except BaseException:
            if breaker is not None:
                breaker.abandon()
            raise
        if breaker is not None:
            now = self._clock()
            breaker.record(succeeded=True, duration_s=now - started, now=now)
        return None if accepted else REFUSED

    async def _traced(self, event: Event, shard: int) -> bool:
        if not self._tracing.enabled:
            return await self._handler.handle(event.call, shard, self._timeout_s)
        attributes: dict[str, AttributeValue] = {
            "cos.read_side_id": self._read_side_id,
            "cos.entity_id": event.entity_id,
            "cos.revision": event.revision,
            "cos.event_tag": str(shard),
        }
        # A delivery soon after its command joins that command's trace, under the span that appended it.
        traces = self._command_traces
        parent = traces.parent_of(event.entity_id, event.revision) if traces is not None else None
        with (
            self._tracing.span(
                self._span_name, kind=SpanKind.INTERNAL, parent=parent, attributes=attributes
            ) as span,
            self._tracing.span(
                self._client_span_name, kind=SpanKind.CLIENT, attributes=self._client_attributes
            ),
        ):
            accepted = await self._handler.handle(event.call, shard, self._timeout_s, self._tracing.inject())
            if span is not None:
                span.set_attribute("cos.read_side.successful", accepted)
            return accepted

    async def close(self) -> None:
        await self._handler.close()

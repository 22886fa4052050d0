"""One delivery attempt of one event to a read side's handler, behind the read side's breaker.

What counts as a failed delivery (SPEC.md §5.5): `successful=false`, an error status, a timeout, an
HTTP status other than 200, an unreadable body, or the breaker being open. Only the call failures count
against the breaker: `successful=false` is a business "no", not an outage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from chiefofstate.config.read_sides import ReadSideSettings
from chiefofstate.core.breaker import CircuitBreaker
from chiefofstate.core.errors import CosError
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest
from chiefofstate.journal.port import JournalRow
from chiefofstate.readside.handler import DeliveryFailed, ReadHandler

REFUSED = "read handler answered successful=false"


@dataclass(frozen=True, slots=True)
class Event:
    """A journal row as a read side sees it."""

    ordering: int
    entity_id: str
    revision: int
    request: HandleReadSideRequest | None  # None when the stored payload cannot be decoded
    problem: str = ""

    def describe(self) -> str:
        return f"event ordering {self.ordering} (entity {self.entity_id!r}, revision {self.revision})"


def event_of(row: JournalRow, read_side_id: str) -> Event:
    """The request for one row: the event, its resulting state and meta as stored (§5.3)."""
    try:
        wrapper = EventWrapper.FromString(row.payload)
    except DecodeError as error:
        return Event(row.ordering, row.entity_id, row.sequence_number, None, f"unreadable event row: {error}")
    request = HandleReadSideRequest(
        event=wrapper.event, state=wrapper.resulting_state, meta=wrapper.meta, read_side_id=read_side_id
    )
    return Event(row.ordering, row.entity_id, row.sequence_number, request)


class GuardedReadHandler:
    """A read side's handler and its breaker (one per read side, shared by all its shards, §5.5)."""

    def __init__(
        self,
        read_side: ReadSideSettings,
        handler: ReadHandler,
        breaker: CircuitBreaker | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handler = handler
        self._breaker = breaker
        self._clock = clock
        # The breaker's call timeout also bounds each call (§5.5).
        self._timeout_s = (
            min(read_side.timeout_s, breaker.settings.call_timeout_s) if breaker else read_side.timeout_s
        )

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self._breaker

    async def deliver(self, event: Event, shard: int) -> str | None:
        """None when the handler took the event; otherwise why the delivery failed."""
        if event.request is None:
            return event.problem
        breaker = self._breaker
        if breaker is not None:
            try:
                breaker.before_call(self._clock())
            except CosError as error:
                return str(error)
        started = self._clock()
        try:
            accepted = await self._handler.handle(event.request, event.entity_id, shard, self._timeout_s)
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

    async def close(self) -> None:
        await self._handler.close()

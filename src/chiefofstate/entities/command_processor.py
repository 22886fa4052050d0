"""The path of one command through the write handler to the journal (docs/contract.md §3.5–3.9, D1, D4)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.any_pb2 import Any as AnyProto

from chiefofstate.core.command_rules import (
    ProtoValidation,
    candidate_events,
    next_event_meta,
    resulting_state_or_fail,
)
from chiefofstate.core.errors import Internal, LeaseLost, StoreUnavailable
from chiefofstate.core.headers import (
    Metadata,
    check_carried_headers,
    select_headers,
    to_persisted_headers,
)
from chiefofstate.entities.deadline import Deadline
from chiefofstate.entities.entity import Entity, EntityState
from chiefofstate.entities.recovery import recover
from chiefofstate.entities.snapshotter import Snapshotter
from chiefofstate.entities.writer_ids import new_writer_id
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper, StateWrapper
from chiefofstate.gen.chief_of_state.v1.service_pb2 import GetStateResponse
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import HandleCommandRequest, HandleEventRequest
from chiefofstate.journal.deciding import DecidingCommands
from chiefofstate.ports.journal import AppendRequest, StateReader
from chiefofstate.ports.write_handler import WriteHandler
from chiefofstate.telemetry.tracing import (
    SPAN_HANDLE_EVENT,
    SPAN_PERSIST,
    SPAN_RECOVERY,
    SPAN_REMOTE_CALLS,
    TRACING_OFF,
    Tracing,
)

log = logging.getLogger("chiefofstate.entities")

MAX_REVISION = 2**32 - 1  # MetaData.revision_number is a uint32


class Appender(Protocol):
    def submit(self, request: AppendRequest) -> asyncio.Future[Exception | None]:
        """Queue the request; the future's result is None once committed, else the failure."""
        ...


class CommitListener(Protocol):
    """Told about every committed command, in commit order per entity, right after the commit.

    Called on the event loop before the reply is sent, so it must not block or await: live
    subscriptions and read-side wake-ups hand the events to their own bounded queues.
    """

    def on_committed(self, entity_id: str, shard: int, events: Sequence[EventWrapper]) -> None: ...


@dataclass(frozen=True, slots=True)
class CommandSettings:
    propagated_headers: tuple[str, ...]
    persisted_headers: tuple[str, ...]
    validation: ProtoValidation
    call_timeout_s: float
    # COS_LEGACY_PERSISTED_HEADERS: persisted headers also in meta.data, as Namely-era releases had them
    legacy_headers_data: bool = False


class CommandProcessor:
    """Runs inside the entity's lock; the host guarantees one command per entity at a time."""

    def __init__(
        self,
        handler: WriteHandler,
        states: StateReader,
        appender: Appender,
        snapshotter: Snapshotter,
        settings: CommandSettings,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        listeners: Sequence[CommitListener] = (),
        tracing: Tracing = TRACING_OFF,
        deciding: DecidingCommands | None = None,
    ) -> None:
        self._tracing = tracing
        # Commands between the start of HandleCommand and their append, and how long they take: the
        # journal's batchers size their waits by it (journal/deciding.py).
        self.deciding = deciding if deciding is not None else DecidingCommands()
        self.recoveries = 0
        # Appends the journal refused because the shard's lease had moved to another member.
        self.fence_rejections = 0
        self._handler = handler
        self._states = states
        self._appender = appender
        self._snapshotter = snapshotter
        self._settings = settings
        self._wall_clock_ns = wall_clock_ns
        self._listeners = tuple(listeners)

    async def ensure_recovered(self, entity: Entity, tenure: int | None = None) -> EntityState:
        """The entity's state, read from the journal unless cached under the shard's current tenure."""
        state = entity.state
        if state is None or entity.tenure != tenure:
            with self._tracing.span(SPAN_RECOVERY, attributes={"cos.entity_id": entity.entity_id}):
                state = await recover(self._states, entity.entity_id)
            entity.state = state
            entity.tenure = tenure
            entity.writer_id = ""  # a new incarnation: its first append draws a new writer id
            self.recoveries += 1
        return state

    async def process(
        self,
        entity: Entity,
        command: AnyProto,
        metadata: Metadata,
        deadline: Deadline,
        tenure: int | None = None,
    ) -> EntityState:
        current = entity.state
        if current is None or entity.tenure != tenure:
            current = await self.ensure_recovered(entity, tenure)
        prior = current.decode()
        deciding = self.deciding
        deciding.started()
        started = time.perf_counter()
        try:
            with self._tracing.span(SPAN_REMOTE_CALLS):
                wrappers = await self._decide(prior, command, metadata, deadline)
        finally:
            deciding.finished(time.perf_counter() - started)
        if not wrappers:
            return current  # a no-op persists nothing and consumes no revision (§3.7)
        deadline.check("before the append")
        if not entity.writer_id:
            entity.writer_id = new_writer_id()  # upstream writes one writer id per incarnation
        request = AppendRequest(
            entity_id=entity.entity_id,
            shard=entity.shard,
            expected_sequence=current.revision,
            events=[wrapper.SerializeToString() for wrapper in wrappers],
            write_timestamp_ms=self._wall_clock_ns() // 1_000_000,
            writer=entity.writer_id,
            # The shard lease's token in cluster mode: the journal refuses the append if it moved on.
            lease_token=tenure,
        )
        with self._tracing.span(SPAN_PERSIST, attributes={"cos.event_count": len(wrappers)}):
            outcome = self._appender.submit(request)
            # Decision D4: once queued, the append's outcome is waited for even if the caller goes away,
            # so the entity never starts its next command while this one's append is in flight.
            caller_cancelled = False
            while not outcome.done():
                try:
                    await asyncio.shield(outcome)
                except asyncio.CancelledError:
                    caller_cancelled = True
            state = self._apply(entity, request, wrappers, outcome)
        if caller_cancelled:
            raise asyncio.CancelledError
        return state

    async def _decide(
        self, prior: GetStateResponse, command: AnyProto, metadata: Metadata, deadline: Deadline
    ) -> list[EventWrapper]:
        """HandleCommand, then HandleEvent for each event in turn: the events to append, [] for a no-op."""
        settings = self._settings
        propagated = select_headers(settings.propagated_headers, metadata)
        persisted = select_headers(settings.persisted_headers, metadata)
        check_carried_headers(propagated)
        check_carried_headers(persisted)
        left = deadline.check("before HandleCommand")
        response = await self._handler.handle_command(
            HandleCommandRequest(command=command, prior_state=prior.state, prior_event_meta=prior.meta),
            propagated,
            min(left, settings.call_timeout_s),
        )
        events = candidate_events(response)
        for event in events:
            settings.validation.check_event(event)
        if prior.meta.revision_number + len(events) > MAX_REVISION:
            raise Internal(
                f"entity {prior.meta.entity_id} would exceed the highest revision number {MAX_REVISION}"
            )

        persisted_headers = to_persisted_headers(persisted)
        wrappers: list[EventWrapper] = []
        state, meta = prior.state, prior.meta
        for event in events:
            # Decision D1: each event is folded into the state the previous one produced.
            meta = next_event_meta(
                meta,
                self._wall_clock_ns(),
                persisted_headers,
                legacy_headers_data=settings.legacy_headers_data,
            )
            left = deadline.check("before HandleEvent")
            with self._tracing.span(SPAN_HANDLE_EVENT, attributes={"cos.revision": meta.revision_number}):
                event_response = await self._handler.handle_event(
                    HandleEventRequest(event=event, prior_state=state, event_meta=meta),
                    min(left, settings.call_timeout_s),
                )
            state = resulting_state_or_fail(
                event_response.resulting_state if event_response.HasField("resulting_state") else None
            )
            settings.validation.check_state(state)
            wrappers.append(EventWrapper(event=event, resulting_state=state, meta=meta))
        return wrappers

    def _apply(
        self,
        entity: Entity,
        request: AppendRequest,
        wrappers: list[EventWrapper],
        outcome: asyncio.Future[Exception | None],
    ) -> EntityState:
        failure = (
            StoreUnavailable("the journal writer stopped; the outcome of the append is unknown")
            if outcome.cancelled()
            else outcome.result()
        )
        if failure is not None:
            # The outcome may be unknown (a connection lost during commit): forget the cached state
            # so the next command reads the truth from the journal.
            entity.state = None
            if isinstance(failure, LeaseLost):
                self.fence_rejections += 1
            raise failure
        last = wrappers[-1]
        state = EntityState.of(last.resulting_state, last.meta)
        entity.state = state
        for listener in self._listeners:
            try:
                listener.on_committed(entity.entity_id, entity.shard, wrappers)
            except Exception:
                # The events are committed: the reply must say so whatever a listener does.
                log.exception("commit listener %r failed for %s", listener, entity.entity_id)
        self._offer_snapshot(request, wrappers)
        return state

    def _offer_snapshot(self, request: AppendRequest, wrappers: list[EventWrapper]) -> None:
        first = request.expected_sequence + 1
        due = self._snapshotter.policy.snapshot_due(first, request.expected_sequence + len(wrappers))
        if due is not None:
            wrapper = wrappers[due - first]
            self._snapshotter.offer(
                StateWrapper(state=wrapper.resulting_state, meta=wrapper.meta), request.write_timestamp_ms
            )

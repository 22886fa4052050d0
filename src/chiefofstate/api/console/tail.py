"""The live tail: events as they are committed, through the node's subscription hub, kept in a bounded
buffer that the tail page polls (docs/console.md, "Live tail").

One node-wide subscription serves every open tail page; it is opened when a page first asks and
released once no page has asked for `idle_s`, so a node nobody watches carries no subscriber. A tail
that falls behind the hub's buffer is ended by the hub like any subscriber; it opens a new one and says
so in the buffer.

A page asks for the events committed since a moment (a few seconds before the newest it has) and drops
the ones it already shows, by entity and revision: with `cos serve --workers`, each poll may reach
another worker, whose buffer holds the same events in its own arrival order."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.api.console.decoding import Decoder, Shown
from chiefofstate.core.errors import CosError
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.inspect.decoding import revision_date
from chiefofstate.subscription.hub import Subscription, SubscriptionHub

log = logging.getLogger("chiefofstate.console")

TAIL_CAPACITY = 500
IDLE_S = 60.0
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class TailEvent:
    key: str  # the same on every worker: entity and revision (a note: its own)
    committed_ms: int  # the event's revision date (a note: when it was written)
    entity_id: str
    revision: int
    revision_date: str | None
    event: Shown | None  # None for a note of the tail itself (`note`)
    note: str = ""


def select(
    events: list[TailEvent], since_ms: int, entity_id: str, type_contains: str, limit: int
) -> list[TailEvent]:
    """The buffered events committed at or after `since_ms` that match the page's filters, the newest
    `limit` of them."""
    chosen = [
        event
        for event in events
        if event.committed_ms >= since_ms
        and (not entity_id or event.entity_id == entity_id or event.event is None)
        and (not type_contains or (event.event is not None and type_contains in event.event.type_name))
    ]
    return chosen[-limit:]


class LiveTail:
    def __init__(
        self,
        hub: SubscriptionHub,
        decoder: Decoder,
        *,
        capacity: int = TAIL_CAPACITY,
        idle_s: float = IDLE_S,
        clock: Callable[[], float],
        wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._hub = hub
        self._decoder = decoder
        self._events: deque[TailEvent] = deque(maxlen=capacity)
        self._notes = itertools.count(1)
        self._wall_clock_ms = wall_clock_ms
        self._idle_s = idle_s
        self._clock = clock
        self._last_poll = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def following(self) -> bool:
        return self._task is not None and not self._task.done()

    async def poll(self, since_ms: int, entity_id: str, type_contains: str, limit: int) -> list[TailEvent]:
        self._last_poll = self._clock()
        if not self.following:
            subscription = self._hub.open(f"cos-console-tail-{next(_ids)}", None)
            await self._hub.ready()
            self._task = asyncio.create_task(self._follow(subscription), name="console-live-tail")
        return select(list(self._events), since_ms, entity_id, type_contains, limit)

    def buffered(self) -> list[TailEvent]:
        return list(self._events)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _follow(self, subscription: Subscription) -> None:
        try:
            while True:
                try:
                    bodies = await asyncio.wait_for(subscription.take(), timeout=self._idle_s / 4)
                except TimeoutError:
                    bodies = []
                except CosError as error:  # the hub ended it: it fell behind
                    self._note(f"the tail fell behind and restarted ({error})")
                    self._hub.release(subscription)
                    subscription = self._hub.open(f"cos-console-tail-{next(_ids)}", None)
                    continue
                if not bodies and subscription.finished:
                    return
                for _ in bodies:
                    subscription.wrote()  # taken into this buffer: the hub's bound counts the rest
                await self._keep(bodies)
                if self._clock() - self._last_poll > self._idle_s:
                    return
        finally:
            self._hub.release(subscription)

    async def _keep(self, bodies: list[bytes]) -> None:
        if not bodies:
            return
        messages = [pb.SubscribeAllResponse.FromString(body) for body in bodies]
        shown = await self._decoder.show_all([message.event for message in messages])
        for message, event in zip(messages, shown, strict=True):
            meta = message.meta
            committed_ms = (
                meta.revision_date.ToMilliseconds()
                if meta.HasField("revision_date")
                else self._wall_clock_ms()
            )
            self._events.append(
                TailEvent(
                    f"{meta.entity_id}#{meta.revision_number}",
                    committed_ms,
                    meta.entity_id,
                    meta.revision_number,
                    revision_date(meta),
                    event,
                )
            )

    def _note(self, text: str) -> None:
        now_ms = self._wall_clock_ms()
        self._events.append(TailEvent(f"note-{now_ms}-{next(self._notes)}", now_ms, "", 0, None, None, text))

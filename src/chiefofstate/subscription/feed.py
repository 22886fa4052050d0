"""Every member's subscriptions fed from the journal itself, so that a subscriber on any member sees the
events committed on every member (cluster mode, docs/cluster.md "Subscriptions").

The feed keeps, per shard, the `ordering` of the last event it handed on, and reads the shard's newer
events when woken (the journal's NOTIFY of each append, or a reconnected listener that may have missed
some). Appends lock their shard's row before drawing `ordering` values, so within a shard `ordering`
follows commit order: reading "ordering > offset" never skips an event that commits late, and every event
is handed on once, in commit order per entity, whichever member wrote it and however often the shard
changed hands. This member's own commits take the same road, which is what keeps that order across a
handover; they arrive a database round trip after the commit instead of at once.

Idle without subscribers: the feed reads nothing while the member has none (`pause`, by the hub when
its last subscriber goes). The first subscriber `activate`s it before its Subscribe answers: the feed
then starts again from each shard's newest event, so every event committed after that answer is
handed on, and none committed while nobody listened is read.

Bounded: at most `batch_size` events are read and held per step, and the set of shards waiting to be
read has at most one entry per shard. Subscribers that cannot keep up are the hub's business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Protocol

from google.protobuf.message import DecodeError

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.core.errors import CosError
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.ports.journal import JournalRow, ShardProgress

log = logging.getLogger("chiefofstate.subscription")

DEFAULT_BATCH_SIZE = 500
RETRY_DELAY_S = 1.0


class ShardReader(Protocol):
    """The two journal reads the feed needs (ports/journal.py)."""

    async def read_shard(self, shard: int, after_ordering: int, limit: int) -> list[JournalRow]: ...

    async def shard_progress(self, shard: int, after_ordering: int, count_limit: int) -> ShardProgress: ...


class EventSink(Protocol):
    def on_committed(self, entity_id: str, shard: int, events: Sequence[EventWrapper]) -> None: ...


class JournalFeed:
    def __init__(
        self,
        journal: ShardReader,
        num_shards: int,
        sink: EventSink,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry_delay_s: float = RETRY_DELAY_S,
    ) -> None:
        self._journal = journal
        self._num_shards = num_shards
        self._sink = sink
        self._batch_size = batch_size
        self._retry_delay_s = retry_delay_s
        self._offsets: dict[int, int] = {}
        # Insertion-ordered and one entry per shard: a busy shard that needs several reads goes to the
        # back, so it cannot hold up the others.
        self._pending: dict[int, None] = {}
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Reads only while active; every activation or pause starts a new generation, so a read in
        # flight across one is dropped instead of handing on what came before the new start.
        self._active = False
        self._generation = 0
        self._activating = asyncio.Lock()
        self.delivered = 0
        self._reads = 0  # journal reads made (shard heads and events)

    async def start(self) -> None:
        """Paused until the first subscriber `activate`s it."""
        self._task = asyncio.create_task(self._run(), name="subscription feed")

    @property
    def active(self) -> bool:
        return self._active

    @property
    def reads(self) -> int:
        return self._reads

    async def activate(self) -> None:
        """Hand on every event committed from now on: reads each shard's newest event, unless active
        already. Returns once started, so a subscriber may be told it is subscribed."""
        async with self._activating:
            if self._active:
                return
            offsets = {}
            for shard in range(self._num_shards):
                self._reads += 1
                offsets[shard] = (await self._journal.shard_progress(shard, 0, 0)).head
            self._offsets = offsets
            self._generation += 1
            self._active = True
            self.wake_all()  # anything committed while the heads were read
            log.info("subscription feed started: a subscriber is here")

    def pause(self) -> None:
        """No subscriber is left: read nothing until the next `activate`."""
        if not self._active:
            return
        self._active = False
        self._generation += 1
        self._pending.clear()
        log.info("subscription feed paused: no subscriber left")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def wake_shards(self, shards: Iterable[int]) -> None:
        if not self._active:
            return  # nobody to hand events to; `activate` starts from the heads then
        for shard in shards:
            if 0 <= shard < self._num_shards:
                self._pending[shard] = None
        self._woken.set()

    def wake_all(self) -> None:
        self.wake_shards(range(self._num_shards))

    async def _run(self) -> None:
        while True:
            await self._woken.wait()
            self._woken.clear()
            while self._pending and self._active:
                shard = next(iter(self._pending))
                del self._pending[shard]
                generation = self._generation
                try:
                    self._reads += 1
                    rows = await self._journal.read_shard(shard, self._offsets[shard], self._batch_size)
                except CosError as error:
                    log.warning(
                        "subscription feed could not read shard %d (%s); retrying in %gs",
                        shard,
                        error,
                        self._retry_delay_s,
                    )
                    self._pending[shard] = None
                    await asyncio.sleep(self._retry_delay_s)
                    continue
                if not rows or generation != self._generation:
                    continue  # nothing new, or paused / started again while reading
                self._offsets[shard] = rows[-1].ordering
                self._hand_on(shard, rows)
                if len(rows) == self._batch_size:
                    self._pending[shard] = None  # there may be more; read after the other shards

    def _hand_on(self, shard: int, rows: Sequence[JournalRow]) -> None:
        """Consecutive rows of one entity go together, as one command's events would."""
        entity_id = ""
        events: list[EventWrapper] = []
        for row in rows:
            try:
                wrapper = EventWrapper.FromString(row.payload)
            except DecodeError:
                log.error("event %s/%d cannot be decoded; not streamed", row.entity_id, row.sequence_number)
                continue
            if row.entity_id != entity_id and events:
                self._sink.on_committed(entity_id, shard, events)
                events = []
            entity_id = row.entity_id
            events.append(wrapper)
        if events:
            self._sink.on_committed(entity_id, shard, events)
        self.delivered += len(rows)

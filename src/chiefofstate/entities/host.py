"""Maps entity ids to entities: the bounded LRU cache, idle passivation, and the per-entity queue."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.any_pb2 import Any as AnyProto

from chiefofstate.core.errors import NotFound, ResourceExhausted
from chiefofstate.core.headers import Metadata
from chiefofstate.core.sharding import shard_of
from chiefofstate.entities.command_processor import CommandProcessor
from chiefofstate.entities.deadline import Deadline
from chiefofstate.entities.entity import Entity, EntityState
from chiefofstate.tasks import cancel_and_wait
from chiefofstate.telemetry.tracing import (
    SPAN_ENTITY_COMMAND,
    SPAN_ENTITY_GET_STATE,
    SPAN_MAILBOX,
    TRACING_OFF,
    Tracing,
)

log = logging.getLogger("chiefofstate.entities")

SWEEP_CHUNK = 2_000  # idle entities passivated per turn of the event loop (about 1 ms of work)


@dataclass(frozen=True, slots=True)
class HostSettings:
    num_shards: int
    cache_capacity: int
    idle_timeout_s: float
    mailbox_capacity: int


class EntityHost:
    """Entities are created on first use and evicted when idle: least recently used first once the
    cache is over capacity, and any entity unused for `idle_timeout_s`. Eviction only forgets the
    cached state; the next message recovers it from the journal."""

    def __init__(
        self,
        processor: CommandProcessor,
        settings: HostSettings,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing = TRACING_OFF,
    ) -> None:
        self._tracing = tracing
        self._processor = processor
        self._settings = settings
        self._clock = clock
        self._entities: OrderedDict[str, Entity] = OrderedDict()
        self._sweeper: asyncio.Task[None] | None = None
        self.passivations = 0

    def __len__(self) -> int:
        return len(self._entities)

    def start(self) -> None:
        if self._settings.idle_timeout_s > 0:
            self._sweeper = asyncio.create_task(self._sweep_idle(), name="entity-passivation")

    async def close(self) -> None:
        await cancel_and_wait(self._sweeper)
        self._sweeper = None

    async def process_command(
        self, entity_id: str, command: AnyProto, metadata: Metadata, deadline: Deadline
    ) -> EntityState:
        entity, lock = self._enter(entity_id)
        try:
            with self._tracing.span(SPAN_MAILBOX):
                await lock.acquire()
            try:
                with self._tracing.span(SPAN_ENTITY_COMMAND):
                    return await self._processor.process(entity, command, metadata, deadline)
            finally:
                lock.release()
        finally:
            self._leave(entity)

    async def get_state(self, entity_id: str, deadline: Deadline) -> EntityState:
        """Queued behind the entity's earlier commands (§3.2); revision 0 is NOT_FOUND (§3.13)."""
        cached = self._entities.get(entity_id)
        if cached is not None and cached.idle and not self._tracing.enabled:
            state = cached.state
            if state is not None and state.revision > 0:
                # Nothing queued ahead and nothing to recover: the answer is the cached state, with no
                # lock to take (the path below gives the same answer, and its spans when tracing is on).
                self._entities.move_to_end(entity_id)
                cached.last_used = self._clock()
                return state
        entity, lock = self._enter(entity_id)
        try:
            with self._tracing.span(SPAN_MAILBOX):
                await lock.acquire()
            try:
                with self._tracing.span(SPAN_ENTITY_GET_STATE):
                    deadline.check("while waiting for the entity")
                    state = await self._processor.ensure_recovered(entity)
            finally:
                lock.release()
        finally:
            self._leave(entity)
        if state.revision == 0:
            raise NotFound("")
        return state

    def _enter(self, entity_id: str) -> tuple[Entity, asyncio.Lock]:
        # No await between the lookup and `users += 1`: eviction can never pick an entity a caller holds.
        entity = self._entities.get(entity_id)
        if entity is None:
            entity = Entity(entity_id, shard_of(entity_id, self._settings.num_shards))
            self._entities[entity_id] = entity
        limit = self._settings.mailbox_capacity
        if entity.users >= limit:
            raise ResourceExhausted(f"entity {entity_id} has {entity.users} requests queued (limit {limit})")
        entity.users += 1
        lock = entity.lock
        if lock is None:
            lock = entity.lock = asyncio.Lock()
        return entity, lock

    def _leave(self, entity: Entity) -> None:
        entity.users -= 1
        entity.last_used = self._clock()
        # Moved to the end when a caller leaves rather than when it comes: idle entities then stand in
        # the order of `last_used`, which both eviction and the idle sweep read from the front.
        self._entities.move_to_end(entity.entity_id)
        if entity.idle:
            entity.lock = None  # nobody holds or waits for it; the next caller makes a new one
            if entity.state is None or entity.state.revision == 0:
                # Nothing worth caching: never recovered (the store was down), or an entity without
                # events (GetState of an unknown id, a no-op). Keeping these would let lookups of random
                # ids fill the cache and evict real entities.
                self._forget(entity)
        self._evict_over_capacity()

    def _forget(self, entity: Entity) -> None:
        if self._entities.get(entity.entity_id) is entity:
            del self._entities[entity.entity_id]

    def _evict_over_capacity(self) -> None:
        excess = len(self._entities) - self._settings.cache_capacity
        if excess <= 0:
            return
        # Least recently used first; busy entities stay (the cache may exceed its capacity by at
        # most the number of entities with requests in flight).
        # islice stops at the first `excess` idle entities: listing every idle entity on each request
        # made a full cache cost milliseconds per call.
        victims = list(
            itertools.islice((entity for entity in self._entities.values() if entity.idle), excess)
        )
        for entity in victims:
            self._forget(entity)
        self.passivations += len(victims)

    def passivate_idle(self, limit: int = SWEEP_CHUNK) -> int:
        """Forget up to `limit` entities idle for longer than the timeout; returns how many.

        Idle entities stand in the order they were last used, so the scan stops at the first one used
        after the threshold: a sweep costs what it passivates (plus the few entities busy at the
        front), not the size of the cache."""
        threshold = self._clock() - self._settings.idle_timeout_s
        victims: list[Entity] = []
        for entity in self._entities.values():
            if not entity.idle:
                continue
            if entity.last_used > threshold or len(victims) >= limit:
                break
            victims.append(entity)
        for entity in victims:
            self._forget(entity)
        self.passivations += len(victims)
        return len(victims)

    async def _sweep_idle(self) -> None:
        interval = min(max(self._settings.idle_timeout_s / 2, 0.05), 60.0)
        while True:
            await asyncio.sleep(interval)
            passivated = 0
            while True:
                # In chunks, with a turn of the event loop between them: a burst of entities expiring
                # together must not hold up the requests in flight.
                chunk = self.passivate_idle()
                passivated += chunk
                if chunk < SWEEP_CHUNK:
                    break
                await asyncio.sleep(0)
            if passivated:
                log.debug("passivated %d idle entities", passivated)

"""Maps entity ids to entities: the bounded LRU cache, idle passivation, and the per-entity queue."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

from google.protobuf.any_pb2 import Any as AnyProto

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.core.errors import NotFound, ResourceExhausted, ShardNotHere
from chiefofstate.core.headers import Metadata
from chiefofstate.core.sharding import shard_of
from chiefofstate.entities.command_processor import CommandProcessor
from chiefofstate.entities.deadline import Deadline
from chiefofstate.entities.entity import (
    RESTING_LAST_USED,
    RESTING_SHARD,
    RESTING_TENURE,
    Entity,
    EntityState,
    Resting,
    state_at_rest,
    used_again,
)
from chiefofstate.entities.gate import OPEN_GATE, ShardGate
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
    cached state; the next message recovers it from the journal.

    An entity with callers is an `Entity` object in `_busy`; when its last caller leaves, what is worth
    keeping moves to `_resting` as a tuple of atomic values, in order of last use. Eviction and the
    idle sweep read `_resting` from the front, and the garbage collector does not walk it.
    """

    def __init__(
        self,
        processor: CommandProcessor,
        settings: HostSettings,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing = TRACING_OFF,
        gate: ShardGate = OPEN_GATE,
    ) -> None:
        self._tracing = tracing
        self._gate = gate
        self._processor = processor
        self._settings = settings
        self._clock = clock
        self._busy: dict[str, Entity] = {}
        self._resting: OrderedDict[str, Resting] = OrderedDict()
        self._sweeper: asyncio.Task[None] | None = None
        # Handovers waiting for a shard's last caller to leave (wait_until_idle): shards → their wake-up.
        self._idle_watchers: list[tuple[frozenset[int], asyncio.Event]] = []
        self.passivations = 0

    def __len__(self) -> int:
        return len(self._busy) + len(self._resting)

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._busy or entity_id in self._resting

    def is_busy(self, entity_id: str) -> bool:
        """Whether the entity has callers (holding or waiting for its lock) right now."""
        return entity_id in self._busy

    def start(self) -> None:
        if self._settings.idle_timeout_s > 0:
            self._sweeper = asyncio.create_task(self._sweep_idle(), name="entity-passivation")

    async def close(self) -> None:
        await cancel_and_wait(self._sweeper)
        self._sweeper = None

    async def process_command(
        self, entity_id: str, command: AnyProto, metadata: Metadata, deadline: Deadline
    ) -> EntityState:
        entity = self._enter(entity_id)
        try:
            with self._tracing.span(SPAN_MAILBOX):
                await entity.lock.acquire()
            try:
                # Asked once the command's turn has come: a lease lost while it queued stops it here.
                tenure = self._gate.admit(entity.shard)
                with self._tracing.span(SPAN_ENTITY_COMMAND):
                    return await self._processor.process(entity, command, metadata, deadline, tenure)
            finally:
                entity.lock.release()
        finally:
            self._leave(entity)

    def admits(self, entity_id: str) -> bool:
        """Whether this node serves the entity's shard now. A cluster member asks before it enters an
        entity, so that one it does not serve is forwarded without being entered, as bytes (the answer
        can change before the command's turn comes: `process_command` then raises ShardNotHere)."""
        entity = self._busy.get(entity_id)
        resting = self._resting.get(entity_id) if entity is None else None
        if entity is not None:
            shard = entity.shard
        elif resting is not None:
            shard = resting[RESTING_SHARD]
        else:
            shard = shard_of(entity_id, self._settings.num_shards)
        try:
            self._gate.admit(shard)
        except ShardNotHere:
            return False
        return True

    def resting_state(self, entity_id: str) -> EntityState | None:
        """The state of a cached entity nobody is using (the read counts as a use), else None.

        Nothing is queued ahead of such a read and nothing needs recovering, so it needs no lock:
        `get_state` would give the same answer (and, when tracing, its spans)."""
        resting = self._resting.get(entity_id)
        if resting is None or not self._gate.serves(resting[RESTING_SHARD], resting[RESTING_TENURE]):
            return None
        self._resting[entity_id] = used_again(resting, self._clock())
        self._resting.move_to_end(entity_id)
        return state_at_rest(resting)

    async def get_state(self, entity_id: str, deadline: Deadline) -> EntityState:
        """Queued behind the entity's earlier commands (§3.2); revision 0 is NOT_FOUND (§3.13). Callers
        that can do without the read's spans ask `resting_state` first (CommandPath.cached_state)."""
        entity = self._enter(entity_id)
        try:
            with self._tracing.span(SPAN_MAILBOX):
                await entity.lock.acquire()
            try:
                with self._tracing.span(SPAN_ENTITY_GET_STATE):
                    deadline.check("while waiting for the entity")
                    tenure = self._gate.admit(entity.shard)
                    state = await self._processor.ensure_recovered(entity, tenure)
            finally:
                entity.lock.release()
        finally:
            self._leave(entity)
        if state.revision == 0:
            raise NotFound("")
        return state

    def _enter(self, entity_id: str) -> Entity:
        # No await between the lookup and `users += 1`: eviction can never pick an entity a caller holds.
        entity = self._busy.get(entity_id)
        if entity is None:
            resting = self._resting.pop(entity_id, None)
            if resting is None:
                entity = Entity(entity_id, shard_of(entity_id, self._settings.num_shards))
            else:
                entity = Entity.awoken(entity_id, resting)
            self._busy[entity_id] = entity
        limit = self._settings.mailbox_capacity
        if entity.users >= limit:
            raise ResourceExhausted(f"entity {entity_id} has {entity.users} requests queued (limit {limit})")
        entity.users += 1
        return entity

    def _leave(self, entity: Entity) -> None:
        entity.users -= 1
        if entity.users:
            return
        del self._busy[entity.entity_id]
        if self._idle_watchers:
            for shards, left in self._idle_watchers:
                if entity.shard in shards:
                    left.set()
        # Nothing worth caching when the entity was never recovered (the store was down) or has no
        # events (GetState of an unknown id, a no-op): keeping those would let lookups of random ids
        # fill the cache and evict real entities.
        resting = entity.resting(self._clock())
        if resting is not None:
            self._resting[entity.entity_id] = resting  # at the end: the most recently used
            self._evict_over_capacity()

    def _evict_over_capacity(self) -> None:
        # Least recently used first; busy entities stay (the cache may exceed its capacity by at
        # most the number of entities with requests in flight).
        excess = min(len(self) - self._settings.cache_capacity, len(self._resting))
        for _ in range(excess):
            self._resting.popitem(last=False)
        if excess > 0:
            self.passivations += excess

    def forget_shard(self, shard: int) -> int:
        """Forget the cached entities of a shard this node no longer serves; returns how many. Entities
        with callers stay until they leave: their state carries its tenure, so it is never used under
        another lease (entities/gate.py)."""
        gone = [entity_id for entity_id, resting in self._resting.items() if resting[RESTING_SHARD] == shard]
        for entity_id in gone:
            del self._resting[entity_id]
        self.passivations += len(gone)
        return len(gone)

    def busy_in_shard(self, shard: int) -> int:
        """Entities of the shard with requests in flight: a handover waits for them to finish."""
        return sum(1 for entity in self._busy.values() if entity.shard == shard)

    async def wait_until_idle(self, shards: Collection[int], timeout_s: float) -> bool:
        """Wait until no entity of these shards has callers; False when `timeout_s` ran out first."""
        watched = frozenset(shards)
        give_up_at = self._clock() + timeout_s
        while any(entity.shard in watched for entity in self._busy.values()):
            left = give_up_at - self._clock()
            if left <= 0:
                return False
            watcher = (watched, asyncio.Event())
            self._idle_watchers.append(watcher)
            try:
                await asyncio.wait_for(watcher[1].wait(), left)
            except TimeoutError:
                return False
            finally:
                self._idle_watchers.remove(watcher)
        return True

    def passivate_idle(self, limit: int = SWEEP_CHUNK) -> int:
        """Forget up to `limit` entities idle for longer than the timeout; returns how many.

        Resting entities stand in the order they were last used, so the scan stops at the first one
        used after the threshold: a sweep costs what it passivates, not the size of the cache."""
        threshold = self._clock() - self._settings.idle_timeout_s
        passivated = 0
        while passivated < limit and self._resting:
            oldest = next(iter(self._resting.values()))
            if oldest[RESTING_LAST_USED] > threshold:
                break
            self._resting.popitem(last=False)
            passivated += 1
        self.passivations += passivated
        return passivated

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

"""Every projection of the node and the operations on them (docs/contract.md §5.2, §5.6, §6, decision D6).

One projection per (enabled read side, shard). The runtime is also the command processor's commit
listener: a commit wakes the projections of its shard at once, so an event reaches the read handler
within milliseconds while an idle node only polls slowly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from chiefofstate.config.read_sides import ReadSideSettings, ReadSidesSettings
from chiefofstate.core.errors import Code, CosError, InvalidArgument, NotFound
from chiefofstate.core.limits import clip
from chiefofstate.core.readside_rules import (
    BootAction,
    Lag,
    ProjectionState,
    boot_action,
    check_shard,
    lag,
)
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.ports.offsets import Halt, ShardRecord
from chiefofstate.readside.delivery import GuardedReadHandler
from chiefofstate.readside.projection import Projection, ProjectionContext

log = logging.getLogger("chiefofstate.readside")

# A status query counts a shard's pending events up to this many, so it stays cheap however far
# behind a projection is.
LAG_COUNT_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class ShardView:
    """One (read side, shard) as operators see it."""

    shard: int
    offset: int | None  # stored offset, as the manager's GetLatestOffset answers it
    head: int  # newest `ordering` in the shard
    lag: Lag
    state: ProjectionState
    detail: str
    halt: Halt | None
    oldest_pending_ms: int | None = None  # write time of the first event after the offset


@dataclass(frozen=True, slots=True)
class ReadSideView:
    settings: ReadSideSettings
    shards: tuple[ShardView, ...]


HandlerFactory = Callable[[ReadSideSettings], GuardedReadHandler]


class ReadSideRuntime:
    def __init__(
        self,
        settings: ReadSidesSettings,
        num_shards: int,
        context: ProjectionContext,
        handler_factory: HandlerFactory,
    ) -> None:
        self._settings = settings
        self._num_shards = num_shards
        self._context = context
        self._handler_factory = handler_factory
        self._read_sides = {read_side.read_side_id: read_side for read_side in settings.read_sides}
        self._handlers: list[GuardedReadHandler] = []
        self._projections: dict[str, list[Projection]] = {}
        self._by_shard: dict[int, list[Projection]] = {}

    @property
    def num_shards(self) -> int:
        return self._num_shards

    @property
    def read_sides(self) -> Sequence[ReadSideSettings]:
        return self._settings.read_sides

    async def start(self) -> None:
        """Apply autoStart (§5.6), then start every projection of every enabled read side."""
        store = self._context.store
        all_shards = list(range(self._num_shards))
        self._context.committer.start()
        for read_side in self._settings.read_sides:
            if not read_side.enabled:
                log.warning("read side %s is disabled (enabled: false): not started", read_side.read_side_id)
                continue
            read_side_id = read_side.read_side_id
            records = await store.load(read_side_id)
            paused = {shard: record.paused for shard, record in records.items()}
            action = boot_action(read_side.auto_start, paused, self._num_shards)
            if action is not BootAction.KEEP:
                pause = action is BootAction.PAUSE_ALL
                await store.set_paused(read_side_id, all_shards, pause)
                records = {
                    shard: replace(records.get(shard, ShardRecord()), paused=pause) for shard in all_shards
                }
                log.warning(
                    "read side %s: autoStart=%s, so %s", read_side_id, read_side.auto_start, action.value
                )
            handler = self._handler_factory(read_side)
            self._handlers.append(handler)
            projections = [Projection(read_side, shard, handler, self._context) for shard in all_shards]
            self._projections[read_side_id] = projections
            for projection in projections:
                self._by_shard.setdefault(projection.shard, []).append(projection)
                await projection.start(records.get(projection.shard, ShardRecord()))
            log.warning(
                "read side %s: %d projections delivering to %s over %s (failure policy %s)",
                read_side_id,
                len(projections),
                read_side.target,
                read_side.protocol,
                read_side.failure_policy.value,
            )

    async def close(self) -> None:
        for projections in self._projections.values():
            for projection in projections:
                await projection.close()
        await self._context.committer.close()
        for handler in self._handlers:
            await handler.close()

    # --------------------------------------------------------------------------------------- wake-ups

    def on_committed(self, entity_id: str, shard: int, events: Sequence[EventWrapper]) -> None:
        """CommitListener: runs on the event loop right after the commit, so it only sets flags."""
        for projection in self._by_shard.get(shard, ()):
            projection.wake()

    def wake_shards(self, shards: Iterable[int]) -> None:
        for shard in shards:
            for projection in self._by_shard.get(shard, ()):
                projection.wake()

    def wake_all(self) -> None:
        for projections in self._by_shard.values():
            for projection in projections:
                projection.wake()

    # -------------------------------------------------------------------------- manager operations

    def configured(self, read_side_id: str) -> ReadSideSettings:
        """Decision D6: an unknown read side is NOT_FOUND at once (upstream times out after ~12 s)."""
        read_side = self._read_sides.get(read_side_id)
        if read_side is None:
            known = ", ".join(sorted(self._read_sides)) or "none"
            raise NotFound(
                f"read side {clip(read_side_id)!r} is not configured on this node (configured: {known})"
            )
        return read_side

    def _checked_shard(self, shard: int) -> int:
        problem = check_shard(shard, self._num_shards)
        if problem is not None:
            raise InvalidArgument(problem)
        return shard

    def _targets(self, read_side_id: str, shard: int | None) -> list[Projection]:
        read_side = self.configured(read_side_id)
        if shard is not None:
            self._checked_shard(shard)
        if not read_side.enabled:
            raise CosError(
                f"read side {read_side_id!r} is disabled (enabled: false); enable it and restart the node",
                code=Code.FAILED_PRECONDITION,
            )
        projections = self._projections[read_side_id]
        return projections if shard is None else [projections[shard]]

    async def offsets(self, read_side_id: str) -> list[tuple[int, int]]:
        """(shard, stored offset or 0) for every shard, straight from the store (decision D6)."""
        self.configured(read_side_id)
        records = await self._context.store.load(read_side_id)
        return [(shard, (records.get(shard, ShardRecord()).offset or 0)) for shard in range(self._num_shards)]

    async def offset(self, read_side_id: str, shard: int) -> int:
        self.configured(read_side_id)
        self._checked_shard(shard)
        records = await self._context.store.load(read_side_id)
        return records.get(shard, ShardRecord()).offset or 0

    async def pause(self, read_side_id: str, shard: int | None = None) -> None:
        for projection in self._targets(read_side_id, shard):
            await projection.pause()

    async def resume(self, read_side_id: str, shard: int | None = None) -> None:
        for projection in self._targets(read_side_id, shard):
            await projection.resume()

    async def restart(self, read_side_id: str, shard: int | None = None) -> None:
        for projection in self._targets(read_side_id, shard):
            await projection.restart()

    async def skip(self, read_side_id: str, shard: int | None = None) -> list[tuple[int, int]]:
        """(shard, ordering skipped) for each shard that had an unprocessed event."""
        skipped = []
        for projection in self._targets(read_side_id, shard):
            ordering = await projection.skip()
            if ordering is not None:
                skipped.append((projection.shard, ordering))
        return skipped

    # ------------------------------------------------------------------------------------ status

    async def views(self, read_side_id: str | None = None, shard: int | None = None) -> list[ReadSideView]:
        """Offsets, journal heads, lag and state per shard, for `cos readside list`."""
        chosen = [self.configured(read_side_id)] if read_side_id else list(self._settings.read_sides)
        shards = [self._checked_shard(shard)] if shard is not None else list(range(self._num_shards))
        store = self._context.store
        views = []
        for read_side in chosen:
            records = await store.load(read_side.read_side_id)
            projections = self._projections.get(read_side.read_side_id)
            rows = []
            for number in shards:
                record = records.get(number, ShardRecord())
                progress = await self._context.journal.shard_progress(
                    number, record.offset or 0, LAG_COUNT_LIMIT
                )
                if projections is None:
                    state, detail, halt = ProjectionState.DISABLED, "enabled: false", record.halt
                else:
                    status = projections[number].status()
                    state, detail, halt = status.state, status.detail, status.halt
                rows.append(
                    ShardView(
                        shard=number,
                        offset=record.offset,
                        head=progress.head,
                        lag=lag(progress.pending, LAG_COUNT_LIMIT),
                        state=state,
                        detail=detail,
                        halt=halt,
                        oldest_pending_ms=progress.oldest_pending_ms,
                    )
                )
            views.append(ReadSideView(read_side, tuple(rows)))
        return views

    def state_counts(self) -> list[tuple[dict[str, str], float]]:
        """(labels, projections) for every read side and state, zeros included, for metrics."""
        samples: list[tuple[dict[str, str], float]] = []
        for read_side_id, projections in self._projections.items():
            states = [projection.status().state for projection in projections]
            samples.extend(
                ({"read_side": read_side_id, "state": state.value}, states.count(state))
                for state in ProjectionState
                if state is not ProjectionState.DISABLED
            )
        return samples

    def event_counts(self, kind: Literal["delivered", "skipped"]) -> list[tuple[dict[str, str], float]]:
        return [
            ({"read_side": read_side_id}, sum(getattr(projection, kind) for projection in projections))
            for read_side_id, projections in self._projections.items()
        ]

    def states(self, read_side_id: str, shard: int | None = None) -> dict[int, ProjectionState]:
        """In-memory states, cheap enough to attach to every manager answer (decision D7)."""
        projections = self._projections.get(read_side_id, [])
        return {
            projection.shard: projection.status().state
            for projection in projections
            if shard is None or projection.shard == shard
        }

"""Every projection of the node and the operations on them (docs/contract.md §5.2, §5.6, §6, decision D6).

One projection per (enabled read side, shard). A lone node (SQLite) runs all of them from `start`. A
cluster member runs only those whose lease it holds (docs/cluster.md, "Read sides"): `prepare` readies
the read sides, and the coordinator calls `run_projection` when it acquires a lease and
`stop_projection` / `drop_projection` when it hands one over or loses it. Those calls are applied one
after the other per projection, each starting from the stored record, so a projection that moves
here starts where its last owner stored its offset, paused or halted if it was.

The runtime is also the command processor's commit listener: a commit wakes the projections of its
shard at once, so an event reaches the read handler within milliseconds while an idle node only polls
slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.config.read_sides import ReadSideSettings, ReadSidesSettings
from chiefofstate.core.errors import Code, CosError, InvalidArgument, NotFound, Unavailable
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
from chiefofstate.ports.offsets import Halt, ProjectionKey, ShardRecord
from chiefofstate.readside.delivery import GuardedReadHandler
from chiefofstate.readside.operations import Operation, ShardHold, change_all_shards
from chiefofstate.readside.projection import Projection, ProjectionContext

log = logging.getLogger("chiefofstate.readside")

# A status query counts a shard's pending events up to this many, so it stays cheap however far
# behind a projection is.
LAG_COUNT_LIMIT = 1_000_000
# How long a projection held by a whole-read-side operation on this node waits for its release.
LOCAL_HOLD_S = 30.0


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
    member: str = ""  # cluster mode: the address of the member that runs it ("" when none does)


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
        self._handlers: dict[str, GuardedReadHandler] = {}
        # read side id → shard → the projection running here
        self._local: dict[str, dict[int, Projection]] = {}
        self._by_shard: dict[int, dict[str, Projection]] = {}
        self._closed = False
        # cluster mode: the lease token each projection should run under here, and the start or stop
        # of each projection still being applied (one after the other per projection)
        self._wanted: dict[ProjectionKey, int] = {}
        self._transitions: dict[ProjectionKey, asyncio.Task[None]] = {}
        # cluster mode: whether a projection's lease is usable now by this member's clock
        self.lease_usable: Callable[[ProjectionKey], bool] = lambda key: True
        # events counted by projections that have moved away, so the metrics' counters never go back
        self._moved_counts: dict[tuple[str, str], int] = {}
        # cluster mode: grants counted, the count at each projection's grant, and the record load in
        # flight per read side with the count when it began (projections granted together share one)
        self._grants = 0
        self._granted_at: dict[ProjectionKey, int] = {}
        self._loads: dict[str, tuple[int, asyncio.Task[dict[int, ShardRecord]]]] = {}
        # projections held by a whole-read-side operation: the task that releases each if nobody does
        self._hold_timers: dict[ProjectionKey, asyncio.Task[None]] = {}

    @property
    def num_shards(self) -> int:
        return self._num_shards

    @property
    def read_sides(self) -> Sequence[ReadSideSettings]:
        return self._settings.read_sides

    def enabled_read_side_ids(self) -> list[str]:
        return [read_side.read_side_id for read_side in self._settings.read_sides if read_side.enabled]

    async def start(self) -> None:
        """A lone node: apply autoStart (§5.6), then start every projection of every enabled read side."""
        await self.prepare(apply_auto_start=True)
        for read_side_id in self.enabled_read_side_ids():
            records = await self._context.store.load(read_side_id)
            for shard in range(self._num_shards):
                await self._launch(read_side_id, shard, records.get(shard, ShardRecord()))
            read_side = self._read_sides[read_side_id]
            log.warning(
                "read side %s: %d projections delivering to %s over %s (failure policy %s)",
                read_side_id,
                self._num_shards,
                read_side.target,
                read_side.protocol,
                read_side.failure_policy.value,
            )

    async def prepare(self, *, apply_auto_start: bool) -> None:
        """Start the offset committer and open each enabled read side's handler; with
        `apply_auto_start`, apply autoStart (§5.6) to the stored pause flags. A cluster member applies it
        only when it starts first (no other live member), as a lone node does at every start: flags
        changed under projections running on other members would not reach them."""
        store = self._context.store
        all_shards = list(range(self._num_shards))
        self._context.committer.start()
        for read_side in self._settings.read_sides:
            read_side_id = read_side.read_side_id
            if not read_side.enabled:
                log.warning("read side %s is disabled (enabled: false): not started", read_side_id)
                continue
            if apply_auto_start:
                records = await store.load(read_side_id)
                paused = {shard: record.paused for shard, record in records.items()}
                action = boot_action(read_side.auto_start, paused, self._num_shards)
                if action is not BootAction.KEEP:
                    await store.set_paused(read_side_id, all_shards, action is BootAction.PAUSE_ALL)
                    log.warning(
                        "read side %s: autoStart=%s, so %s", read_side_id, read_side.auto_start, action.value
                    )
            self._handlers[read_side_id] = self._handler_factory(read_side)
            self._local[read_side_id] = {}

    async def _launch(self, read_side_id: str, shard: int, record: ShardRecord) -> Projection:
        key = (read_side_id, shard)
        projection = Projection(
            self._read_sides[read_side_id],
            shard,
            self._handlers[read_side_id],
            self._context,
            may_deliver=lambda: self.lease_usable(key),
        )
        self._local[read_side_id][shard] = projection
        self._by_shard.setdefault(shard, {})[read_side_id] = projection
        await projection.start(record)
        return projection

    async def _retire(self, projection: Projection) -> None:
        read_side_id = projection.read_side.read_side_id
        self._local.get(read_side_id, {}).pop(projection.shard, None)
        self._by_shard.get(projection.shard, {}).pop(read_side_id, None)
        await projection.close()
        for kind in ("delivered", "skipped"):
            counted = (read_side_id, kind)
            self._moved_counts[counted] = self._moved_counts.get(counted, 0) + getattr(projection, kind)

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(*self._hold_timers.values())
        self._hold_timers.clear()
        await cancel_and_wait(*self._transitions.values())
        self._transitions.clear()
        for projections in list(self._local.values()):
            for projection in list(projections.values()):
                await self._retire(projection)
        await self._context.committer.close()
        for handler in self._handlers.values():
            await handler.close()

    # ---------------------------------------------------------------------------- cluster mode

    def run_projection(self, key: ProjectionKey, token: int) -> None:
        """This member now holds the projection's lease under `token`: start it from its stored record
        (offset, pause flag, halt), once any earlier start or stop of it has been applied."""
        self._wanted[key] = token
        self._grants += 1
        self._granted_at[key] = self._grants
        self._chain(key, lambda: self._start_leased(key, token))

    async def stop_projection(self, key: ProjectionKey) -> None:
        """Hand the projection over: stop it and store its offset under its lease; returns when done,
        so the lease can be released at once."""
        self._wanted.pop(key, None)
        await asyncio.shield(self._chain(key, lambda: self._stop_leased(key, store_offset=True)))

    def drop_projection(self, key: ProjectionKey) -> None:
        """The lease is lost (expired by our clock, taken, or an offset commit was refused): stop the
        projection without storing anything more; its next owner delivers again from the stored offset."""
        self._wanted.pop(key, None)
        self._context.committer.forget(key)
        self._chain(key, lambda: self._stop_leased(key, store_offset=False))

    def runs(self, read_side_id: str, shard: int) -> bool:
        return shard in self._local.get(read_side_id, {})

    def running_projections(self) -> list[tuple[str, int]]:
        """(read side, shard) of every projection this node runs, whatever its state."""
        return sorted((read_side_id, shard) for read_side_id, local in self._local.items() for shard in local)

    def _chain(self, key: ProjectionKey, step: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        earlier = self._transitions.get(key)

        async def after_earlier() -> None:
            if earlier is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(earlier)
            await step()

        task = asyncio.create_task(after_earlier(), name=f"projection lease {key}")
        self._transitions[key] = task
        task.add_done_callback(lambda done: self._transition_done(key, done))
        return task

    def _transition_done(self, key: ProjectionKey, task: asyncio.Task[None]) -> None:
        if self._transitions.get(key) is task:
            del self._transitions[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("read side %s shard %d: start or stop failed: %s", *key, task.exception())

    async def _start_leased(self, key: ProjectionKey, token: int) -> None:
        read_side_id, shard = key
        if read_side_id not in self._local or self.runs(read_side_id, shard):
            return
        attempts = 0
        while True:
            try:
                records = await self._records_since(read_side_id, self._granted_at.get(key, self._grants))
                break
            except CosError as error:
                # The lease is held meanwhile, so nobody else runs it: keep trying while it is ours.
                # At most a second apart: a stop or a loss of the lease waits for this to give up.
                backoff = self._context.delivery.restart_backoff.delay(attempts, self._context.random_unit())
                delay = min(backoff, 1.0)
                attempts += 1
                log.warning(
                    "read side %s shard %d cannot start yet (%s); retrying in %.1fs", *key, error, delay
                )
                await self._context.sleep(delay)
                if self._wanted.get(key) != token:
                    return
        if self._wanted.get(key) != token:
            return  # lost or handed over while its record was read
        self._context.committer.lease(key, token)
        await self._launch(read_side_id, shard, records.get(shard, ShardRecord()))
        log.info("read side %s shard %d runs here (lease token %d)", read_side_id, shard, token)

    async def _records_since(self, read_side_id: str, grant: int) -> dict[int, ShardRecord]:
        """The read side's records, read after the `grant`-th lease grant: a load already in flight is
        shared when it began after that grant (so it sees what the projection's previous owner stored
        before releasing it), else a new one starts. Many projections taken in one round read once."""
        loading = self._loads.get(read_side_id)
        if loading is None or loading[0] < grant:
            task = asyncio.create_task(
                self._context.store.load(read_side_id), name=f"records of {read_side_id}"
            )
            loading = (self._grants, task)
            self._loads[read_side_id] = loading

            def forget(done: asyncio.Task[dict[int, ShardRecord]], read_side_id: str = read_side_id) -> None:
                if self._loads.get(read_side_id, (0, None))[1] is done:
                    del self._loads[read_side_id]
                if not done.cancelled():
                    done.exception()  # seen by every sharer; retrieved here so none goes unreported

            task.add_done_callback(forget)
        return await asyncio.shield(loading[1])

    async def _stop_leased(self, key: ProjectionKey, *, store_offset: bool) -> None:
        read_side_id, shard = key
        projection = self._local.get(read_side_id, {}).get(shard)
        if projection is not None:
            await self._retire(projection)
            log.info(
                "read side %s shard %d stopped here (%s)", *key, "handed over" if store_offset else "lost"
            )
        if key not in self._wanted:
            self._context.committer.forget(key)

    # --------------------------------------------------------------------------------------- wake-ups

    def on_committed(self, entity_id: str, shard: int, events: Sequence[EventWrapper]) -> None:
        """CommitListener: runs on the event loop right after the commit, so it only sets flags."""
        for projection in self._by_shard.get(shard, {}).values():
            projection.wake()

    def wake_shards(self, shards: Iterable[int]) -> None:
        for shard in shards:
            for projection in self._by_shard.get(shard, {}).values():
                projection.wake()

    def wake_all(self) -> None:
        for projections in self._by_shard.values():
            for projection in projections.values():
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

    def checked_shard(self, shard: int) -> int:
        problem = check_shard(shard, self._num_shards)
        if problem is not None:
            raise InvalidArgument(problem)
        return shard

    def check_target(self, read_side_id: str, shard: int | None) -> None:
        """NOT_FOUND, INVALID_ARGUMENT or FAILED_PRECONDITION (disabled) for an operation's target."""
        read_side = self.configured(read_side_id)
        if shard is not None:
            self.checked_shard(shard)
        if not read_side.enabled:
            raise CosError(
                f"read side {read_side_id!r} is disabled (enabled: false); enable it and restart the node",
                code=Code.FAILED_PRECONDITION,
            )

    def _targets(self, read_side_id: str, shard: int | None) -> list[Projection]:
        """The targeted projections that run here (all of them on a lone node)."""
        self.check_target(read_side_id, shard)
        if self._closed:
            raise Unavailable("the node is shutting down: its read sides are stopped")
        local = self._local[read_side_id]
        shards = range(self._num_shards) if shard is None else [shard]
        return [local[number] for number in shards if number in local]

    async def offsets(self, read_side_id: str) -> list[tuple[int, int]]:
        """(shard, stored offset or 0) for every shard, straight from the store (decision D6)."""
        self.configured(read_side_id)
        records = await self._context.store.load(read_side_id)
        return [(shard, (records.get(shard, ShardRecord()).offset or 0)) for shard in range(self._num_shards)]

    async def offset(self, read_side_id: str, shard: int) -> int:
        self.configured(read_side_id)
        self.checked_shard(shard)
        records = await self._context.store.load(read_side_id)
        return records.get(shard, ShardRecord()).offset or 0

    async def pause(self, read_side_id: str, shard: int | None = None) -> None:
        if shard is None:
            await self._change_here(read_side_id, "pause")
            return
        for projection in self._targets(read_side_id, shard):
            await projection.pause()

    async def resume(self, read_side_id: str, shard: int | None = None) -> None:
        if shard is None:
            await self._change_here(read_side_id, "resume")
            return
        for projection in self._targets(read_side_id, shard):
            await projection.resume()

    async def restart(self, read_side_id: str, shard: int | None = None) -> None:
        if shard is None:
            await self._change_here(read_side_id, "restart")
            return
        for projection in self._targets(read_side_id, shard):
            await projection.restart()

    async def skip(self, read_side_id: str, shard: int | None = None) -> list[tuple[int, int]]:
        """(shard, ordering skipped) for each shard that had an unprocessed event."""
        if shard is None:
            return await self._change_here(read_side_id, "skip")
        skipped = []
        for projection in self._targets(read_side_id, shard):
            ordering = await projection.skip()
            if ordering is not None:
                skipped.append((projection.shard, ordering))
        return skipped

    # ------------------------------------------------------------ whole-read-side operations, held

    async def change_all(
        self, read_side_id: str, operation: Operation, holds: Sequence[ShardHold], hold_s: float
    ) -> list[tuple[int, int]]:
        """`operation` on every shard of the read side or on none (readside/operations.py); `holds`
        reach each shard's projection wherever it runs, and last `hold_s` unreleased."""
        self.check_target(read_side_id, None)
        if self._closed:
            raise Unavailable("the node is shutting down: its read sides are stopped")
        context = self._context
        return await change_all_shards(operation, read_side_id, holds, context.store, context.journal, hold_s)

    async def _change_here(self, read_side_id: str, operation: Operation) -> list[tuple[int, int]]:
        """A lone node's whole-read-side operation: every projection runs here."""
        holds = [self.local_hold(read_side_id, shard, LOCAL_HOLD_S) for shard in range(self._num_shards)]
        return await self.change_all(read_side_id, operation, holds, LOCAL_HOLD_S)

    def local_hold(self, read_side_id: str, shard: int, hold_s: float) -> ShardHold:
        async def hold() -> int | None:
            return await self.hold(read_side_id, shard, hold_s)

        async def release() -> None:
            await self.release(read_side_id, shard)

        return ShardHold(shard, hold, release)

    async def hold(self, read_side_id: str, shard: int, hold_s: float) -> int | None:
        """Hold the projection running here for a whole-read-side operation: it stops, stores what
        it finished and waits for `release`, or for `hold_s` to pass; returns the lease token it runs
        under (None on a lone node)."""
        self.check_target(read_side_id, shard)
        key = (read_side_id, shard)
        projection = None if self._closed else self._local[read_side_id].get(shard)
        token = self._context.committer.token(key)
        if projection is None or (self._context.committer.fenced and token is None):
            raise Unavailable(
                f"read side {read_side_id!r} shard {shard} is not run by this member right now (its lease "
                "is moving between members); nothing was changed, retry in a few seconds"
            )
        await projection.hold()
        self._hold_timers[key] = asyncio.create_task(
            self._release_after(key, hold_s), name=f"hold of projection {key}"
        )
        return token

    async def release(self, read_side_id: str, shard: int) -> None:
        """End a hold: the projection carries on from its stored record."""
        key = (read_side_id, shard)
        timer = self._hold_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        await self._reload_held(key)

    async def _release_after(self, key: ProjectionKey, hold_s: float) -> None:
        await self._context.sleep(hold_s)
        self._hold_timers.pop(key, None)
        log.warning("read side %s shard %d: held %.0fs without a release; carrying on", *key, hold_s)
        while True:
            try:
                await self._reload_held(key)
                return
            except CosError as error:
                log.warning("read side %s shard %d cannot carry on yet (%s)", *key, error)
                await self._context.sleep(1.0)

    async def _reload_held(self, key: ProjectionKey) -> None:
        read_side_id, shard = key
        projection = self._local.get(read_side_id, {}).get(shard)
        if projection is None or not projection.held:
            return  # it moved away meanwhile: its next owner starts from the stored record anyway
        records = await self._context.store.load(read_side_id)
        await projection.reload(records.get(shard, ShardRecord()))

    # ------------------------------------------------------------------------------------ status

    async def views(
        self,
        read_side_id: str | None = None,
        shard: int | None = None,
        owners: Mapping[ProjectionKey, str] | None = None,
    ) -> list[ReadSideView]:
        """Offsets, journal heads, lag and state per shard, for `cos readside list`. In cluster mode
        `owners` gives the address of the member running each projection; one running elsewhere is
        shown with its stored state (paused, halted, else running)."""
        chosen = [self.configured(read_side_id)] if read_side_id else list(self._settings.read_sides)
        shards = [self.checked_shard(shard)] if shard is not None else list(range(self._num_shards))
        store = self._context.store
        views = []
        for read_side in chosen:
            records = await store.load(read_side.read_side_id)
            local = self._local.get(read_side.read_side_id)
            rows = []
            # Asked together: a store answers them back to back, where one at a time would add a
            # round trip through the event loop per shard (the admin console shows every shard).
            progresses = await asyncio.gather(
                *(
                    self._context.journal.shard_progress(
                        number, records.get(number, ShardRecord()).offset or 0, LAG_COUNT_LIMIT
                    )
                    for number in shards
                )
            )
            for number, progress in zip(shards, progresses, strict=True):
                record = records.get(number, ShardRecord())
                member = (owners or {}).get((read_side.read_side_id, number), "")
                if local is None:
                    state, detail, halt = ProjectionState.DISABLED, "enabled: false", record.halt
                elif number in local:
                    status = local[number].status()
                    state, detail, halt = status.state, status.detail, status.halt
                else:
                    state, detail, halt = _stored_state(record, member), "", record.halt
                rows.append(
                    ShardView(
                        shard=number,
                        offset=record.offset,
                        head=progress.head,
                        lag=lag(progress.pending, LAG_COUNT_LIMIT),
                        state=state,
                        detail=detail or (halt.reason if halt else ""),
                        halt=halt,
                        oldest_pending_ms=progress.oldest_pending_ms,
                        member=member,
                    )
                )
            views.append(ReadSideView(read_side, tuple(rows)))
        return views

    def state_counts(self) -> list[tuple[dict[str, str], float]]:
        """(labels, projections running here) for every read side and state, zeros included, for
        metrics."""
        samples: list[tuple[dict[str, str], float]] = []
        for read_side_id, projections in self._local.items():
            states = [projection.status().state for projection in projections.values()]
            samples.extend(
                ({"read_side": read_side_id, "state": state.value}, states.count(state))
                for state in ProjectionState
                if state not in (ProjectionState.DISABLED, ProjectionState.UNASSIGNED)
            )
        return samples

    def event_counts(self, kind: Literal["delivered", "skipped"]) -> list[tuple[dict[str, str], float]]:
        return [
            (
                {"read_side": read_side_id},
                self._moved_counts.get((read_side_id, kind), 0)
                + sum(getattr(projection, kind) for projection in projections.values()),
            )
            for read_side_id, projections in self._local.items()
        ]

    def states(self, read_side_id: str, shard: int | None = None) -> dict[int, ProjectionState]:
        """In-memory states of the projections running here, cheap enough to attach to every manager
        answer (decision D7)."""
        projections = self._local.get(read_side_id, {})
        return {
            number: projection.status().state
            for number, projection in projections.items()
            if shard is None or number == shard
        }

    async def trailer_states(self, read_side_id: str, shard: int | None = None) -> dict[int, ProjectionState]:
        """What a lone node's manager answers carry: every projection runs here."""
        return self.states(read_side_id, shard)

    async def cluster_states(
        self, read_side_id: str, shard: int | None, owners: Mapping[ProjectionKey, str]
    ) -> dict[int, ProjectionState]:
        """Every projection of the cluster (decision D7): those running here by their state in memory,
        the others by their stored record and the member the lease table names (UNASSIGNED when none)."""
        local = self._local.get(read_side_id)
        if local is None:
            return {}  # unknown or disabled: the answer says so already
        records = await self._context.store.load(read_side_id)
        shards = range(self._num_shards) if shard is None else [shard]
        return {
            number: local[number].status().state
            if number in local
            else _stored_state(records.get(number, ShardRecord()), owners.get((read_side_id, number), ""))
            for number in shards
        }

    def running_here(self) -> list[ProjectionKey]:
        return sorted((read_side_id, shard) for read_side_id, local in self._local.items() for shard in local)


def _stored_state(record: ShardRecord, member: str) -> ProjectionState:
    """The state of a projection that runs on another member, as far as its stored record says."""
    if record.paused:
        return ProjectionState.PAUSED
    if record.halt is not None:
        return ProjectionState.HALTED
    return ProjectionState.RUNNING if member else ProjectionState.UNASSIGNED

"""One projection: the events of one shard delivered to one read side, in `ordering` order
(docs/contract.md §5).

The projection reads its shard's journal rows after its position, hands them to the read handler one at
a time and records its position after each; the offset committer stores it a moment later (at-least-once:
a crash re-delivers at most the events handled since the last store). Because every append takes its
shards' write locks before drawing `ordering` values (decision D3), a row with a smaller ordering can
never commit after one we have read, so the projection never waits on gaps and never misses a late
commit.

Operator actions (pause, resume, restart, skip) stop the delivery task, store what it has finished, change
the stored state and start it again; each returns once the store says so (decision D6).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.config.read_sides import DeliverySettings, ReadSideSettings
from chiefofstate.core.errors import Code, CosError, Unavailable
from chiefofstate.core.readside_rules import (
    REPLAY_RETRIES,
    AfterFailure,
    ProjectionState,
    after_failure,
    projection_state,
    restarts_after_store_errors,
)
from chiefofstate.ports.journal import JournalRow, ShardProgress
from chiefofstate.ports.offsets import Halt, OffsetStore, ShardRecord
from chiefofstate.readside.delivery import Event, GuardedReadHandler, event_of
from chiefofstate.readside.offset_committer import OffsetCommitter

log = logging.getLogger("chiefofstate.readside")

CLOSE_COMMIT_TIMEOUT_S = 5.0
# How often a projection whose lease is not usable right now looks again (cluster mode).
LEASE_WAIT_S = 0.05
OPERATOR_HINT = "resume, restart or skip it (cos readside resume|restart|skip)"


class ShardReader(Protocol):
    """What projections and their status need of the journal."""

    async def read_shard(self, shard: int, after_ordering: int, limit: int) -> list[JournalRow]: ...

    async def shard_progress(self, shard: int, after_ordering: int, count_limit: int) -> ShardProgress: ...


@dataclass(frozen=True)
class ProjectionContext:
    """What every projection of a node shares."""

    journal: ShardReader
    store: OffsetStore
    committer: OffsetCommitter
    delivery: DeliverySettings
    # Bounds handler calls and journal reads in flight across all projections of the node.
    slots: asyncio.Semaphore
    wall_clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    random_unit: Callable[[], float] = field(default=random.random)


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    shard: int
    state: ProjectionState
    position: int  # ordering of the last event finished in memory (may be ahead of the stored offset)
    halt: Halt | None
    detail: str  # why it is halted, stopped or restarting
    delivered: int
    skipped: int


class Projection:
    def __init__(
        self,
        read_side: ReadSideSettings,
        shard: int,
        handler: GuardedReadHandler,
        context: ProjectionContext,
        may_deliver: Callable[[], bool] = lambda: True,
    ) -> None:
        """`may_deliver`: in cluster mode, whether the projection's lease is usable now by this
        member's clock; while it is not, nothing is delivered (the coordinator stops the projection, or
        a confirmed renewal lets it go on)."""
        self.read_side = read_side
        self.shard = shard
        self._may_deliver = may_deliver
        self._handler = handler
        self._context = context
        self._control = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.position = 0
        self._unstored = 0
        self._paused = False
        self._halt: Halt | None = None
        self._stopped_reason = ""
        self._restarting_reason = ""
        self._restarts = 0
        self._closed = False
        # held by a whole-read-side manager operation: not delivering until `reload`
        self.held = False
        self.delivered = 0
        self.skipped = 0

    @property
    def name(self) -> str:
        return f"read side {self.read_side.read_side_id} shard {self.shard}"

    @property
    def key(self) -> tuple[str, int]:
        return (self.read_side.read_side_id, self.shard)

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self, record: ShardRecord) -> None:
        async with self._control:
            self.position = record.offset or 0
            self._paused = record.paused
            self._halt = record.halt
            if record.halt is not None:
                log.warning(
                    "%s is halted on event ordering %d since %d (epoch ms): %s; it stays halted until an "
                    "operator acts (decision D7): %s",
                    self.name,
                    record.halt.event_offset,
                    record.halt.halted_at_ms,
                    record.halt.reason,
                    OPERATOR_HINT,
                )
            self._launch_if_due()

    def wake(self) -> None:
        """New events may be in the shard; costs nothing when the projection is busy or idle-paused."""
        self._wake.set()

    async def close(self) -> None:
        """Stop delivering and store what was finished, so a restart re-delivers as little as possible."""
        async with self._control:
            self._closed = True
            await cancel_and_wait(self._task)
            self._task = None
            try:
                async with asyncio.timeout(CLOSE_COMMIT_TIMEOUT_S):
                    await self._context.committer.flush(self.key)
            except (CosError, TimeoutError) as error:
                log.warning(
                    "%s could not store its offset %d at shutdown (%s); those events will be delivered again",
                    self.name,
                    self.position,
                    error,
                )

    def status(self) -> ProjectionStatus:
        return ProjectionStatus(
            shard=self.shard,
            state=projection_state(
                enabled=True,
                paused=self._paused,
                halted=self._halt is not None,
                stopped=bool(self._stopped_reason),
                restarting=bool(self._restarting_reason),
            ),
            position=self.position,
            halt=self._halt,
            detail=(self._halt.reason if self._halt else "")
            or self._stopped_reason
            or self._restarting_reason,
            delivered=self.delivered,
            skipped=self.skipped,
        )

    # ----------------------------------------------------------------------------- operator actions

    @contextlib.asynccontextmanager
    async def _operator_action(self) -> AsyncIterator[None]:
        """Stop delivering and store what was finished; whatever the action does, delivery starts
        again afterwards unless the projection is now paused or halted."""
        async with self._control:
            if self._closed:
                raise Unavailable(f"{self.name} is shutting down")
            try:
                await self._stop()
                yield
            finally:
                self._launch_if_due()

    async def pause(self) -> None:
        async with self._operator_action():
            await self._context.store.set_paused(self.read_side.read_side_id, [self.shard], True)
            self._paused = True
            log.warning("%s paused at offset %d", self.name, self.position)

    async def resume(self) -> None:
        """Clears the pause flag and a halt, then retries from the stored offset."""
        async with self._operator_action():
            store = self._context.store
            await store.set_paused(self.read_side.read_side_id, [self.shard], False)
            self._paused = False
            if self._halt is not None:
                await store.clear_halt(self.read_side.read_side_id, self.shard)
                self._halt = None
            log.warning("%s resumed after offset %d", self.name, self.position)

    async def restart(self) -> None:
        """Forgets the offset (and a halt): the projection replays the shard from its oldest event."""
        async with self._operator_action():
            await self._context.store.reset(self.read_side.read_side_id, self.shard)
            self.position = 0
            self._halt = None
            log.warning("%s restarted: its offset is deleted and the shard is replayed", self.name)

    async def skip(self) -> int | None:
        """Moves past the next unprocessed event of the shard (decision D6): the one a halted projection
        is stuck on. Returns its ordering, None when the shard has no unprocessed event."""
        async with self._operator_action():
            store = self._context.store
            read_side_id = self.read_side.read_side_id
            async with self._context.slots:
                rows = await self._context.journal.read_shard(self.shard, self.position, 1)
            if not rows:
                if self._halt is not None:
                    await store.clear_halt(read_side_id, self.shard)
                    self._halt = None
                return None
            await store.skip_to(read_side_id, self.shard, rows[0].ordering)
            self.position = rows[0].ordering
            self._halt = None
            log.warning(
                "%s skipped %s on an operator's request",
                self.name,
                event_of(rows[0], read_side_id).describe(),
            )
            return rows[0].ordering

    async def hold(self) -> None:
        """Stop delivering and store what was finished, and stay so until `reload`: a manager
        operation on many shards changes their stored records while they are held (readside/
        operations.py), so no projection writes an offset over the change."""
        async with self._control:
            if self._closed:
                raise Unavailable(f"{self.name} is shutting down")
            if self.held:
                raise CosError(
                    f"{self.name}: another manager operation on it is in progress; retry once it is done",
                    code=Code.FAILED_PRECONDITION,
                )
            await self._stop()
            self.held = True

    async def reload(self, record: ShardRecord) -> None:
        """End a hold: carry on from `record`, the stored state after the operation (or the unchanged
        one when it did not go through)."""
        async with self._control:
            self.position = record.offset or 0
            self._paused = record.paused
            self._halt = record.halt
            self.held = False
            self._launch_if_due()

    # ------------------------------------------------------------------------------------- internals

    def _launch_if_due(self) -> None:
        if self._closed or self._task is not None or self.held:
            return
        self._stopped_reason = ""
        self._restarting_reason = ""
        if self._paused or self._halt is not None:
            return
        self._task = asyncio.create_task(
            self._run(), name=f"projection {self.read_side.read_side_id}/{self.shard}"
        )

    async def _stop(self) -> None:
        """Cancel the delivery task and store how far it got; an in-flight event is delivered again."""
        await cancel_and_wait(self._task)
        self._task = None
        await self._context.committer.flush(self.key)

    async def _run(self) -> None:
        """Runs the stream; restarts it with backoff after store errors where the policy allows (§5.5)."""
        policy = self.read_side.failure_policy
        while True:
            try:
                await self._stream()
                return
            except CosError as error:
                if not restarts_after_store_errors(policy):
                    self._stopped_reason = f"stopped after a store error under {policy.value}: {error}"
                    log.error("%s %s; %s", self.name, self._stopped_reason, OPERATOR_HINT)
                    return
                delay = self._context.delivery.restart_backoff.delay(
                    self._restarts, self._context.random_unit()
                )
                self._restarts += 1
                self._restarting_reason = f"restarting in {delay:.1f}s after a store error: {error}"
                log.warning("%s %s", self.name, self._restarting_reason)
                await self._context.sleep(delay)
                self._restarting_reason = ""
            except Exception as error:  # a bug: keep the node up, say so, and stop this projection only
                self._stopped_reason = f"stopped by an unexpected error: {error!r}"
                log.exception("%s %s", self.name, self._stopped_reason)
                return

    async def _stream(self) -> None:
        context = self._context
        settings = context.delivery
        read_side_id = self.read_side.read_side_id
        committer = context.committer
        key = self.key
        # At most one page read ahead, while the page before it is delivered: a replay then never waits
        # for the journal between pages. It reads after the last row of the page being delivered, the
        # position the projection has once that page is done, and is dropped (cancelled) when the
        # stream ends early (a halt, an operator action, shutdown).
        ahead: asyncio.Task[list[JournalRow]] | None = None
        try:
            while True:
                if ahead is None:
                    rows = await self._read_after(self.position)
                else:
                    rows, ahead = await ahead, None
                self._restarts = 0
                if not rows:
                    await self._idle(settings.poll_interval_s)
                    continue
                if len(rows) >= settings.batch_size:  # a full page: more rows are likely waiting
                    ahead = asyncio.create_task(
                        self._read_after(rows[-1].ordering), name=f"{self.name} read-ahead"
                    )
                for row in rows:
                    while not self._may_deliver():
                        await context.sleep(LEASE_WAIT_S)
                    event = event_of(row, read_side_id)
                    failure = await self._deliver(event)
                    if failure is not None:
                        await self._halt_on(event, failure)
                        return
                    self.position = row.ordering
                    committer.record(key, row.ordering)
                    self._unstored += 1
                    if self._unstored >= settings.commit_batch:
                        self._unstored = 0
                        committer.hurry()
        finally:
            await cancel_and_wait(ahead)

    async def _read_after(self, ordering: int) -> list[JournalRow]:
        """One page of the shard after `ordering`, in a journal-read slot."""
        # Cleared before reading: a commit that lands after the read began sets it again, so no
        # wake-up can fall between the read and an idle wait on an empty page.
        self._wake.clear()
        context = self._context
        async with context.slots:
            return await context.journal.read_shard(self.shard, ordering, context.delivery.batch_size)

    async def _idle(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        except TimeoutError:
            pass  # the slow poll: a safety net for wake-ups lost with a dropped LISTEN connection

    async def _deliver(self, event: Event) -> str | None:
        """Applies the failure policy (§5.5); returns why the projection must halt, None to go on."""
        context = self._context
        policy = self.read_side.failure_policy
        attempts = 0
        while True:
            async with context.slots:
                failure = await self._handler.deliver(event, self.shard)
            attempts += 1
            if failure is None:
                self.delivered += 1
                return None
            decision = after_failure(policy, attempts)
            if decision is AfterFailure.RETRY:
                log.warning(
                    "%s: attempt %d of %d to deliver %s failed (%s); retrying in %gs",
                    self.name,
                    attempts,
                    REPLAY_RETRIES + 1,
                    event.describe(),
                    failure,
                    context.delivery.replay_delay_s,
                )
                await context.sleep(context.delivery.replay_delay_s)
                continue
            if decision is AfterFailure.SKIP:
                self.skipped += 1
                log.warning(
                    "%s skipped %s under %s after %d attempt(s): %s",
                    self.name,
                    event.describe(),
                    policy.value,
                    attempts,
                    failure,
                )
                return None
            return f"{failure} ({attempts} attempt(s) under {policy.value})"

    async def _halt_on(self, event: Event, failure: str) -> None:
        halt = Halt(event.ordering, failure, int(self._context.wall_clock() * 1000))
        self._halt = halt
        committer = self._context.committer
        await committer.flush(self.key)  # the offset stays right before the failing event
        token = committer.token(self.key)
        if committer.fenced and token is None:
            return  # the lease was lost meanwhile: the halt is not this member's to store
        stored = await self._context.store.save_halt(
            self.read_side.read_side_id, self.shard, None, halt, lease_token=token
        )
        if not stored:
            log.warning("%s: its halt was refused, another member holds its lease now", self.name)
            committer.fenced_out(self.key)
            return
        log.error(
            "%s halted on %s: %s; it stays halted, across restarts too, until an operator acts: %s",
            self.name,
            event.describe(),
            failure,
            OPERATOR_HINT,
        )

"""Snapshots are written after the reply, off the command path, by one owned worker task."""

from __future__ import annotations

import asyncio
import logging

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.core.errors import CosError
from chiefofstate.core.snapshots import SnapshotPolicy
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import StateWrapper
from chiefofstate.ports.journal import Journal, SnapshotRow

log = logging.getLogger("chiefofstate.snapshots")


class Snapshotter:
    """A bounded queue of snapshots to save; a full queue drops the snapshot (recovery stays correct,
    it only reads one more row), and the next multiple of the frequency tries again."""

    def __init__(self, journal: Journal, policy: SnapshotPolicy, capacity: int = 1000) -> None:
        self._journal = journal
        self.policy = policy
        self._queue: asyncio.Queue[tuple[StateWrapper, int]] = asyncio.Queue(maxsize=capacity)
        self._worker: asyncio.Task[None] | None = None
        self.saved = 0
        self.dropped = 0

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="snapshotter")

    def offer(self, state: StateWrapper, created_ms: int) -> None:
        try:
            self._queue.put_nowait((state, created_ms))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning(
                "snapshot queue full; skipped snapshot of %s at %d",
                state.meta.entity_id,
                state.meta.revision_number,
            )

    async def drain(self) -> None:
        """Wait until everything offered so far is saved (used on shutdown and by tests)."""
        await self._queue.join()

    async def close(self) -> None:
        if self._worker is None:
            return
        await self.drain()
        await cancel_and_wait(self._worker)
        self._worker = None

    async def _run(self) -> None:
        while True:
            state, created_ms = await self._queue.get()
            try:
                await self._save(state, created_ms)
                self.saved += 1
            except CosError as error:
                log.warning(
                    "snapshot of %s at %d failed: %s", state.meta.entity_id, state.meta.revision_number, error
                )
            finally:
                self._queue.task_done()

    async def _save(self, state: StateWrapper, created_ms: int) -> None:
        entity_id = state.meta.entity_id
        sequence = state.meta.revision_number
        await self._journal.save_snapshot(
            SnapshotRow(entity_id, sequence, created_ms, state.SerializeToString())
        )
        bound = self.policy.deletion_bound(sequence)
        if bound <= 0:
            return
        # Events go before old snapshots, as upstream orders it (docs/contract.md §4.5).
        if self.policy.delete_events:
            await self._journal.delete_events_up_to(entity_id, bound)
        await self._journal.delete_snapshots_below(entity_id, bound)

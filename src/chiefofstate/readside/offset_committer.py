"""Stores the node's projection offsets in the background, all shards in one transaction.

A projection records its position after every event it finishes and moves on at once; this task writes
the positions that changed every COS_READ_SIDE_COMMIT_INTERVAL, or sooner when a projection has
COS_READ_SIDE_COMMIT_BATCH events unstored. Deliveries never wait for a write, and an embedded SQLite
file sees a few small transactions a second instead of one per event competing with the journal's
appends for its single write lock. At-least-once holds: a position is recorded only after its event was
handled, so a crash re-delivers at most the events handled since the last write.

In cluster mode (`fenced`) every position goes with the token of the projection's lease, and the store
writes it only while that token is current (docs/cluster.md, "Read sides"). A position of a projection
without a token here — its lease was lost or handed over — is dropped, never written; a position the
store refuses tells `on_fenced`, which stops the projection on this member.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.core.errors import CosError
from chiefofstate.ports.offsets import OffsetStore, ProjectionKey

log = logging.getLogger("chiefofstate.readside")


class OffsetCommitter:
    def __init__(
        self,
        store: OffsetStore,
        interval_s: float,
        *,
        fenced: bool = False,
        on_fenced: Callable[[ProjectionKey], None] | None = None,
    ) -> None:
        self._store = store
        self._interval_s = interval_s
        self.fenced = fenced
        self.on_fenced = on_fenced
        self._pending: dict[ProjectionKey, int] = {}
        self._tokens: dict[ProjectionKey, int] = {}
        # Held while writing, so an operator action that flushed a shard knows no older write of it is
        # still on its way to the database.
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.writes = 0
        self.refused = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="read-side offset committer")

    async def close(self) -> None:
        """Stop the task and write what is left (the projections are stopped first)."""
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self.flush()
        except CosError as error:
            log.warning(
                "read-side offsets not stored at shutdown (%s); those events will be delivered again", error
            )

    def lease(self, key: ProjectionKey, token: int) -> None:
        """The projection now runs here under this lease token (cluster mode)."""
        self._tokens[key] = token

    def token(self, key: ProjectionKey) -> int | None:
        """The lease token the projection runs under here (cluster mode); None on a lone node."""
        return self._tokens.get(key)

    def fenced_out(self, key: ProjectionKey) -> None:
        """A write of the projection other than an offset was refused under its token: stop it here."""
        self.refused += 1
        self.forget(key)
        if self.on_fenced is not None:
            self.on_fenced(key)

    def forget(self, key: ProjectionKey) -> None:
        """The projection no longer runs here: its unstored position is dropped (its next owner starts
        from the stored offset, so those events are delivered again, never skipped)."""
        self._tokens.pop(key, None)
        self._pending.pop(key, None)

    def record(self, key: ProjectionKey, offset: int) -> None:
        if self.fenced and key not in self._tokens:
            return  # a projection stopping after it lost its lease
        self._pending[key] = offset

    def hurry(self) -> None:
        """Write soon rather than at the next interval."""
        self._wake.set()

    async def flush(self, key: ProjectionKey | None = None) -> None:
        """Write now: every pending position, or only `key`'s. Raises what the store raises."""
        async with self._lock:
            if key is None:
                batch = dict(self._pending)
            else:
                batch = {key: self._pending[key]} if key in self._pending else {}
            if not batch:
                return
            tokens = {written: self._tokens[written] for written in batch if written in self._tokens}
            refused = await self._store.save_offsets(
                [(name, shard, offset) for (name, shard), offset in batch.items()],
                lease_tokens=tokens if self.fenced else None,
            )
            self.writes += 1
            for written, offset in batch.items():
                # A newer position recorded while we wrote stays pending.
                if self._pending.get(written) == offset:
                    del self._pending[written]
            for lost in refused:
                log.warning(
                    "the offset of read side %s shard %d was refused: another member holds its lease now",
                    *lost,
                )
                self.fenced_out(lost)

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except CosError as error:
                # Positions stay pending and are written on a later round; deliveries go on meanwhile.
                log.warning("read-side offsets could not be stored, will retry: %s", error)

"""Manager operations on a whole read side (every shard), all or nothing (docs/contract.md §6).

Pause, resume, restart and skip of a whole read side change one stored record per shard. Done shard by
shard, a failure part-way would leave the earlier shards changed. Instead:

1. every shard's projection is held, wherever it runs (a lone node: here; a cluster: on the member
   holding its lease, over the internal port): it stops delivering, stores what it finished and writes
   nothing more; a hold answers with the lease token the projection runs under;
2. the change for all shards is stored in one transaction, fenced by those tokens (`apply_change`): a
   projection that moved to another member meanwhile has a new token, and then nothing is stored;
3. every held projection is released and carries on from its stored record: the changed one, or the
   unchanged one when step 1 or 2 failed.

A hold that is never released (the member that asked went away) ends by itself after `hold_s`, again
from the stored record. The operation fails, with nothing changed, naming the shard that refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from chiefofstate.core.errors import Unavailable
from chiefofstate.ports.offsets import OffsetStore, ProjectionChange, ProjectionKey, ShardRecord
from chiefofstate.readside.projection import ShardReader

log = logging.getLogger("chiefofstate.readside")

Operation = Literal["pause", "resume", "restart", "skip"]


@dataclass(frozen=True, slots=True)
class ShardHold:
    """How to hold and release one shard's projection where it runs. `hold` returns the lease token it
    runs under (None on a lone node) and raises, naming the shard, when it cannot be held."""

    shard: int
    hold: Callable[[], Awaitable[int | None]]
    release: Callable[[], Awaitable[None]]


async def change_all_shards(
    operation: Operation,
    read_side_id: str,
    holds: Sequence[ShardHold],
    store: OffsetStore,
    journal: ShardReader,
    hold_s: float,
) -> list[tuple[int, int]]:
    """Apply `operation` to every shard in `holds` or to none; returns (shard, ordering skipped) for
    skip, as `ReadSideRuntime.skip` does. `hold_s`: how long the holds last unreleased."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.gather(*(shard.hold() for shard in holds), return_exceptions=True)
    held = [
        shard
        for shard, outcome in zip(holds, outcomes, strict=True)
        if not isinstance(outcome, BaseException)
    ]
    try:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        tokens = {
            (read_side_id, shard.shard): outcome
            for shard, outcome in zip(holds, outcomes, strict=True)
            if isinstance(outcome, int)
        }
        shards = tuple(shard.shard for shard in holds)
        change, skipped = await _change(operation, read_side_id, shards, store, journal)
        if loop.time() - started > hold_s / 2:
            # A hold may end by itself soon, its projection carrying on from the unchanged record:
            # storing the change now could leave that projection running on what it read before.
            raise Unavailable(
                f"read side {read_side_id!r}: holding its projections took more than {hold_s / 2:g}s; "
                "nothing was changed, retry in a few seconds"
            )
        refused = await store.apply_change(read_side_id, change, lease_tokens=tokens or None)
        if refused:
            raise _moved(read_side_id, refused)
        return skipped
    finally:
        released = await asyncio.gather(*(shard.release() for shard in held), return_exceptions=True)
        for shard, outcome in zip(held, released, strict=True):
            if isinstance(outcome, BaseException):
                # It releases itself once its hold time is up.
                log.warning(
                    "read side %s shard %d: release after %s failed (%s); it carries on by itself shortly",
                    read_side_id,
                    shard.shard,
                    operation,
                    outcome,
                )


async def _change(
    operation: Operation,
    read_side_id: str,
    shards: tuple[int, ...],
    store: OffsetStore,
    journal: ShardReader,
) -> tuple[ProjectionChange, list[tuple[int, int]]]:
    if operation == "pause":
        return ProjectionChange(shards, paused=True), []
    if operation == "resume":
        return ProjectionChange(shards, paused=False, clear_halts=True), []
    if operation == "restart":
        # the pause flag stays: upstream restarts a paused projection paused
        return ProjectionChange(shards, forget_offsets=True, clear_halts=True), []
    # skip: past the next unprocessed event of each shard (decision D6); the holds stored every offset
    records = await store.load(read_side_id)
    skipped: list[tuple[int, int]] = []
    for shard in shards:
        rows = await journal.read_shard(shard, records.get(shard, ShardRecord()).offset or 0, 1)
        if rows:
            skipped.append((shard, rows[0].ordering))
    return ProjectionChange(shards, clear_halts=True, offsets=dict(skipped)), skipped


def _moved(read_side_id: str, refused: set[ProjectionKey]) -> Unavailable:
    shards = ", ".join(str(shard) for _, shard in sorted(refused))
    return Unavailable(
        f"read side {read_side_id!r} shard {shards} moved to another member during the operation; "
        "nothing was changed, retry in a few seconds"
    )

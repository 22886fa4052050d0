"""The offset store port: where projections keep their progress, pause flags and halts.

Offsets and pause flags live in upstream's tables (docs/contract.md §4.2) with upstream's meaning, so a
database
taken over from upstream keeps its read-side progress: `read_side_offsets` (projection_name = read side
id, projection_key = shard as text, current_offset = the `ordering` of the last event handled, as text,
manifest 'SEQ', mergeable false) and `read_sides` (the paused flags). Halts (decision D7) are this
project's own table, `cos_read_side_halts` (migration 8).

Every method raises `StoreUnavailable` when the database cannot be reached and `Internal` when it
refuses the request. How far the journal has got in a shard is the journal's to say
(`Journal.shard_progress`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Halt:
    """A projection gave up on an event under STOP / REPLAY_STOP (decision D7)."""

    event_offset: int  # `ordering` of the event it stopped on
    reason: str
    halted_at_ms: int


@dataclass(frozen=True, slots=True)
class ShardRecord:
    """What is stored for one (read side, shard)."""

    offset: int | None = None
    paused: bool = False
    halt: Halt | None = None


# (read side id, shard): one projection
ProjectionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ProjectionChange:
    """An operator's change to some shards of one read side (a manager operation), stored in one
    transaction so that either every shard changes or none does."""

    shards: tuple[int, ...]
    paused: bool | None = None  # the pause flag to store (None: leave it)
    forget_offsets: bool = False  # restart: the shards replay from their oldest event
    clear_halts: bool = False
    # skip: the new offset of some of the shards (a shard left out keeps its offset)
    offsets: Mapping[int, int] = field(default_factory=dict)


class OffsetStore(Protocol):
    @property
    def description(self) -> str: ...

    async def load(self, read_side_id: str) -> dict[int, ShardRecord]:
        """Every shard with an offset, a pause flag or a halt stored for the read side."""
        ...

    async def save_offsets(
        self,
        offsets: Sequence[tuple[str, int, int]],
        *,
        lease_tokens: Mapping[ProjectionKey, int] | None = None,
    ) -> set[ProjectionKey]:
        """Store (read side id, shard, offset) entries in one transaction; an offset is the `ordering` of
        the last event the projection finished (handled or skipped).

        Fencing (cluster mode, docs/cluster.md): an entry whose projection has a token in `lease_tokens`
        is written only while that token is still the projection lease's, checked in the same
        transaction that writes it; the other entries of the batch are written all the same. Returns
        the projections whose entries were refused that way (empty without tokens). A store without
        projection leases (SQLite: a node there runs alone) refuses tokens with `Internal`."""
        ...

    async def skip_to(self, read_side_id: str, shard: int, offset: int) -> None:
        """Store the offset and forget the shard's halt, in one transaction."""
        ...

    async def reset(self, read_side_id: str, shard: int) -> None:
        """Forget the shard's offset and halt (a restart replays from the oldest event); the pause
        flag stays, as upstream restarts a paused projection paused."""
        ...

    async def set_paused(self, read_side_id: str, shards: Sequence[int], paused: bool) -> None: ...

    async def save_halt(
        self,
        read_side_id: str,
        shard: int,
        offset: int | None,
        halt: Halt,
        *,
        lease_token: int | None = None,
    ) -> bool:
        """Store the offset reached (when given) and the halt, in one transaction. With `lease_token`
        (cluster mode) nothing is stored unless it is still the projection lease's token, checked in
        that transaction; returns False then (True when stored). SQLite refuses a token (`Internal`)."""
        ...

    async def clear_halt(self, read_side_id: str, shard: int) -> None: ...

    async def apply_change(
        self,
        read_side_id: str,
        change: ProjectionChange,
        *,
        lease_tokens: Mapping[ProjectionKey, int] | None = None,
    ) -> set[ProjectionKey]:
        """Store `change` in one transaction. With `lease_tokens` (cluster mode) it is stored only if
        every token is still its projection lease's, checked in that transaction; otherwise nothing is
        stored and the projections whose tokens moved on are returned (empty when stored). SQLite
        refuses tokens (`Internal`)."""
        ...

    async def close(self) -> None: ...

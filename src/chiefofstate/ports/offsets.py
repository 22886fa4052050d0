"""The offset store port: where projections keep their progress, pause flags and halts.

Offsets and pause flags live in upstream's tables (SPEC.md §4.2) with upstream's meaning, so a database
taken over from upstream keeps its read-side progress: `read_side_offsets` (projection_name = read side
id, projection_key = shard as text, current_offset = the `ordering` of the last event handled, as text,
manifest 'SEQ', mergeable false) and `read_sides` (the paused flags). Halts (decision D7) are this
project's own table, `cos_read_side_halts` (migration 8).

Every method raises `StoreUnavailable` when the database cannot be reached and `Internal` when it
refuses the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from chiefofstate.core.errors import Internal
from chiefofstate.ports.journal import OFFSET_MANIFEST


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


@dataclass(frozen=True, slots=True)
class ShardProgress:
    """The journal side of a projection's progress, for operators."""

    head: int  # highest `ordering` tagged with the shard; 0 when it has none
    pending: int  # events of the shard after the offset, counted up to the limit asked for
    # write_timestamp (epoch ms) of the first event after the offset: how long the shard has waited;
    # None when there is none (or upstream stored none)
    oldest_pending_ms: int | None = None


class OffsetStore(Protocol):
    @property
    def description(self) -> str: ...

    async def load(self, read_side_id: str) -> dict[int, ShardRecord]:
        """Every shard with an offset, a pause flag or a halt stored for the read side."""
        ...

    async def save_offsets(self, offsets: Sequence[tuple[str, int, int]]) -> None:
        """Store (read side id, shard, offset) entries in one transaction; an offset is the `ordering` of
        the last event the projection finished (handled or skipped)."""
        ...

    async def skip_to(self, read_side_id: str, shard: int, offset: int) -> None:
        """Store the offset and forget the shard's halt, in one transaction."""
        ...

    async def reset(self, read_side_id: str, shard: int) -> None:
        """Forget the shard's offset and halt (a restart replays from the oldest event); the pause
        flag stays, as upstream restarts a paused projection paused."""
        ...

    async def set_paused(self, read_side_id: str, shards: Sequence[int], paused: bool) -> None: ...

    async def save_halt(self, read_side_id: str, shard: int, offset: int | None, halt: Halt) -> None:
        """Store the offset reached (when given) and the halt, in one transaction."""
        ...

    async def clear_halt(self, read_side_id: str, shard: int) -> None: ...

    async def shard_progress(self, shard: int, after_offset: int, count_limit: int) -> ShardProgress: ...

    async def close(self) -> None: ...


def parse_offset(read_side_id: str, key: str, value: str, manifest: str) -> tuple[int, int]:
    """(shard, offset) of one `read_side_offsets` row; rows this project cannot read are refused
    loudly rather than silently replayed from the start."""
    if manifest != OFFSET_MANIFEST:
        raise Internal(
            f"read side {read_side_id} shard {key}: stored offset has manifest {manifest!r}, "
            f"expected {OFFSET_MANIFEST!r}"
        )
    try:
        return int(key), int(value)
    except ValueError:
        raise Internal(
            f"read side {read_side_id}: stored offset row ({key!r}, {value!r}) is not a shard and an ordering"
        ) from None


def merge_records(
    offsets: dict[int, int], paused: dict[int, bool], halts: dict[int, Halt]
) -> dict[int, ShardRecord]:
    shards = set(offsets) | set(paused) | set(halts)
    return {
        shard: ShardRecord(offsets.get(shard), paused.get(shard, False), halts.get(shard))
        for shard in sorted(shards)
    }


def shard_key(key: str) -> int | None:
    """projection_key as a shard number; None for keys another tool may have written."""
    try:
        return int(key)
    except ValueError:
        return None

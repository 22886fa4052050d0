"""Reading upstream's read-side rows, shared by the SQL offset stores (docs/contract.md §4.2); `merge_records`
is how every offset store, the in-memory one included, answers `load`."""

from __future__ import annotations

from chiefofstate.core.errors import Internal
from chiefofstate.ports.journal import OFFSET_MANIFEST
from chiefofstate.ports.offsets import Halt, ShardRecord


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

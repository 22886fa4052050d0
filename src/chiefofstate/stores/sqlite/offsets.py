"""The offset store in the embedded SQLite file, beside the journal (decision D10).

Its own connection, so offset writes and status queries never queue behind the journal's appends on the
journal's connection; WAL lets both work on the file, and SQLite's busy timeout orders the writers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence

from chiefofstate.core.errors import Internal
from chiefofstate.ports.journal import OFFSET_MANIFEST
from chiefofstate.ports.offsets import Halt, ProjectionChange, ProjectionKey, ShardRecord
from chiefofstate.stores.offset_rows import merge_records, parse_offset, shard_key
from chiefofstate.stores.sqlite.datastore import DEFAULT_BUSY_TIMEOUT_MS, SqliteDatastore

_SAVE_OFFSET = f"""
INSERT INTO read_side_offsets
    (projection_name, projection_key, current_offset, manifest, mergeable, last_updated)
VALUES (?, ?, ?, '{OFFSET_MANIFEST}', FALSE, ?)
ON CONFLICT (projection_name, projection_key) DO UPDATE SET
    current_offset = excluded.current_offset, manifest = excluded.manifest,
    mergeable = excluded.mergeable, last_updated = excluded.last_updated
"""
_SET_PAUSED = """
INSERT INTO read_sides (projection_name, projection_key, paused, last_updated) VALUES (?, ?, ?, ?)
ON CONFLICT (projection_name, projection_key) DO UPDATE SET
    paused = excluded.paused, last_updated = excluded.last_updated
"""
_SAVE_HALT = """
INSERT INTO cos_read_side_halts (projection_name, projection_key, event_offset, reason, halted_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (projection_name, projection_key) DO UPDATE SET
    event_offset = excluded.event_offset, reason = excluded.reason, halted_at = excluded.halted_at
"""
_DELETE_OFFSET = "DELETE FROM read_side_offsets WHERE projection_name = ? AND projection_key = ?"
_DELETE_HALT = "DELETE FROM cos_read_side_halts WHERE projection_name = ? AND projection_key = ?"
_LOAD_OFFSETS = (
    "SELECT projection_key, current_offset, manifest FROM read_side_offsets WHERE projection_name = ?"
)
_LOAD_PAUSED = "SELECT projection_key, paused FROM read_sides WHERE projection_name = ?"
_LOAD_HALTS = """
SELECT projection_key, event_offset, reason, halted_at FROM cos_read_side_halts WHERE projection_name = ?
"""


class SqliteOffsetStore:
    """`OffsetStore` in an SQLite file already migrated by the journal (schema version 8 or later)."""

    def __init__(self, datastore: SqliteDatastore, clock: Callable[[], float] = time.time) -> None:
        self._datastore = datastore
        self._clock = clock

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        clock: Callable[[], float] = time.time,
    ) -> SqliteOffsetStore:
        datastore = await SqliteDatastore.open(path, role="offset store", busy_timeout_ms=busy_timeout_ms)
        return cls(datastore, clock)

    @property
    def description(self) -> str:
        return self._datastore.description

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def load(self, read_side_id: str) -> dict[int, ShardRecord]:
        async with self._datastore.session("read offsets") as connection:
            offset_rows = await connection.execute_fetchall(_LOAD_OFFSETS, (read_side_id,))
            paused_rows = await connection.execute_fetchall(_LOAD_PAUSED, (read_side_id,))
            halt_rows = await connection.execute_fetchall(_LOAD_HALTS, (read_side_id,))
        offsets = dict(
            parse_offset(read_side_id, str(key), str(value), str(manifest))
            for key, value, manifest in offset_rows
        )
        paused = {
            shard: bool(flag) for key, flag in paused_rows if (shard := shard_key(str(key))) is not None
        }
        halts = {
            shard: Halt(int(offset), str(reason), int(at))
            for key, offset, reason, at in halt_rows
            if (shard := shard_key(str(key))) is not None
        }
        return merge_records(offsets, paused, halts)

    async def save_offsets(
        self,
        offsets: Sequence[tuple[str, int, int]],
        *,
        lease_tokens: Mapping[ProjectionKey, int] | None = None,
    ) -> set[ProjectionKey]:
        if lease_tokens:
            raise Internal("an SQLite node runs alone: its offset commits carry no projection lease token")
        now = self._now_ms()
        async with self._datastore.transaction("store offsets") as connection:
            await connection.executemany(
                _SAVE_OFFSET,
                [(read_side_id, str(shard), str(offset), now) for read_side_id, shard, offset in offsets],
            )
        return set()

    async def skip_to(self, read_side_id: str, shard: int, offset: int) -> None:
        async with self._datastore.transaction("store an offset") as connection:
            await connection.execute(_SAVE_OFFSET, (read_side_id, str(shard), str(offset), self._now_ms()))
            await connection.execute(_DELETE_HALT, (read_side_id, str(shard)))

    async def reset(self, read_side_id: str, shard: int) -> None:
        async with self._datastore.transaction("delete an offset") as connection:
            await connection.execute(_DELETE_OFFSET, (read_side_id, str(shard)))
            await connection.execute(_DELETE_HALT, (read_side_id, str(shard)))

    async def set_paused(self, read_side_id: str, shards: Sequence[int], paused: bool) -> None:
        now = self._now_ms()
        async with self._datastore.transaction("store pause flags") as connection:
            await connection.executemany(
                _SET_PAUSED, [(read_side_id, str(shard), paused, now) for shard in shards]
            )

    async def save_halt(
        self,
        read_side_id: str,
        shard: int,
        offset: int | None,
        halt: Halt,
        *,
        lease_token: int | None = None,
    ) -> bool:
        if lease_token is not None:
            raise Internal("an SQLite node runs alone: its halts carry no projection lease token")
        async with self._datastore.transaction("store a halt") as connection:
            if offset is not None:
                await connection.execute(
                    _SAVE_OFFSET, (read_side_id, str(shard), str(offset), self._now_ms())
                )
            await connection.execute(
                _SAVE_HALT, (read_side_id, str(shard), halt.event_offset, halt.reason, halt.halted_at_ms)
            )
        return True

    async def clear_halt(self, read_side_id: str, shard: int) -> None:
        async with self._datastore.session("clear a halt") as connection:
            await connection.execute(_DELETE_HALT, (read_side_id, str(shard)))

    async def apply_change(
        self,
        read_side_id: str,
        change: ProjectionChange,
        *,
        lease_tokens: Mapping[ProjectionKey, int] | None = None,
    ) -> set[ProjectionKey]:
        if lease_tokens:
            raise Internal("an SQLite node runs alone: its manager operations carry no lease token")
        now = self._now_ms()
        keys = [(read_side_id, str(shard)) for shard in change.shards]
        async with self._datastore.transaction("store a manager operation") as connection:
            if change.paused is not None:
                await connection.executemany(_SET_PAUSED, [(*key, change.paused, now) for key in keys])
            if change.forget_offsets:
                await connection.executemany(_DELETE_OFFSET, keys)
            if change.clear_halts:
                await connection.executemany(_DELETE_HALT, keys)
            await connection.executemany(
                _SAVE_OFFSET,
                [(read_side_id, str(shard), str(offset), now) for shard, offset in change.offsets.items()],
            )
        return set()

    async def close(self) -> None:
        await self._datastore.close()

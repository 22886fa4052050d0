"""The offset store on PostgreSQL, with its own pool as upstream keeps a separate read-side pool
(docs/contract.md §4.1): slow read handlers or a status query never take a connection the journal needs."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from chiefofstate.ports.journal import OFFSET_MANIFEST
from chiefofstate.ports.offsets import Halt, ProjectionChange, ProjectionKey, ShardRecord
from chiefofstate.stores.offset_rows import merge_records, parse_offset, shard_key
from chiefofstate.stores.postgres.datastore import ConnectionSettings, PostgresDatastore

_SAVE_OFFSET = f"""
INSERT INTO read_side_offsets
    (projection_name, projection_key, current_offset, manifest, mergeable, last_updated)
VALUES ($1, $2, $3, '{OFFSET_MANIFEST}', FALSE, $4)
ON CONFLICT (projection_name, projection_key) DO UPDATE SET
    current_offset = EXCLUDED.current_offset, manifest = EXCLUDED.manifest,
    mergeable = EXCLUDED.mergeable, last_updated = EXCLUDED.last_updated
"""
# One statement for the whole batch: the committer writes every changed shard of the node at once.
_SAVE_OFFSETS = f"""
INSERT INTO read_side_offsets
    (projection_name, projection_key, current_offset, manifest, mergeable, last_updated)
SELECT name, key, value, '{OFFSET_MANIFEST}', FALSE, $4
FROM unnest($1::text[], $2::text[], $3::text[]) AS batch(name, key, value)
ON CONFLICT (projection_name, projection_key) DO UPDATE SET
    current_offset = EXCLUDED.current_offset, manifest = EXCLUDED.manifest,
    mergeable = EXCLUDED.mergeable, last_updated = EXCLUDED.last_updated
"""
# The projection leases of a fenced commit, share-locked in the order the cluster store locks them:
# an acquisition (which raises the token) waits for the commit, and a commit that comes after an
# acquisition sees the new token and is refused.
_LOCK_LEASES = """
SELECT p.read_side_id, p.shard, p.lease_token FROM cos_projection_leases AS p
JOIN unnest($1::text[], $2::int[]) AS fenced(read_side_id, shard)
    ON p.read_side_id = fenced.read_side_id AND p.shard = fenced.shard
ORDER BY p.read_side_id, p.shard
FOR SHARE OF p
"""
_SET_PAUSED = """
INSERT INTO read_sides (projection_name, projection_key, paused, last_updated)
SELECT $1, key, $3, $4 FROM unnest($2::text[]) AS key
ON CONFLICT (projection_name, projection_key) DO UPDATE SET
    paused = EXCLUDED.paused, last_updated = EXCLUDED.last_updated
"""
_SAVE_HALT = """
INSERT INTO cos_read_side_halts (projection_name, projection_key, event_offset, reason, halted_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (projection_name, projection_key) DO UPDATE SET
    event_offset = EXCLUDED.event_offset, reason = EXCLUDED.reason, halted_at = EXCLUDED.halted_at
"""
_DELETE_OFFSET = "DELETE FROM read_side_offsets WHERE projection_name = $1 AND projection_key = $2"
_DELETE_HALT = "DELETE FROM cos_read_side_halts WHERE projection_name = $1 AND projection_key = $2"
_DELETE_OFFSETS = (
    "DELETE FROM read_side_offsets WHERE projection_name = $1 AND projection_key = ANY($2::text[])"
)
_DELETE_HALTS = (
    "DELETE FROM cos_read_side_halts WHERE projection_name = $1 AND projection_key = ANY($2::text[])"
)
_LOAD_OFFSETS = (
    "SELECT projection_key, current_offset, manifest FROM read_side_offsets WHERE projection_name = $1"
)
_LOAD_PAUSED = "SELECT projection_key, paused FROM read_sides WHERE projection_name = $1"
_LOAD_HALTS = (
    "SELECT projection_key, event_offset, reason, halted_at FROM cos_read_side_halts "
    "WHERE projection_name = $1"
)


class PostgresOffsetStore:
    """`OffsetStore` on PostgreSQL; the schema is migrated by the journal (version 8 or later)."""

    def __init__(self, datastore: PostgresDatastore, clock: Callable[[], float] = time.time) -> None:
        self._datastore = datastore
        self._clock = clock

    @classmethod
    async def open(
        cls, settings: ConnectionSettings, *, clock: Callable[[], float] = time.time
    ) -> PostgresOffsetStore:
        datastore = await PostgresDatastore.open(settings, application_name="chiefofstate-read-sides")
        return cls(datastore, clock)

    @property
    def description(self) -> str:
        return self._datastore.description

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def load(self, read_side_id: str) -> dict[int, ShardRecord]:
        async with self._datastore.connection("read offsets") as connection:
            offset_rows = await connection.fetch(_LOAD_OFFSETS, read_side_id)
            paused_rows = await connection.fetch(_LOAD_PAUSED, read_side_id)
            halt_rows = await connection.fetch(_LOAD_HALTS, read_side_id)
        offsets = dict(
            parse_offset(read_side_id, row["projection_key"], row["current_offset"], row["manifest"])
            for row in offset_rows
        )
        paused = {
            shard: bool(row["paused"])
            for row in paused_rows
            if (shard := shard_key(row["projection_key"])) is not None
        }
        halts = {
            shard: Halt(int(row["event_offset"]), row["reason"], int(row["halted_at"]))
            for row in halt_rows
            if (shard := shard_key(row["projection_key"])) is not None
        }
        return merge_records(offsets, paused, halts)

    async def save_offsets(
        self,
        offsets: Sequence[tuple[str, int, int]],
        *,
        lease_tokens: Mapping[ProjectionKey, int] | None = None,
    ) -> set[ProjectionKey]:
        now = self._now_ms()
        fenced = sorted(lease_tokens.items()) if lease_tokens else []
        async with self._datastore.connection("store offsets") as connection, connection.transaction():
            refused: set[ProjectionKey] = set()
            if fenced:
                rows = await connection.fetch(
                    _LOCK_LEASES, [key[0] for key, _ in fenced], [key[1] for key, _ in fenced]
                )
                current = {(row["read_side_id"], int(row["shard"])): int(row["lease_token"]) for row in rows}
                refused = {key for key, token in fenced if current.get(key) != token}
            kept = [entry for entry in offsets if (entry[0], entry[1]) not in refused]
            if kept:
                await connection.execute(
                    _SAVE_OFFSETS,
                    [read_side_id for read_side_id, _, _ in kept],
                    [str(shard) for _, shard, _ in kept],
                    [str(offset) for _, _, offset in kept],
                    now,
                )
        return {(read_side_id, shard) for read_side_id, shard, _ in offsets} & refused

    async def skip_to(self, read_side_id: str, shard: int, offset: int) -> None:
        async with self._datastore.connection("store an offset") as connection, connection.transaction():
            await connection.execute(_SAVE_OFFSET, read_side_id, str(shard), str(offset), self._now_ms())
            await connection.execute(_DELETE_HALT, read_side_id, str(shard))

    async def reset(self, read_side_id: str, shard: int) -> None:
        async with self._datastore.connection("delete an offset") as connection, connection.transaction():
            await connection.execute(_DELETE_OFFSET, read_side_id, str(shard))
            await connection.execute(_DELETE_HALT, read_side_id, str(shard))

    async def set_paused(self, read_side_id: str, shards: Sequence[int], paused: bool) -> None:
        async with self._datastore.connection("store pause flags") as connection:
            await connection.execute(
                _SET_PAUSED, read_side_id, [str(shard) for shard in shards], paused, self._now_ms()
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
        async with self._datastore.connection("store a halt") as connection, connection.transaction():
            if lease_token is not None:
                rows = await connection.fetch(_LOCK_LEASES, [read_side_id], [shard])
                if not rows or int(rows[0]["lease_token"]) != lease_token:
                    return False
            if offset is not None:
                await connection.execute(_SAVE_OFFSET, read_side_id, str(shard), str(offset), self._now_ms())
            await connection.execute(
                _SAVE_HALT, read_side_id, str(shard), halt.event_offset, halt.reason, halt.halted_at_ms
            )
        return True

    async def clear_halt(self, read_side_id: str, shard: int) -> None:
        async with self._datastore.connection("clear a halt") as connection:
            await connection.execute(_DELETE_HALT, read_side_id, str(shard))

    async def apply_change(
        self,
        read_side_id: str,
        change: ProjectionChange,
        *,
        lease_tokens: Mapping[ProjectionKey, int] | None = None,
    ) -> set[ProjectionKey]:
        now = self._now_ms()
        keys = [str(shard) for shard in change.shards]
        fenced = sorted(lease_tokens.items()) if lease_tokens else []
        async with (
            self._datastore.connection("store a manager operation") as connection,
            connection.transaction(),
        ):
            if fenced:
                rows = await connection.fetch(
                    _LOCK_LEASES, [key[0] for key, _ in fenced], [key[1] for key, _ in fenced]
                )
                current = {(row["read_side_id"], int(row["shard"])): int(row["lease_token"]) for row in rows}
                refused = {key for key, token in fenced if current.get(key) != token}
                if refused:
                    return refused  # nothing was written: the commit only frees the locks
            if change.paused is not None:
                await connection.execute(_SET_PAUSED, read_side_id, keys, change.paused, now)
            if change.forget_offsets:
                await connection.execute(_DELETE_OFFSETS, read_side_id, keys)
            if change.clear_halts:
                await connection.execute(_DELETE_HALTS, read_side_id, keys)
            if change.offsets:
                moved = sorted(change.offsets.items())
                await connection.execute(
                    _SAVE_OFFSETS,
                    [read_side_id] * len(moved),
                    [str(shard) for shard, _ in moved],
                    [str(offset) for _, offset in moved],
                    now,
                )
        return set()

    async def close(self) -> None:
        await self._datastore.close()

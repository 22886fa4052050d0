"""The offset store on PostgreSQL, with its own pool as upstream keeps a separate read-side pool
(SPEC.md §4.1): slow read handlers or a status query never take a connection the journal needs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import asyncpg

from chiefofstate.core.errors import Internal, StoreUnavailable
from chiefofstate.ports.journal import OFFSET_MANIFEST
from chiefofstate.ports.offsets import (
    Halt,
    ShardProgress,
    ShardRecord,
    merge_records,
    parse_offset,
    shard_key,
)
from chiefofstate.stores.postgres.journal import PostgresSettings, quote_identifier

# Connection problems, lost authorisation, a missing database, serialization failures, lack of
# resources and shutdowns mean "try again later"; anything else is a refusal.
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "28", "3D", "40", "53", "57", "58"})
_CLOSE_TIMEOUT_S = 10.0

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
_LOAD_OFFSETS = (
    "SELECT projection_key, current_offset, manifest FROM read_side_offsets WHERE projection_name = $1"
)
_LOAD_PAUSED = "SELECT projection_key, paused FROM read_sides WHERE projection_name = $1"
_LOAD_HALTS = (
    "SELECT projection_key, event_offset, reason, halted_at FROM cos_read_side_halts "
    "WHERE projection_name = $1"
)
_SHARD_PROGRESS = """
SELECT (SELECT COALESCE(max(event_id), 0) FROM event_tag WHERE tag = $1) AS head,
       (SELECT count(*) FROM (
            SELECT 1 FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id
            WHERE t.tag = $1 AND t.event_id > $2 AND NOT j.deleted LIMIT $3) AS after_offset) AS pending,
       (SELECT j.write_timestamp FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id
            WHERE t.tag = $1 AND t.event_id > $2 AND NOT j.deleted
            ORDER BY t.event_id LIMIT 1) AS oldest_pending
"""


class PostgresOffsetStore:
    """`OffsetStore` on PostgreSQL; the schema is migrated by the journal (version 8 or later)."""

    def __init__(self, pool: Any, settings: PostgresSettings, clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._settings = settings
        self._clock = clock

    @classmethod
    async def open(
        cls, settings: PostgresSettings, *, clock: Callable[[], float] = time.time
    ) -> PostgresOffsetStore:
        try:
            pool = await asyncpg.create_pool(
                host=settings.host,
                port=settings.port,
                database=settings.database,
                user=settings.user,
                password=settings.password,
                min_size=min(1, settings.pool_max_size),
                max_size=settings.pool_max_size,
                max_inactive_connection_lifetime=settings.idle_timeout_ms / 1000,
                timeout=settings.connect_timeout_s,
                command_timeout=settings.statement_timeout_s,
                server_settings={
                    "search_path": quote_identifier(settings.schema),
                    "application_name": "chiefofstate-read-sides",
                },
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {settings.address}: {exc}") from exc
        return cls(pool, settings, clock)

    @property
    def description(self) -> str:
        return f"PostgreSQL {self._settings.address} (schema {self._settings.schema})"

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        address = self._settings.address
        try:
            yield
        except asyncpg.PostgresError as exc:
            if str(exc.sqlstate)[:2] in _UNAVAILABLE_SQLSTATE_CLASSES:
                raise StoreUnavailable(f"PostgreSQL at {address} could not {action}: {exc}") from exc
            raise Internal(f"PostgreSQL refused to {action}: {exc}") from exc
        except asyncpg.InterfaceError as exc:
            raise StoreUnavailable(f"PostgreSQL at {address} is unavailable ({action}): {exc}") from exc
        except OSError as exc:  # TimeoutError included
            raise StoreUnavailable(f"PostgreSQL at {address} is unavailable ({action}): {exc!r}") from exc

    @contextlib.asynccontextmanager
    async def _connection(self, action: str) -> AsyncIterator[Any]:
        with self._translated(action):
            async with self._pool.acquire(timeout=self._settings.acquire_timeout_s) as connection:
                yield connection

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def load(self, read_side_id: str) -> dict[int, ShardRecord]:
        async with self._connection("read offsets") as connection:
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

    async def save_offsets(self, offsets: Sequence[tuple[str, int, int]]) -> None:
        now = self._now_ms()
        async with self._connection("store offsets") as connection:
            await connection.execute(
                _SAVE_OFFSETS,
                [read_side_id for read_side_id, _, _ in offsets],
                [str(shard) for _, shard, _ in offsets],
                [str(offset) for _, _, offset in offsets],
                now,
            )

    async def skip_to(self, read_side_id: str, shard: int, offset: int) -> None:
        async with self._connection("store an offset") as connection, connection.transaction():
            await connection.execute(_SAVE_OFFSET, read_side_id, str(shard), str(offset), self._now_ms())
            await connection.execute(_DELETE_HALT, read_side_id, str(shard))

    async def reset(self, read_side_id: str, shard: int) -> None:
        async with self._connection("delete an offset") as connection, connection.transaction():
            await connection.execute(_DELETE_OFFSET, read_side_id, str(shard))
            await connection.execute(_DELETE_HALT, read_side_id, str(shard))

    async def set_paused(self, read_side_id: str, shards: Sequence[int], paused: bool) -> None:
        async with self._connection("store pause flags") as connection:
            await connection.execute(
                _SET_PAUSED, read_side_id, [str(shard) for shard in shards], paused, self._now_ms()
            )

    async def save_halt(self, read_side_id: str, shard: int, offset: int | None, halt: Halt) -> None:
        async with self._connection("store a halt") as connection, connection.transaction():
            if offset is not None:
                await connection.execute(_SAVE_OFFSET, read_side_id, str(shard), str(offset), self._now_ms())
            await connection.execute(
                _SAVE_HALT, read_side_id, str(shard), halt.event_offset, halt.reason, halt.halted_at_ms
            )

    async def clear_halt(self, read_side_id: str, shard: int) -> None:
        async with self._connection("clear a halt") as connection:
            await connection.execute(_DELETE_HALT, read_side_id, str(shard))

    async def shard_progress(self, shard: int, after_offset: int, count_limit: int) -> ShardProgress:
        async with self._connection("read the journal's progress") as connection:
            row = await connection.fetchrow(_SHARD_PROGRESS, str(shard), after_offset, count_limit)
        oldest = row["oldest_pending"]
        return ShardProgress(int(row["head"]), int(row["pending"]), None if oldest is None else int(oldest))

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            self._pool.terminate()

"""The offset store in the embedded SQLite file, beside the journal (decision D10).

Its own connection, so offset writes and status queries never queue behind the journal's appends on the
journal's connection; WAL lets both work on the file, and SQLite's busy timeout orders the writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import aiosqlite

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
_SHARD_PROGRESS = """
SELECT (SELECT COALESCE(max(event_id), 0) FROM event_tag WHERE tag = ?1),
       (SELECT count(*) FROM (
            SELECT 1 FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id
            WHERE t.tag = ?1 AND t.event_id > ?2 AND NOT j.deleted LIMIT ?3)),
       (SELECT j.write_timestamp FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id
            WHERE t.tag = ?1 AND t.event_id > ?2 AND NOT j.deleted ORDER BY t.event_id LIMIT 1)
"""


class SqliteOffsetStore:
    """`OffsetStore` in an SQLite file already migrated by the journal (schema version 8 or later)."""

    def __init__(
        self, connection: aiosqlite.Connection, path: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._connection = connection
        self._path = path
        self._clock = clock
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = 5000,
        clock: Callable[[], float] = time.time,
    ) -> SqliteOffsetStore:
        name = os.fspath(path)
        try:
            connection = await aiosqlite.connect(name, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open the SQLite offset store {name}: {exc}") from exc
        try:
            await connection.execute("PRAGMA journal_mode = WAL")
            await connection.execute("PRAGMA synchronous = FULL")
            await connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        except (sqlite3.Error, OSError) as exc:
            await connection.close()
            raise StoreUnavailable(f"cannot use the SQLite offset store {name}: {exc}") from exc
        return cls(connection, name, clock)

    @property
    def description(self) -> str:
        return f"SQLite {self._path}"

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the SQLite offset store {self._path} could not {action}: {exc}") from exc
        except sqlite3.Error as exc:
            raise Internal(f"the SQLite offset store refused to {action}: {exc}") from exc
        except OSError as exc:
            raise StoreUnavailable(f"the SQLite offset store {self._path} could not {action}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _session(self, action: str) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            if self._closed:
                raise StoreUnavailable(f"the SQLite offset store {self._path} is closed")
            with self._translated(action):
                yield self._connection

    @contextlib.asynccontextmanager
    async def _transaction(self, action: str) -> AsyncIterator[aiosqlite.Connection]:
        async with self._session(action) as connection:
            try:
                await connection.execute("BEGIN IMMEDIATE")
                yield connection
                await connection.execute("COMMIT")
            except BaseException:
                # Queued after whatever the body sent, so it runs even when we were cancelled.
                with contextlib.suppress(sqlite3.Error):
                    await connection.execute("ROLLBACK")
                raise

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def load(self, read_side_id: str) -> dict[int, ShardRecord]:
        async with self._session("read offsets") as connection:
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

    async def save_offsets(self, offsets: Sequence[tuple[str, int, int]]) -> None:
        now = self._now_ms()
        async with self._transaction("store offsets") as connection:
            await connection.executemany(
                _SAVE_OFFSET,
                [(read_side_id, str(shard), str(offset), now) for read_side_id, shard, offset in offsets],
            )

    async def skip_to(self, read_side_id: str, shard: int, offset: int) -> None:
        async with self._transaction("store an offset") as connection:
            await connection.execute(_SAVE_OFFSET, (read_side_id, str(shard), str(offset), self._now_ms()))
            await connection.execute(_DELETE_HALT, (read_side_id, str(shard)))

    async def reset(self, read_side_id: str, shard: int) -> None:
        async with self._transaction("delete an offset") as connection:
            await connection.execute(_DELETE_OFFSET, (read_side_id, str(shard)))
            await connection.execute(_DELETE_HALT, (read_side_id, str(shard)))

    async def set_paused(self, read_side_id: str, shards: Sequence[int], paused: bool) -> None:
        now = self._now_ms()
        async with self._transaction("store pause flags") as connection:
            await connection.executemany(
                _SET_PAUSED, [(read_side_id, str(shard), paused, now) for shard in shards]
            )

    async def save_halt(self, read_side_id: str, shard: int, offset: int | None, halt: Halt) -> None:
        async with self._transaction("store a halt") as connection:
            if offset is not None:
                await connection.execute(
                    _SAVE_OFFSET, (read_side_id, str(shard), str(offset), self._now_ms())
                )
            await connection.execute(
                _SAVE_HALT, (read_side_id, str(shard), halt.event_offset, halt.reason, halt.halted_at_ms)
            )

    async def clear_halt(self, read_side_id: str, shard: int) -> None:
        async with self._session("clear a halt") as connection:
            await connection.execute(_DELETE_HALT, (read_side_id, str(shard)))

    async def shard_progress(self, shard: int, after_offset: int, count_limit: int) -> ShardProgress:
        async with self._session("read the journal's progress") as connection:
            rows = list(
                await connection.execute_fetchall(_SHARD_PROGRESS, (str(shard), after_offset, count_limit))
            )
        head, pending, oldest = rows[0]
        return ShardProgress(int(head), int(pending), None if oldest is None else int(oldest))

    async def close(self) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            with self._translated("close"):
                await self._connection.close()

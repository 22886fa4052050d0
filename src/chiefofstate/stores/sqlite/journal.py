"""The embedded SQLite journal (decision D10): upstream's tables in one file, for a node that runs alone.

One connection, used by one operation at a time (an asyncio lock), so no operation ever sees another's
uncommitted rows. SQLite serialises writers, so `ordering` grows in commit order by construction (D3).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiosqlite

from chiefofstate.core.errors import StoreFailed
from chiefofstate.ports.journal import (
    EVENT_MANIFEST,
    SERIALIZER_ID,
    SNAPSHOT_MANIFEST,
    AppendRequest,
    JournalRow,
    ShardProgress,
    SnapshotRow,
    StoredState,
)
from chiefofstate.stores.migrations import (
    MigrationScripts,
    load_scripts,
    run_migrations,
    split_statements,
)
from chiefofstate.stores.rows import (
    ADAPTER_MANIFEST,
    append_outcome,
    check_snapshot_serializer,
    event_row,
    has_repeated_entity,
    newest_state,
    newest_states,
    sequence_conflict,
    unstorable_id,
)
from chiefofstate.stores.sqlite.datastore import (
    DEFAULT_BUSY_TIMEOUT_MS,
    SqliteDatastore,
    is_unavailable,
    write_transaction,
)

_TOUCH_SHARDS = """
INSERT INTO cos_shard_locks (shard) SELECT value FROM json_each(?) WHERE true ON CONFLICT (shard) DO NOTHING
"""
_ENSURE_SHARD = "INSERT INTO cos_shard_locks (shard) VALUES (?) ON CONFLICT (shard) DO NOTHING"
_LEASE_TOKENS = (
    "SELECT shard, lease_token FROM cos_shard_locks WHERE shard IN (SELECT value FROM json_each(?))"
)
_CURRENT_REVISIONS = """
SELECT r.value,
       COALESCE((SELECT max(j.sequence_number) FROM event_journal j WHERE j.persistence_id = r.value), 0)
FROM json_each(?) AS r
"""
_INSERT_EVENT = f"""
INSERT INTO event_journal (persistence_id, sequence_number, deleted, writer, write_timestamp,
                           adapter_manifest, event_ser_id, event_ser_manifest, event_payload)
VALUES (?, ?, FALSE, ?, ?, '{ADAPTER_MANIFEST}', {SERIALIZER_ID}, '{EVENT_MANIFEST}', ?)
"""
_TAG_EVENTS = """
INSERT INTO event_tag (event_id, tag)
SELECT ordering, ? FROM event_journal WHERE persistence_id = ? AND sequence_number > ?
"""
_EVENT_COLUMNS = (
    "j.ordering, j.persistence_id, j.sequence_number, {tag}, j.deleted, j.write_timestamp, "
    "j.event_ser_id, j.event_ser_manifest, j.event_payload"
)
_READ_EVENTS = f"""
SELECT {_EVENT_COLUMNS.format(tag="(SELECT min(t.tag) FROM event_tag t WHERE t.event_id = j.ordering)")}
FROM event_journal j
WHERE j.persistence_id = ? AND j.sequence_number > ?
ORDER BY j.sequence_number
LIMIT ?
"""
# Deleted rows are left out as upstream's read journal does (see postgres.py).
_READ_SHARD = f"""
SELECT {_EVENT_COLUMNS.format(tag="t.tag")}
FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id
WHERE t.tag = ? AND t.event_id > ? AND NOT j.deleted
ORDER BY t.event_id
LIMIT ?
"""
_LATEST_STATE = """
SELECT * FROM (
    SELECT 'event', sequence_number, event_ser_id, event_ser_manifest, event_payload
    FROM event_journal WHERE persistence_id = ?1 ORDER BY sequence_number DESC LIMIT 1
)
UNION ALL
SELECT * FROM (
    SELECT 'snapshot', sequence_number, snapshot_ser_id, snapshot_ser_manifest, snapshot_payload
    FROM state_snapshot WHERE persistence_id = ?1 ORDER BY sequence_number DESC LIMIT 1
)
"""
_SHARD_PROGRESS = """
SELECT (SELECT COALESCE(max(event_id), 0) FROM event_tag WHERE tag = ?1),
       (SELECT count(*) FROM (
            SELECT 1 FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id
            WHERE t.tag = ?1 AND t.event_id > ?2 AND NOT j.deleted LIMIT ?3)),
       (SELECT j.write_timestamp FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id
            WHERE t.tag = ?1 AND t.event_id > ?2 AND NOT j.deleted ORDER BY t.event_id LIMIT 1)
"""
_SAVE_SNAPSHOT = f"""
INSERT INTO state_snapshot (persistence_id, sequence_number, created, snapshot_ser_id, snapshot_ser_manifest,
                            snapshot_payload)
VALUES (?, ?, ?, {SERIALIZER_ID}, '{SNAPSHOT_MANIFEST}', ?)
ON CONFLICT (persistence_id, sequence_number) DO UPDATE SET
    created = excluded.created, snapshot_ser_id = excluded.snapshot_ser_id,
    snapshot_ser_manifest = excluded.snapshot_ser_manifest, snapshot_payload = excluded.snapshot_payload,
    meta_ser_id = NULL, meta_ser_manifest = NULL, meta_payload = NULL
"""
_LIST_SNAPSHOTS = """
SELECT sequence_number, created, snapshot_ser_id, snapshot_ser_manifest, snapshot_payload
FROM state_snapshot WHERE persistence_id = ? ORDER BY sequence_number
"""
_DELETE_SNAPSHOTS_BELOW = "DELETE FROM state_snapshot WHERE persistence_id = ? AND sequence_number < ?"
# Upstream's deletion: mark, then remove every marked row but the highest (see postgres.py).
_MARK_DELETED = """
UPDATE event_journal SET deleted = TRUE WHERE persistence_id = ? AND sequence_number <= ? AND NOT deleted
"""
_REMOVE_MARKED = """
DELETE FROM event_journal
WHERE persistence_id = ?1
  AND sequence_number < (SELECT max(sequence_number) FROM event_journal WHERE persistence_id = ?1 AND deleted)
"""


def _event_rows(rows: Iterable[Any]) -> list[JournalRow]:
    return [event_row(*row) for row in rows]


class _MigrationSession:
    """The migration runner's view of the SQLite connection."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    def exclusive_transaction(self) -> contextlib.AbstractAsyncContextManager[None]:
        # BEGIN IMMEDIATE also keeps out another process migrating the same file.
        return write_transaction(self._connection)

    async def prepare(self, scripts: MigrationScripts) -> None:
        await self.run_script(scripts.bootstrap)

    async def run_script(self, script: str) -> None:
        # executescript() would commit the open transaction first; statements go one by one instead.
        for statement in split_statements(script):
            await self._connection.execute(statement)

    async def current_version(self) -> int | None:
        rows = list(await self._connection.execute_fetchall("SELECT max(version_number) FROM cos_migrations"))
        return None if rows[0][0] is None else int(rows[0][0])

    async def record_version(self, version: int, upgraded_at_ms: int, is_snapshot: bool) -> None:
        await self._connection.execute(
            "INSERT INTO cos_migrations (version_number, upgraded_at, is_snapshot) VALUES (?, ?, ?)",
            (version, upgraded_at_ms, is_snapshot),
        )


class SqliteJournal:
    """`Journal` in an SQLite file, on a datastore of its own (its connection). Build it with `await
    SqliteJournal.open(path)`."""

    def __init__(
        self,
        datastore: SqliteDatastore,
        *,
        shard_reader: SqliteDatastore | None = None,
        migrations_initial_version: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._datastore = datastore
        # Projections read shards on a connection of their own: on the journal's connection each read
        # would wait for the group commit in progress (one operation at a time, fsync included), which
        # made a read side's lag follow the write load. WAL lets the reader see every committed append
        # while the writer works, and a projection is only woken after the commit it reads.
        self._shard_reader = shard_reader or datastore
        self._initial_version = migrations_initial_version
        self._clock = clock

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        migrations_initial_version: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SqliteJournal:
        """Open (or create) the file; raises StoreUnavailable when it cannot be opened.

        `migrations_initial_version` is COS_MIGRATIONS_INITIAL_VERSION (docs/contract.md §4.6), used by
        `migrate`.
        """
        datastore = await SqliteDatastore.open(path, role="journal", busy_timeout_ms=busy_timeout_ms)
        try:
            shard_reader = await SqliteDatastore.open(
                path, role="journal (read sides)", busy_timeout_ms=busy_timeout_ms
            )
        except BaseException:
            await datastore.close()
            raise
        return cls(
            datastore,
            shard_reader=shard_reader,
            migrations_initial_version=migrations_initial_version,
            clock=clock,
        )

    @property
    def description(self) -> str:
        return self._datastore.description

    async def migrate(self, num_shards: int) -> int:
        scripts = await asyncio.to_thread(load_scripts, "sqlite")
        async with self._datastore.session("migrate the schema") as connection:
            version = await run_migrations(
                _MigrationSession(connection),
                scripts,
                initial_version=self._initial_version,
                now_ms=lambda: int(self._clock() * 1000),
            )
            async with write_transaction(connection):
                await connection.executemany(_ENSURE_SHARD, [(shard,) for shard in range(num_shards)])
        return version

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[Exception | None]:
        results: list[Exception | None] = [None] * len(requests)
        writing = []
        for index, request in enumerate(requests):
            if request.events:
                results[index] = unstorable_id(request)
                if results[index] is None:
                    writing.append(index)
        if not writing:
            return results
        async with self._datastore.session("append events") as connection:
            if not has_repeated_entity([requests[index] for index in writing]):
                try:
                    outcomes = await self._append_together(connection, [requests[index] for index in writing])
                except Exception as exc:
                    # Whatever one request carries (a conflicting revision, a value the store refuses)
                    # must not fail the others: all but an outage are retried one request per
                    # transaction below, so that only the offending request fails.
                    if isinstance(exc, sqlite3.Error) and is_unavailable(exc):
                        raise
                else:
                    for index, outcome in zip(writing, outcomes, strict=True):
                        results[index] = outcome
                    return results
            for index in writing:
                results[index] = await self._append_alone(connection, requests[index])
        return results

    async def _append_alone(
        self, connection: aiosqlite.Connection, request: AppendRequest
    ) -> Exception | None:
        try:
            return (await self._append_together(connection, [request]))[0]
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                return sequence_conflict(request)
            return StoreFailed(f"cannot store the events of entity {request.entity_id!r}: {exc}")
        except Exception as exc:
            if isinstance(exc, sqlite3.Error) and is_unavailable(exc):
                raise
            return StoreFailed(f"cannot store the events of entity {request.entity_id!r}: {exc!r}")

    async def _append_together(
        self, connection: aiosqlite.Connection, requests: Sequence[AppendRequest]
    ) -> list[Exception | None]:
        shards = sorted({request.shard for request in requests})
        async with write_transaction(connection):
            # SQLite's write lock already orders appends; the shard rows are kept so both stores share a
            # layout, and they hold the lease tokens that fenced requests are compared with.
            await connection.execute(_TOUCH_SHARDS, (json.dumps(shards),))
            rows = await connection.execute_fetchall(
                _CURRENT_REVISIONS, (json.dumps([request.entity_id for request in requests]),)
            )
            current = {str(entity_id): int(revision) for entity_id, revision in rows}
            held = await self._leases_held(connection, requests)
            accepted = [
                request
                for index, request in enumerate(requests)
                if held[index] and current[request.entity_id] == request.expected_sequence
            ]
            if accepted:
                await connection.executemany(
                    _INSERT_EVENT,
                    [
                        (
                            request.entity_id,
                            request.expected_sequence + offset,
                            request.writer,
                            request.write_timestamp_ms,
                            payload,
                        )
                        for request in accepted
                        for offset, payload in enumerate(request.events, start=1)
                    ],
                )
                await connection.executemany(
                    _TAG_EVENTS,
                    [
                        (str(request.shard), request.entity_id, request.expected_sequence)
                        for request in accepted
                    ],
                )
        return [
            append_outcome(request, current[request.entity_id], held[index])
            for index, request in enumerate(requests)
        ]

    @staticmethod
    async def _leases_held(connection: aiosqlite.Connection, requests: Sequence[AppendRequest]) -> list[bool]:
        """Whether each request's lease token is its shard's current one (an unfenced request always
        holds). Read inside the append's transaction, which holds SQLite's write lock: no lease can
        change hands before the commit."""
        fenced_shards = sorted({request.shard for request in requests if request.lease_token is not None})
        if not fenced_shards:
            return [True] * len(requests)
        rows = await connection.execute_fetchall(_LEASE_TOKENS, (json.dumps(fenced_shards),))
        tokens = {int(shard): int(token) for shard, token in rows}
        return [
            request.lease_token is None or tokens.get(request.shard) == request.lease_token
            for request in requests
        ]

    async def latest_state(self, entity_id: str) -> StoredState | None:
        async with self._datastore.session("read the latest state") as connection:
            rows = await connection.execute_fetchall(_LATEST_STATE, (entity_id,))
        return newest_state(entity_id, [tuple(row) for row in rows])

    async def latest_states(self, entity_ids: Sequence[str]) -> dict[str, StoredState | None | Exception]:
        # Reads are in-process here: one statement per id costs no round trip, so nothing is batched.
        candidates = {}
        async with self._datastore.session("read the latest states") as connection:
            for entity_id in entity_ids:
                rows = await connection.execute_fetchall(_LATEST_STATE, (entity_id,))
                candidates[entity_id] = [tuple(row) for row in rows]
        return newest_states(candidates)

    async def shard_progress(self, shard: int, after_ordering: int, count_limit: int) -> ShardProgress:
        async with self._shard_reader.session("read the journal's progress") as connection:
            rows = list(
                await connection.execute_fetchall(_SHARD_PROGRESS, (str(shard), after_ordering, count_limit))
            )
        head, pending, oldest = rows[0]
        return ShardProgress(int(head), int(pending), None if oldest is None else int(oldest))

    async def read_events(
        self, entity_id: str, after_sequence: int = 0, limit: int = 1000
    ) -> list[JournalRow]:
        async with self._datastore.session("read events") as connection:
            rows = await connection.execute_fetchall(_READ_EVENTS, (entity_id, after_sequence, limit))
        return _event_rows(rows)

    async def read_shard(self, shard: int, after_ordering: int, limit: int) -> list[JournalRow]:
        async with self._shard_reader.session("read a shard") as connection:
            rows = await connection.execute_fetchall(_READ_SHARD, (str(shard), after_ordering, limit))
        return _event_rows(rows)

    async def save_snapshot(self, snapshot: SnapshotRow) -> None:
        async with self._datastore.session("save a snapshot") as connection:
            await connection.execute(
                _SAVE_SNAPSHOT,
                (snapshot.entity_id, snapshot.sequence_number, snapshot.created_ms, snapshot.payload),
            )

    async def list_snapshots(self, entity_id: str) -> list[SnapshotRow]:
        async with self._datastore.session("list snapshots") as connection:
            rows = await connection.execute_fetchall(_LIST_SNAPSHOTS, (entity_id,))
        snapshots = []
        for sequence_number, created, serializer_id, manifest, payload in rows:
            check_snapshot_serializer(entity_id, sequence_number, serializer_id, manifest)
            snapshots.append(SnapshotRow(entity_id, sequence_number, created, bytes(payload)))
        return snapshots

    async def delete_snapshots_below(self, entity_id: str, sequence_number: int) -> int:
        async with self._datastore.session("delete snapshots") as connection:
            cursor = await connection.execute(_DELETE_SNAPSHOTS_BELOW, (entity_id, sequence_number))
            return max(cursor.rowcount, 0)

    async def delete_events_up_to(self, entity_id: str, sequence_number: int) -> int:
        async with self._datastore.session("delete events") as connection, write_transaction(connection):
            await connection.execute(_MARK_DELETED, (entity_id, sequence_number))
            cursor = await connection.execute(_REMOVE_MARKED, (entity_id,))
            return max(cursor.rowcount, 0)

    async def ping(self) -> None:
        async with self._datastore.session("answer a ping") as connection:
            await connection.execute_fetchall("SELECT 1")

    async def close(self) -> None:
        try:
            await self._datastore.close()
        finally:
            if self._shard_reader is not self._datastore:
                await self._shard_reader.close()

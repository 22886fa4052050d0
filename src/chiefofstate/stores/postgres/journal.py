"""The PostgreSQL journal (asyncpg), in upstream's tables (docs/contract.md §4, decision D2).

Appends lock their shards' rows of `cos_shard_locks` before they draw `ordering` values (decision D3),
so a projection reading "tag = s and ordering > offset" never misses an event that commits late, and
compare a fenced request's lease token with the row's under that lock. A whole batch is one call of the
stored function `cos_append_events` (migrations 9 and 12): one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg

from chiefofstate.core.errors import Internal, StoreFailed
from chiefofstate.ports.journal import (
    SERIALIZER_ID,
    SNAPSHOT_MANIFEST,
    AppendRequest,
    JournalRow,
    ShardProgress,
    SnapshotRow,
    StoredState,
)
from chiefofstate.stores.migrations import MigrationError, MigrationScripts, load_scripts, run_migrations
from chiefofstate.stores.postgres.datastore import (
    ConnectionSettings,
    PostgresDatastore,
    is_unavailable,
    quote_identifier,
)
from chiefofstate.stores.postgres.online_indexes import build_online_indexes
from chiefofstate.stores.rows import (
    append_outcome,
    check_snapshot_serializer,
    event_row,
    has_repeated_entity,
    newest_state,
    newest_states,
    sequence_conflict,
    unstorable_id,
)

_UNIQUE_VIOLATION = "23505"

# pg_advisory_xact_lock key serialising migrations of nodes booting together ("cos_migr").
_MIGRATION_LOCK_KEY = 0x636F735F6D696772
# A first boot on a large upstream database builds an index (online_indexes.py); that must not hit the
# statement timeout.
_MIGRATION_STATEMENT_TIMEOUT_S = 3600.0
# One for the group-commit writer, one for the recovery reader.
_MAX_KEPT_CONNECTIONS = 2


APPEND_CHANNEL = "cos_journal_appended"  # notified by cos_append_events (migrations/postgres/0009)
_ENSURE_SHARDS = """
INSERT INTO cos_shard_locks (shard) SELECT generate_series(0, $1::int - 1) ON CONFLICT (shard) DO NOTHING
"""

# One autocommitted statement writes a whole batch: the function locks the batch's shards, reads each
# request's current revision and its shard's lease token under those locks, inserts the requests whose
# expected revision matches and whose lease is current, notifies APPEND_CHANNEL, and answers each
# request's revision and whether its lease is held (migrations 9 and 12). The last two arguments are NULL
# when no request of the batch is fenced.
_APPEND = """
SELECT entity_id, current_sequence, lease_held
FROM cos_append_events($1::int[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::text[],
                       $7::bigint[], $8::bytea[], $9::text[], $10::int[], $11::bigint[])
"""

_EVENT_COLUMNS = (
    "j.ordering, j.persistence_id, j.sequence_number, {tag} AS tag, j.deleted, j.write_timestamp, "
    "j.event_ser_id, j.event_ser_manifest, j.event_payload"
)
_READ_EVENTS = f"""
SELECT {_EVENT_COLUMNS.format(tag="(SELECT min(t.tag) FROM event_tag t WHERE t.event_id = j.ordering)")}
FROM event_journal j
WHERE j.persistence_id = $1 AND j.sequence_number > $2
ORDER BY j.sequence_number
LIMIT $3
"""
# Deleted rows are left out as upstream's read journal does: after deletion on snapshot
# (docs/contract.md §4.5)
# only the marker row is left, and read sides must not receive an event that was deleted.
_READ_SHARD = f"""
SELECT {_EVENT_COLUMNS.format(tag="t.tag")}
FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id
WHERE t.tag = $1 AND t.event_id > $2 AND NOT j.deleted
ORDER BY t.event_id
LIMIT $3
"""
# The newest event row and the newest snapshot of one id (a lone read: no batch formed meanwhile).
_LATEST_STATE = """
SELECT * FROM (
    SELECT persistence_id, 'event' AS kind, sequence_number, event_ser_id AS serializer_id,
           event_ser_manifest AS manifest, event_payload AS payload
    FROM event_journal WHERE persistence_id = $1 ORDER BY sequence_number DESC LIMIT 1
) AS latest_event
UNION ALL
SELECT * FROM (
    SELECT persistence_id, 'snapshot', sequence_number, snapshot_ser_id, snapshot_ser_manifest,
           snapshot_payload
    FROM state_snapshot WHERE persistence_id = $1 ORDER BY sequence_number DESC LIMIT 1
) AS latest_snapshot
"""
# The same for many ids at once (migration 10): in a stored function so that its plan is made once per
# session; sent as a statement, it was planned anew on every call, which cost more than the read.
_LATEST_STATES = "SELECT * FROM cos_latest_states($1::text[])"
_SHARD_PROGRESS = """
SELECT (SELECT COALESCE(max(event_id), 0) FROM event_tag WHERE tag = $1) AS head,
       (SELECT count(*) FROM (
            SELECT 1 FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id
            WHERE t.tag = $1 AND t.event_id > $2 AND NOT j.deleted LIMIT $3) AS after_offset) AS pending,
       (SELECT j.write_timestamp FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id
            WHERE t.tag = $1 AND t.event_id > $2 AND NOT j.deleted
            ORDER BY t.event_id LIMIT 1) AS oldest_pending
"""
_SAVE_SNAPSHOT = f"""
INSERT INTO state_snapshot (persistence_id, sequence_number, created, snapshot_ser_id, snapshot_ser_manifest,
                            snapshot_payload)
VALUES ($1, $2, $3, {SERIALIZER_ID}, '{SNAPSHOT_MANIFEST}', $4)
ON CONFLICT (persistence_id, sequence_number) DO UPDATE SET
    created = EXCLUDED.created, snapshot_ser_id = EXCLUDED.snapshot_ser_id,
    snapshot_ser_manifest = EXCLUDED.snapshot_ser_manifest, snapshot_payload = EXCLUDED.snapshot_payload,
    meta_ser_id = NULL, meta_ser_manifest = NULL, meta_payload = NULL
"""
_LIST_SNAPSHOTS = """
SELECT persistence_id, sequence_number, created, snapshot_ser_id, snapshot_ser_manifest, snapshot_payload
FROM state_snapshot WHERE persistence_id = $1 ORDER BY sequence_number
"""
_DELETE_SNAPSHOTS_BELOW = "DELETE FROM state_snapshot WHERE persistence_id = $1 AND sequence_number < $2"
# Upstream's deletion (akka-persistence-jdbc): mark, then remove every marked row but the highest, which
# keeps the entity's highest sequence number known; event_tag rows follow through the cascade.
_MARK_DELETED = """
UPDATE event_journal SET deleted = TRUE WHERE persistence_id = $1 AND sequence_number <= $2 AND NOT deleted
"""
_REMOVE_MARKED = """
DELETE FROM event_journal
WHERE persistence_id = $1
  AND sequence_number < (SELECT max(sequence_number) FROM event_journal WHERE persistence_id = $1 AND deleted)
"""


def _affected_rows(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3".
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _event_rows(records: Sequence[Any]) -> list[JournalRow]:
    return [
        event_row(
            record["ordering"],
            record["persistence_id"],
            record["sequence_number"],
            record["tag"],
            record["deleted"],
            record["write_timestamp"],
            record["event_ser_id"],
            record["event_ser_manifest"],
            record["event_payload"],
        )
        for record in records
    ]


class _MigrationSession:
    """The migration runner's view of one PostgreSQL connection."""

    def __init__(self, connection: Any, schema: str) -> None:
        self._connection = connection
        self._schema = schema

    @contextlib.asynccontextmanager
    async def exclusive_transaction(self) -> AsyncIterator[None]:
        async with self._connection.transaction():
            await self._connection.execute(
                "SELECT pg_advisory_xact_lock($1)",
                _MIGRATION_LOCK_KEY,
                timeout=_MIGRATION_STATEMENT_TIMEOUT_S,
            )
            yield

    async def prepare(self, scripts: MigrationScripts) -> None:
        # Checked first so that a role without CREATE on the database can still use an existing schema.
        exists = await self._connection.fetchval(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1", self._schema
        )
        if not exists:
            await self._connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(self._schema)}")
        await self._connection.execute(scripts.bootstrap)

    async def run_script(self, script: str) -> None:
        await self._connection.execute(script, timeout=_MIGRATION_STATEMENT_TIMEOUT_S)

    async def current_version(self) -> int | None:
        version = await self._connection.fetchval("SELECT max(version_number) FROM cos_migrations")
        return None if version is None else int(version)

    async def record_version(self, version: int, upgraded_at_ms: int, is_snapshot: bool) -> None:
        await self._connection.execute(
            "INSERT INTO cos_migrations (version_number, upgraded_at, is_snapshot) VALUES ($1, $2, $3)",
            version,
            upgraded_at_ms,
            is_snapshot,
        )


class PostgresJournal:
    """`Journal` on PostgreSQL, on a datastore of its own (its pool). Build it with `await
    PostgresJournal.open(settings)`."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        migrations_initial_version: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._datastore = datastore
        self._initial_version = migrations_initial_version
        self._clock = clock

    @classmethod
    async def open(
        cls,
        settings: ConnectionSettings,
        *,
        migrations_initial_version: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> PostgresJournal:
        """Connect the pool; raises StoreUnavailable when the server cannot be reached or refuses us.

        `migrations_initial_version` is COS_MIGRATIONS_INITIAL_VERSION (docs/contract.md §4.6), used by
        `migrate`.
        """
        datastore = await PostgresDatastore.open(
            settings, application_name="chiefofstate", max_kept=_MAX_KEPT_CONNECTIONS
        )
        return cls(datastore, migrations_initial_version=migrations_initial_version, clock=clock)

    @property
    def description(self) -> str:
        return self._datastore.description

    async def migrate(self, num_shards: int) -> int:
        scripts = await asyncio.to_thread(load_scripts, "postgres")
        now_ms = self._now_ms
        try:
            async with self._datastore.connection("migrate the schema") as connection:
                session = _MigrationSession(connection, self._datastore.settings.schema)
                version = await run_migrations(
                    session, scripts, initial_version=self._initial_version, now_ms=now_ms
                )
                await connection.execute(_ENSURE_SHARDS, num_shards)
                await build_online_indexes(connection, statement_timeout_s=_MIGRATION_STATEMENT_TIMEOUT_S)
        except Internal as exc:
            raise MigrationError(f"schema migration failed: {exc}") from exc
        return version

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

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
        async with self._datastore.kept_connection("append events") as connection:
            if not has_repeated_entity([requests[index] for index in writing]):
                try:
                    outcomes = await self._append_together(connection, [requests[index] for index in writing])
                except Exception as exc:
                    # Whatever one request carries (a conflicting revision, a value the database or the
                    # driver refuses) must not fail the others: all but an outage are retried one
                    # request per statement below, so that only the offending request fails. The
                    # batch is one autocommitted statement, so a failed one wrote nothing.
                    if is_unavailable(exc):
                        raise
                else:
                    for index, outcome in zip(writing, outcomes, strict=True):
                        results[index] = outcome
                    return results
            for index in writing:
                results[index] = await self._append_alone(connection, requests[index])
        return results

    async def _append_alone(self, connection: Any, request: AppendRequest) -> Exception | None:
        try:
            return (await self._append_together(connection, [request]))[0]
        except Exception as exc:
            if is_unavailable(exc):
                raise
            if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == _UNIQUE_VIOLATION:
                return sequence_conflict(request)
            return StoreFailed(f"cannot store the events of entity {request.entity_id!r}: {exc!r}")

    async def _append_together(
        self, connection: Any, requests: Sequence[AppendRequest]
    ) -> list[Exception | None]:
        shards = sorted({request.shard for request in requests})
        entity_ids: list[str] = []
        expected: list[int] = []
        request_shards: list[int] = []
        lease_tokens: list[int | None] = []
        event_ids: list[str] = []
        sequences: list[int] = []
        writers: list[str] = []
        timestamps: list[int] = []
        payloads: list[bytes] = []
        tags: list[str] = []
        for request in requests:
            entity_ids.append(request.entity_id)
            expected.append(request.expected_sequence)
            request_shards.append(request.shard)
            lease_tokens.append(request.lease_token)
            tag = str(request.shard)
            for offset, payload in enumerate(request.events, start=1):
                event_ids.append(request.entity_id)
                sequences.append(request.expected_sequence + offset)
                writers.append(request.writer)
                timestamps.append(request.write_timestamp_ms)
                payloads.append(payload)
                tags.append(tag)
        # Autocommitted: the statement is its own transaction, so the batch costs one round trip.
        fenced = any(token is not None for token in lease_tokens)
        records = await connection.fetch(
            _APPEND,
            shards,
            entity_ids,
            expected,
            event_ids,
            sequences,
            writers,
            timestamps,
            payloads,
            tags,
            request_shards if fenced else None,
            lease_tokens if fenced else None,
        )
        current = {record["entity_id"]: int(record["current_sequence"]) for record in records}
        held = {record["entity_id"]: bool(record["lease_held"]) for record in records}
        return [
            append_outcome(request, current[request.entity_id], held[request.entity_id])
            for request in requests
        ]

    async def latest_state(self, entity_id: str) -> StoredState | None:
        return newest_state(entity_id, (await self._read_latest_states([entity_id]))[entity_id])

    async def latest_states(self, entity_ids: Sequence[str]) -> dict[str, StoredState | None | Exception]:
        return newest_states(await self._read_latest_states(entity_ids))

    async def _read_latest_states(
        self, entity_ids: Sequence[str]
    ) -> dict[str, list[tuple[str, int, int, str, bytes]]]:
        candidates: dict[str, list[tuple[str, int, int, str, bytes]]] = {pid: [] for pid in entity_ids}
        async with self._datastore.kept_connection("read the latest state") as connection:
            if len(entity_ids) == 1:
                records = await connection.fetch(_LATEST_STATE, entity_ids[0])
            else:
                records = await connection.fetch(_LATEST_STATES, list(entity_ids))
        for record in records:
            candidates[record["persistence_id"]].append(
                (
                    record["kind"],
                    record["sequence_number"],
                    record["serializer_id"],
                    record["manifest"],
                    record["payload"],
                )
            )
        return candidates

    async def read_events(
        self, entity_id: str, after_sequence: int = 0, limit: int = 1000
    ) -> list[JournalRow]:
        async with self._datastore.connection("read events") as connection:
            records = await connection.fetch(_READ_EVENTS, entity_id, after_sequence, limit)
        return _event_rows(records)

    async def read_shard(self, shard: int, after_ordering: int, limit: int) -> list[JournalRow]:
        async with self._datastore.connection("read a shard") as connection:
            records = await connection.fetch(_READ_SHARD, str(shard), after_ordering, limit)
        return _event_rows(records)

    async def shard_progress(self, shard: int, after_ordering: int, count_limit: int) -> ShardProgress:
        async with self._datastore.connection("read the journal's progress") as connection:
            row = await connection.fetchrow(_SHARD_PROGRESS, str(shard), after_ordering, count_limit)
        oldest = row["oldest_pending"]
        return ShardProgress(int(row["head"]), int(row["pending"]), None if oldest is None else int(oldest))

    async def save_snapshot(self, snapshot: SnapshotRow) -> None:
        async with self._datastore.connection("save a snapshot") as connection:
            await connection.execute(
                _SAVE_SNAPSHOT,
                snapshot.entity_id,
                snapshot.sequence_number,
                snapshot.created_ms,
                snapshot.payload,
            )

    async def list_snapshots(self, entity_id: str) -> list[SnapshotRow]:
        async with self._datastore.connection("list snapshots") as connection:
            records = await connection.fetch(_LIST_SNAPSHOTS, entity_id)
        snapshots = []
        for record in records:
            check_snapshot_serializer(
                entity_id,
                record["sequence_number"],
                record["snapshot_ser_id"],
                record["snapshot_ser_manifest"],
            )
            snapshots.append(
                SnapshotRow(
                    entity_id, record["sequence_number"], record["created"], bytes(record["snapshot_payload"])
                )
            )
        return snapshots

    async def delete_snapshots_below(self, entity_id: str, sequence_number: int) -> int:
        async with self._datastore.connection("delete snapshots") as connection:
            status = await connection.execute(_DELETE_SNAPSHOTS_BELOW, entity_id, sequence_number)
        return _affected_rows(status)

    async def delete_events_up_to(self, entity_id: str, sequence_number: int) -> int:
        async with self._datastore.connection("delete events") as connection, connection.transaction():
            await connection.execute(_MARK_DELETED, entity_id, sequence_number)
            status = await connection.execute(_REMOVE_MARKED, entity_id)
        return _affected_rows(status)

    async def ping(self) -> None:
        async with self._datastore.connection("answer a ping") as connection:
            await connection.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._datastore.close()

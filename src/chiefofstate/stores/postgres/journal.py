"""The PostgreSQL journal (asyncpg), in upstream's tables (SPEC.md §4, decision D2).

Appends lock their shards' rows of `cos_shard_locks` before they draw `ordering` values (decision D3),
so a projection reading "tag = s and ordering > offset" never misses an event that commits late. A
whole batch is one call of the stored function `cos_append_events` (migration 9): one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from chiefofstate.core.errors import Internal, StoreUnavailable
from chiefofstate.journal.coalescing import CoalescingReader
from chiefofstate.ports.journal import (
    SERIALIZER_ID,
    SNAPSHOT_MANIFEST,
    AppendRequest,
    JournalRow,
    SnapshotRow,
    StoredState,
)
from chiefofstate.stores.migrations import MigrationError, MigrationScripts, load_scripts, run_migrations
from chiefofstate.stores.rows import (
    check_snapshot_serializer,
    event_row,
    has_repeated_entity,
    newest_state,
    sequence_conflict,
)

if TYPE_CHECKING:
    from chiefofstate.config.settings import PostgresSettings as PostgresConfig

# SQLSTATE classes that mean "the database cannot serve us right now", not "the request is wrong":
# connection exception, invalid authorization, invalid catalog (database missing), transaction rollback
# (serialization failure, deadlock), insufficient resources, operator intervention (shutdown), system error.
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "28", "3D", "40", "53", "57", "58"})
# Data exceptions and integrity violations are caused by one request's rows; the batch is then retried
# one request per transaction so that only the offending request fails.
_PER_REQUEST_SQLSTATE_CLASSES = frozenset({"22", "23"})

_UNIQUE_VIOLATION = "23505"

# pg_advisory_xact_lock key serialising migrations of nodes booting together ("cos_migr").
_MIGRATION_LOCK_KEY = 0x636F735F6D696772
# A first boot on a large upstream database builds an index; that must not hit the statement timeout.
_MIGRATION_STATEMENT_TIMEOUT_S = 3600.0
# One for the group-commit writer, one for the recovery reader.
_MAX_KEPT_CONNECTIONS = 2
_CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """Where the journal lives and how its pool behaves (SPEC.md §4.1; COS_DB_* variables)."""

    host: str = "localhost"
    port: int = 5432
    database: str = "postgres"
    user: str = "postgres"
    password: str = ""
    schema: str = "public"
    pool_max_size: int = 5
    pool_min_size: int = 1
    idle_timeout_ms: int = 60_000
    max_lifetime_ms: int = 120_000
    connect_timeout_s: float = 10.0
    statement_timeout_s: float = 30.0
    acquire_timeout_s: float = 10.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}/{self.database}"


def settings_from_config(config: PostgresConfig, *, pool_min_size: int | None = None) -> PostgresSettings:
    """The COS_DB_* settings as this adapter takes them; `pool_min_size` overrides the configured minimum
    (the read-side pool keeps fewer idle connections than the journal's)."""
    return PostgresSettings(
        host=config.host,
        port=config.port,
        database=config.database,
        user=config.user,
        password=config.password,
        schema=config.schema,
        pool_max_size=config.pool_max_size,
        pool_min_size=config.pool_min_idle if pool_min_size is None else pool_min_size,
        idle_timeout_ms=int(config.pool_idle_timeout_s * 1000),
        max_lifetime_ms=int(config.pool_max_lifetime_s * 1000),
        connect_timeout_s=config.connect_timeout_s,
    )


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _AgedConnection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg has no maximum connection lifetime; connections remember when they were opened so the
    journal can retire them (COS_DB_POOL_MAX_LIFETIME_MS), as upstream's HikariCP pool does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened_at = time.monotonic()


async def _keep_session_state(connection: Any) -> None:
    """Skip asyncpg's reset query on release: it costs a round trip per operation, and the journal never
    changes session state (no SET, no LISTEN, only transaction-scoped advisory locks). asyncpg still rolls
    back any transaction left open before the connection returns to the pool."""


APPEND_CHANNEL = "cos_journal_appended"  # notified by cos_append_events (migrations/postgres/0009)
_ENSURE_SHARDS = """
INSERT INTO cos_shard_locks (shard) SELECT generate_series(0, $1::int - 1) ON CONFLICT (shard) DO NOTHING
"""

# One autocommitted statement writes a whole batch: the function locks the batch's shards, reads each
# request's current revision under those locks, inserts the requests whose expected revision matches,
# notifies APPEND_CHANNEL, and answers each request's current revision (migrations/postgres/0009).
_APPEND = """
SELECT entity_id, current_sequence
FROM cos_append_events($1::int[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::text[],
                       $7::bigint[], $8::bytea[], $9::text[])
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
# Deleted rows are left out as upstream's read journal does: after deletion on snapshot (SPEC.md §4.5)
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
    """`Journal` on PostgreSQL. Build it with `await PostgresJournal.open(settings)`."""

    def __init__(
        self,
        pool: Any,
        settings: PostgresSettings,
        *,
        migrations_initial_version: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._initial_version = migrations_initial_version
        self._clock = clock
        # Connections kept between the calls of the journal's one-at-a-time callers (see _kept_connection);
        # never all of the pool, so that everything else still gets one.
        self._kept: list[Any] = []
        self._max_kept = min(_MAX_KEPT_CONNECTIONS, settings.pool_max_size - 1)
        self._closing = False
        # Recovering many entities at once (a restart, a rebalance) reads their states in a few batches.
        self._latest_states = CoalescingReader(
            self._read_latest_states,
            stopped=lambda: StoreUnavailable("the journal was closed before the state was read"),
            name="journal-latest-states",
        )

    @classmethod
    async def open(
        cls,
        settings: PostgresSettings,
        *,
        migrations_initial_version: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> PostgresJournal:
        """Connect the pool; raises StoreUnavailable when the server cannot be reached or refuses us.

        `migrations_initial_version` is COS_MIGRATIONS_INITIAL_VERSION (SPEC.md §4.6), used by `migrate`.
        """
        try:
            pool = await asyncpg.create_pool(
                host=settings.host,
                port=settings.port,
                database=settings.database,
                user=settings.user,
                password=settings.password,
                min_size=min(settings.pool_min_size, settings.pool_max_size),
                max_size=settings.pool_max_size,
                max_inactive_connection_lifetime=settings.idle_timeout_ms / 1000,
                timeout=settings.connect_timeout_s,
                command_timeout=settings.statement_timeout_s,
                # Upstream selects COS_DB_SCHEMA as the connection's current schema (SPEC.md §4.1).
                server_settings={
                    "search_path": quote_identifier(settings.schema),
                    "application_name": "chiefofstate",
                },
                connection_class=_AgedConnection,
                reset=_keep_session_state,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {settings.address}: {exc}") from exc
        return cls(pool, settings, migrations_initial_version=migrations_initial_version, clock=clock)

    @property
    def description(self) -> str:
        return f"PostgreSQL {self._settings.address} (schema {self._settings.schema})"

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """Turn asyncpg's and the socket's exceptions into ours, so none leaks above the journal."""
        try:
            yield
        except asyncpg.PostgresError as exc:
            if str(exc.sqlstate)[:2] in _UNAVAILABLE_SQLSTATE_CLASSES:
                raise StoreUnavailable(
                    f"PostgreSQL at {self._settings.address} could not {action}: {exc}"
                ) from exc
            raise Internal(f"PostgreSQL refused to {action}: {exc}") from exc
        except asyncpg.InterfaceError as exc:
            if isinstance(exc, ValueError):  # a value the driver cannot encode: our bug, not an outage
                raise Internal(f"cannot {action}: {exc}") from exc
            raise StoreUnavailable(f"PostgreSQL at {self._settings.address} is unavailable: {exc}") from exc
        except OSError as exc:  # includes TimeoutError and refused or reset connections
            raise StoreUnavailable(
                f"PostgreSQL at {self._settings.address} is unavailable ({action}): {exc!r}"
            ) from exc

    @contextlib.asynccontextmanager
    async def _connection(self, action: str) -> AsyncIterator[Any]:
        with self._translated(action):
            async with self._pool.acquire(timeout=self._settings.acquire_timeout_s) as connection:
                yield connection
                if self._past_lifetime(connection):
                    # A closed connection goes back to the pool, which opens a fresh one when needed.
                    await connection.close(timeout=_CLOSE_TIMEOUT_S)

    def _past_lifetime(self, connection: Any) -> bool:
        opened_at: float = connection.opened_at  # _AgedConnection
        return (time.monotonic() - opened_at) * 1000 > self._settings.max_lifetime_ms

    @contextlib.asynccontextmanager
    async def _kept_connection(self, action: str) -> AsyncIterator[Any]:
        """A connection kept out of the pool between calls, for the callers that run one call at a time
        and call often (the group-commit writer, the recovery reader): a pool acquire and release cost
        ≈ 35 µs of Python per call, as much as the rest of the batch's client work. A call that fails,
        a connection past COS_DB_POOL_MAX_LIFETIME_MS or a closing journal returns it to the pool, which
        then replaces a broken one as it would any other."""
        with self._translated(action):
            if self._kept:
                connection = self._kept.pop()
            else:
                connection = await self._pool.acquire(timeout=self._settings.acquire_timeout_s)
            kept = False
            try:
                yield connection
                if self._past_lifetime(connection):
                    await connection.close(timeout=_CLOSE_TIMEOUT_S)
                elif not self._closing and len(self._kept) < self._max_kept and not connection.is_closed():
                    self._kept.append(connection)
                    kept = True
            finally:
                if not kept:
                    await self._pool.release(connection)

    async def migrate(self, num_shards: int) -> int:
        scripts = await asyncio.to_thread(load_scripts, "postgres")
        now_ms = self._now_ms
        try:
            async with self._connection("migrate the schema") as connection:
                session = _MigrationSession(connection, self._settings.schema)
                version = await run_migrations(
                    session, scripts, initial_version=self._initial_version, now_ms=now_ms
                )
                await connection.execute(_ENSURE_SHARDS, num_shards)
        except Internal as exc:
            raise MigrationError(f"schema migration failed: {exc}") from exc
        return version

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[Exception | None]:
        results: list[Exception | None] = [None] * len(requests)
        writing = [index for index, request in enumerate(requests) if request.events]
        if not writing:
            return results
        async with self._kept_connection("append events") as connection:
            if not has_repeated_entity([requests[index] for index in writing]):
                try:
                    outcomes = await self._append_together(connection, [requests[index] for index in writing])
                except asyncpg.PostgresError as exc:
                    if str(exc.sqlstate)[:2] not in _PER_REQUEST_SQLSTATE_CLASSES:
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
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == _UNIQUE_VIOLATION:
                return sequence_conflict(request)
            if str(exc.sqlstate)[:2] in _PER_REQUEST_SQLSTATE_CLASSES:
                return Internal(f"cannot store the events of entity {request.entity_id!r}: {exc}")
            raise

    async def _append_together(
        self, connection: Any, requests: Sequence[AppendRequest]
    ) -> list[Exception | None]:
        shards = sorted({request.shard for request in requests})
        entity_ids: list[str] = []
        expected: list[int] = []
        event_ids: list[str] = []
        sequences: list[int] = []
        writers: list[str] = []
        timestamps: list[int] = []
        payloads: list[bytes] = []
        tags: list[str] = []
        for request in requests:
            entity_ids.append(request.entity_id)
            expected.append(request.expected_sequence)
            tag = str(request.shard)
            for offset, payload in enumerate(request.events, start=1):
                event_ids.append(request.entity_id)
                sequences.append(request.expected_sequence + offset)
                writers.append(request.writer)
                timestamps.append(request.write_timestamp_ms)
                payloads.append(payload)
                tags.append(tag)
        # Autocommitted: the statement is its own transaction, so the batch costs one round trip.
        records = await connection.fetch(
            _APPEND, shards, entity_ids, expected, event_ids, sequences, writers, timestamps, payloads, tags
        )
        current = {record["entity_id"]: int(record["current_sequence"]) for record in records}
        return [
            None
            if current[request.entity_id] == request.expected_sequence
            else sequence_conflict(request, current[request.entity_id])
            for request in requests
        ]

    def batch_reads_within(self, wait_s: Callable[[], float]) -> None:
        """Recoveries arriving steadily may wait up to `wait_s()` to share one read (coalescing.py)."""
        self._latest_states.wait_for_company(wait_s)

    async def latest_state(self, entity_id: str) -> StoredState | None:
        # Rows are checked here, per caller, so a bad row fails only the callers of its entity.
        return newest_state(entity_id, await self._latest_states.get(entity_id))

    async def _read_latest_states(
        self, entity_ids: Sequence[str]
    ) -> dict[str, list[tuple[str, int, int, str, bytes]]]:
        candidates: dict[str, list[tuple[str, int, int, str, bytes]]] = {pid: [] for pid in entity_ids}
        async with self._kept_connection("read the latest state") as connection:
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
        async with self._connection("read events") as connection:
            records = await connection.fetch(_READ_EVENTS, entity_id, after_sequence, limit)
        return _event_rows(records)

    async def read_shard(self, shard: int, after_ordering: int, limit: int) -> list[JournalRow]:
        async with self._connection("read a shard") as connection:
            records = await connection.fetch(_READ_SHARD, str(shard), after_ordering, limit)
        return _event_rows(records)

    async def save_snapshot(self, snapshot: SnapshotRow) -> None:
        async with self._connection("save a snapshot") as connection:
            await connection.execute(
                _SAVE_SNAPSHOT,
                snapshot.entity_id,
                snapshot.sequence_number,
                snapshot.created_ms,
                snapshot.payload,
            )

    async def list_snapshots(self, entity_id: str) -> list[SnapshotRow]:
        async with self._connection("list snapshots") as connection:
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
        async with self._connection("delete snapshots") as connection:
            status = await connection.execute(_DELETE_SNAPSHOTS_BELOW, entity_id, sequence_number)
        return _affected_rows(status)

    async def delete_events_up_to(self, entity_id: str, sequence_number: int) -> int:
        async with self._connection("delete events") as connection, connection.transaction():
            await connection.execute(_MARK_DELETED, entity_id, sequence_number)
            status = await connection.execute(_REMOVE_MARKED, entity_id)
        return _affected_rows(status)

    async def ping(self) -> None:
        async with self._connection("answer a ping") as connection:
            await connection.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._latest_states.close()
        self._closing = True
        while self._kept:
            await self._pool.release(self._kept.pop())
        try:
            await asyncio.wait_for(self._pool.close(), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            self._pool.terminate()

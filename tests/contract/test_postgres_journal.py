"""What only PostgreSQL can show: several pools at once, concurrent commits, an unreachable server."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from chiefofstate.core.errors import Internal, SequenceConflict, StoreUnavailable
from chiefofstate.core.sharding import shard_of
from chiefofstate.journal.deciding import DecidingCommands
from chiefofstate.journal.state_reads import CoalescedStateReads
from chiefofstate.ports.journal import EVENT_MANIFEST, SERIALIZER_ID, AppendRequest, Journal
from chiefofstate.stores.postgres.datastore import ConnectionSettings
from chiefofstate.stores.postgres.journal import APPEND_CHANNEL, PostgresJournal
from tests.contract.conftest import LATEST_VERSION
from tests.support.postgres import PgServer

pytestmark = pytest.mark.postgres

NOW_MS = 1_700_000_000_000


def request(entity_id: str, expected: int, count: int = 1, num_shards: int = 8) -> AppendRequest:
    return AppendRequest(
        entity_id=entity_id,
        shard=shard_of(entity_id, num_shards),
        expected_sequence=expected,
        events=[f"{entity_id}#{expected + n}".encode() for n in range(1, count + 1)],
        write_timestamp_ms=NOW_MS,
        writer="w",
    )


def settings_for(pg_database: tuple[PgServer, str], **overrides: object) -> ConnectionSettings:
    server, database = pg_database
    options: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "database": database,
        "user": server.user,
        "password": server.password,
        "pool_max_size": 4,
    }
    options.update(overrides)
    return ConnectionSettings(**options)  # type: ignore[arg-type]


@pytest.fixture
async def raw(pg_database: tuple[PgServer, str]) -> AsyncIterator[asyncpg.Connection]:
    server, database = pg_database
    connection = await asyncpg.connect(server.dsn(database))
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def journal(pg_database: tuple[PgServer, str]) -> AsyncIterator[PostgresJournal]:
    opened = await PostgresJournal.open(settings_for(pg_database))
    try:
        await opened.migrate(8)
        yield opened
    finally:
        await opened.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_server_is_store_unavailable() -> None:
    port = closed_port()
    settings = ConnectionSettings(host="127.0.0.1", port=port, connect_timeout_s=2)
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}/postgres") as caught:
        await PostgresJournal.open(settings)
    assert not isinstance(caught.value, asyncpg.PostgresError | asyncpg.InterfaceError | OSError)


async def test_a_missing_database_is_store_unavailable(pg_database: tuple[PgServer, str]) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist"):
        await PostgresJournal.open(settings_for(pg_database, database="cos_no_such_database"))


async def test_tables_live_in_the_configured_schema(
    pg_database: tuple[PgServer, str], raw: asyncpg.Connection
) -> None:
    journal = await PostgresJournal.open(settings_for(pg_database, schema="Cos Schema"))
    try:
        assert await journal.migrate(4) == LATEST_VERSION
        assert await journal.append_batch([request("in-schema", 0, num_shards=4)]) == [None]
        assert len(await journal.read_events("in-schema")) == 1
    finally:
        await journal.close()
    tables = await raw.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'Cos Schema'"
    )
    assert {"event_journal", "event_tag", "cos_migrations", "cos_shard_locks", "read_sides"} <= {
        record["table_name"] for record in tables
    }
    assert await raw.fetchval("SELECT to_regclass('public.event_journal')") is None
    # The stored functions live beside the tables and resolve them through the search path.
    homes = await raw.fetch(
        "SELECT p.proname, n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE p.proname IN ('cos_append_events', 'cos_latest_states') ORDER BY 1"
    )
    assert [(record["proname"], record["nspname"]) for record in homes] == [
        ("cos_append_events", "Cos Schema"),
        ("cos_latest_states", "Cos Schema"),
    ]


async def test_nodes_booting_together_migrate_once(
    pg_database: tuple[PgServer, str], raw: asyncpg.Connection
) -> None:
    journals = [await PostgresJournal.open(settings_for(pg_database)) for _ in range(4)]
    try:
        versions = await asyncio.gather(*(journal.migrate(8) for journal in journals))
    finally:
        for journal in journals:
            await journal.close()
    assert versions == [LATEST_VERSION] * 4
    rows = await raw.fetch("SELECT version_number FROM cos_migrations ORDER BY 1")
    assert [record["version_number"] for record in rows] == list(range(6, LATEST_VERSION + 1))


async def test_a_unique_violation_fails_only_its_request(
    journal: PostgresJournal, raw: asyncpg.Connection
) -> None:
    # A writer that ignores the shard locks (an upstream node, or one with another COS_NUM_SHARDS) holds an
    # uncommitted row; our batch passes the revision check, then collides with it on commit.
    async with raw.transaction():
        await raw.execute(
            "INSERT INTO event_journal (persistence_id, sequence_number, writer, event_ser_id, "
            "event_ser_manifest, event_payload) VALUES ('contested', 1, 'other', $1, $2, 'x')",
            SERIALIZER_ID,
            EVENT_MANIFEST,
        )
        append = asyncio.create_task(
            journal.append_batch(
                [request("bystander-1", 0), request("contested", 0), request("bystander-2", 0)]
            )
        )
        deadline = time.monotonic() + 10
        while not await raw.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ):
            assert time.monotonic() < deadline, "the append never waited for the contested row"
            await asyncio.sleep(0.01)
    results = await append
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], SequenceConflict)
    assert len(await journal.read_events("bystander-1")) == 1
    assert len(await journal.read_events("bystander-2")) == 1
    rows = await raw.fetch("SELECT writer FROM event_journal WHERE persistence_id = 'contested'")
    assert [record["writer"] for record in rows] == ["other"]


async def test_a_row_the_database_refuses_fails_only_its_request(journal: PostgresJournal) -> None:
    too_long = "x" * 300  # persistence_id is VARCHAR(255)
    results = await journal.append_batch([request("fine", 0), request(too_long, 0)])
    assert results[0] is None
    assert isinstance(results[1], Internal)
    assert len(await journal.read_events("fine")) == 1


async def test_connections_past_their_lifetime_are_replaced(pg_database: tuple[PgServer, str]) -> None:
    journal = await PostgresJournal.open(settings_for(pg_database, max_lifetime_ms=0, pool_max_size=1))
    try:
        await journal.migrate(8)
        for expected in range(5):
            assert await journal.append_batch([request("short-lived", expected)]) == [None]
        assert len(await journal.read_events("short-lived")) == 5
    finally:
        await journal.close()


async def test_read_shard_never_skips_an_event_that_commits_late(
    pg_database: tuple[PgServer, str], raw: asyncpg.Connection
) -> None:
    """Decision D3: many writers on two pools append to the same shards while a reader follows each
    shard by `ordering`; the reader must end up having seen every row, none skipped by committing late."""
    num_shards = 2
    pools: list[Journal] = [
        await PostgresJournal.open(settings_for(pg_database, pool_max_size=5)) for _ in range(2)
    ]
    try:
        await pools[0].migrate(num_shards)
        writers_done = asyncio.Event()
        rng = random.Random(7)

        async def writer(number: int) -> None:
            revisions = {f"w{number}-e{k}": 0 for k in range(8)}
            for round_number in range(30):
                chosen = rng.sample(sorted(revisions), 3)
                batch = []
                for entity_id in chosen:
                    count = rng.randint(1, 2)
                    batch.append(request(entity_id, revisions[entity_id], count, num_shards))
                    revisions[entity_id] += count
                results = await pools[(number + round_number) % 2].append_batch(batch)
                assert results == [None] * len(batch)

        async def reader(shard: int, seen: list[int]) -> None:
            last = 0
            while True:
                finished = writers_done.is_set()
                rows = await pools[shard % 2].read_shard(shard, last, 50)
                for row in rows:
                    assert row.ordering > last, "read_shard went backwards"
                    assert row.shard == shard
                    last = row.ordering
                    seen.append(row.ordering)
                if finished and not rows:
                    return

        seen: dict[int, list[int]] = {shard: [] for shard in range(num_shards)}
        readers = [asyncio.create_task(reader(shard, seen[shard])) for shard in range(num_shards)]
        try:
            await asyncio.gather(*(writer(number) for number in range(10)))
        finally:
            writers_done.set()
        await asyncio.gather(*readers)

        for shard in range(num_shards):
            stored = await raw.fetch(
                "SELECT event_id FROM event_tag WHERE tag = $1 ORDER BY event_id", str(shard)
            )
            assert seen[shard] == [record["event_id"] for record in stored]
        assert sum(len(rows) for rows in seen.values()) == await raw.fetchval(
            "SELECT count(*) FROM event_journal"
        )
    finally:
        for pool in pools:
            await pool.close()


async def statements_on_the_only_connection(journal: PostgresJournal) -> list[str]:
    """Record every statement the journal's single pooled connection runs from now on."""
    statements: list[str] = []

    def log(query: Any) -> None:
        statements.append(query.query)

    async with journal._datastore._pool.acquire() as connection:
        connection.add_query_logger(log)
    return statements


async def test_a_batch_is_one_statement(pg_database: tuple[PgServer, str], raw: asyncpg.Connection) -> None:
    """No BEGIN, lock, append, notify, COMMIT: the batch is one call of cos_append_events."""
    journal = await PostgresJournal.open(settings_for(pg_database, pool_max_size=1, pool_min_size=1))
    try:
        await journal.migrate(8)
        statements = await statements_on_the_only_connection(journal)
        # The first use of a statement on a connection also prepares it (and asyncpg looks up its types).
        assert await journal.append_batch([request("warm-up", 0)]) == [None]
        statements.clear()
        batch = [request(f"one-trip-{n}", 0, count=2) for n in range(10)]
        assert await journal.append_batch(batch) == [None] * 10
        assert len(statements) == 1 and "cos_append_events" in statements[0]
        (conflict,) = await journal.append_batch([request("one-trip-0", 0)])
        assert isinstance(conflict, SequenceConflict)
        assert "revision 2" in str(conflict)
        assert len(statements) == 2
    finally:
        await journal.close()
    assert await raw.fetchval("SELECT count(*) FROM event_journal") == 21
    assert await raw.fetchval("SELECT count(*) FROM event_tag") == 21


async def test_an_append_notifies_its_shards_and_a_refused_one_does_not(
    journal: PostgresJournal, raw: asyncpg.Connection
) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()

    def on_notify(connection: Any, pid: int, channel: str, payload: str) -> None:
        received.put_nowait(payload)

    await raw.add_listener(APPEND_CHANNEL, on_notify)
    ids = {shard_of(f"notify-{n}", 8): f"notify-{n}" for n in range(40)}
    first, second = ids[1], ids[6]
    assert await journal.append_batch([request(second, 0), request(first, 0)]) == [None, None]
    assert await asyncio.wait_for(received.get(), 10) == "1,6"
    (conflict,) = await journal.append_batch([request(first, 0)])
    assert isinstance(conflict, SequenceConflict)
    assert await journal.append_batch([request(second, 1)]) == [None]
    # the refused append sent nothing: the next notification is the later append's
    assert await asyncio.wait_for(received.get(), 10) == "6"


async def test_recoveries_read_together_are_one_call_of_the_stored_read(
    pg_database: tuple[PgServer, str], raw: asyncpg.Connection
) -> None:
    journal = await PostgresJournal.open(settings_for(pg_database, pool_max_size=1, pool_min_size=1))
    try:
        await journal.migrate(8)
        assert await journal.append_batch([request(f"read-{n}", 0, count=2) for n in range(5)]) == [None] * 5
        statements = await statements_on_the_only_connection(journal)
        asked = [f"read-{n}" for n in range(5)] + ["nobody"]
        reads = CoalescedStateReads(journal, DecidingCommands())
        states = await asyncio.gather(*(reads.latest_state(entity_id) for entity_id in asked))
        await reads.close()
        assert [state.sequence_number if state else None for state in states] == [2, 2, 2, 2, 2, None]
        # Asked in the same turn of the loop, the six ids are read by one call of the stored function.
        assert len(statements) == 1 and "cos_latest_states" in statements[0]
    finally:
        await journal.close()


async def test_a_database_at_version_8_upgrades_to_the_append_function(
    journal: PostgresJournal, raw: asyncpg.Connection
) -> None:
    assert await journal.append_batch([request("before-9", 0)]) == [None]
    await raw.execute("DROP FUNCTION cos_append_events")
    await raw.execute("DELETE FROM cos_migrations WHERE version_number >= 9")
    assert await journal.migrate(8) == LATEST_VERSION
    rows = await raw.fetch("SELECT version_number, is_snapshot FROM cos_migrations ORDER BY 1")
    assert [record["version_number"] for record in rows] == list(range(6, LATEST_VERSION + 1))
    assert not next(record["is_snapshot"] for record in rows if record["version_number"] == 9)
    assert await journal.append_batch([request("before-9", 1), request("after-9", 0)]) == [None, None]
    assert [row.sequence_number for row in await journal.read_events("before-9")] == [1, 2]


async def test_a_shard_beyond_the_created_rows_is_added_and_locked(
    journal: PostgresJournal, raw: asyncpg.Connection
) -> None:
    wide = AppendRequest("wide", 40, 0, [b"w"], NOW_MS, "w")  # COS_NUM_SHARDS raised after migration
    assert await journal.append_batch([wide, request("narrow", 0)]) == [None, None]
    assert await raw.fetchval("SELECT count(*) FROM cos_shard_locks WHERE shard = 40") == 1
    assert (
        await raw.fetchval(
            "SELECT t.tag FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id "
            "WHERE j.persistence_id = 'wide'"
        )
        == "40"
    )


async def test_concurrent_latest_state_reads_go_in_few_queries(pg_database: tuple[PgServer, str]) -> None:
    journal = await PostgresJournal.open(settings_for(pg_database, pool_max_size=1, pool_min_size=1))
    try:
        await journal.migrate(8)
        ids = [f"recovering-{n}" for n in range(300)]
        assert await journal.append_batch([request(entity_id, 0) for entity_id in ids]) == [None] * 300
        statements = await statements_on_the_only_connection(journal)
        reads = CoalescedStateReads(journal, DecidingCommands())
        assert await reads.latest_state("warm-up") is None
        statements.clear()
        states = await asyncio.gather(*(reads.latest_state(entity_id) for entity_id in [*ids, "nobody"]))
        await reads.close()
        assert [state.payload if state else None for state in states] == [
            *(f"{entity_id}#1".encode() for entity_id in ids),
            None,
        ]
        # 301 ids, at most 256 per query
        assert len(statements) == 2
    finally:
        await journal.close()


async def backend_pid_of_appends(journal: PostgresJournal, entity_id: str, expected: int) -> int:
    assert await journal.append_batch([request(entity_id, expected)]) == [None]
    (kept,) = journal._datastore._kept
    return int(kept.get_server_pid())


async def test_the_writer_keeps_one_connection_between_batches_but_never_the_whole_pool(
    pg_database: tuple[PgServer, str],
) -> None:
    journal = await PostgresJournal.open(settings_for(pg_database, pool_max_size=2))
    try:
        await journal.migrate(8)
        first = await backend_pid_of_appends(journal, "kept", 0)
        assert await backend_pid_of_appends(journal, "kept", 1) == first  # no pool round trip between
        await journal.latest_state("kept")  # a second caller uses the pool's other connection
        assert len(journal._datastore._kept) == 1  # at most pool_max_size - 1 are kept
    finally:
        await journal.close()
    assert journal._datastore._kept == []

    alone = await PostgresJournal.open(settings_for(pg_database, pool_max_size=1, acquire_timeout_s=2))
    try:
        await alone.migrate(8)
        for expected in range(3):
            assert await alone.append_batch([request("single", expected)]) == [None]
            # with one connection in all, none is kept: other calls get it without waiting
            assert len(await alone.read_events("single")) == expected + 1
        assert alone._datastore._kept == []
    finally:
        await alone.close()


async def test_a_kept_connection_that_died_while_kept_is_replaced_not_used(
    journal: PostgresJournal, raw: asyncpg.Connection
) -> None:
    """The group-commit writer keeps its connection between appends; when the server ends that
    connection meanwhile (an outage, a restart), the next append gets a fresh one instead of calling
    a connection asyncpg has already handed back to the pool."""
    await journal.append_batch([request("kept-1", 0)])
    killed = await raw.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'chiefofstate'"
    )
    assert killed >= 1
    await asyncio.sleep(0.2)  # the client side notices the closed socket

    assert await journal.append_batch([request("kept-1", 1)]) == [None]
    assert [row.sequence_number for row in await journal.read_events("kept-1")] == [1, 2]


async def test_a_transaction_left_open_by_a_stalled_node_releases_its_locks(
    journal: PostgresJournal, raw: asyncpg.Connection
) -> None:
    """A member paused (or cut off) between two statements of a transaction must not keep its row
    locks: other members' lease acquisitions would wait on them until its connection died."""
    stalled = journal._datastore.connection("stall in a transaction")  # noqa: SLF001 - the node's own pool
    async with stalled as connection:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("SELECT 1 FROM cos_shard_locks WHERE shard = 0 FOR UPDATE")
        started = time.monotonic()
        # Another session waits for the row; the server ends the idle transaction and frees it.
        await raw.execute("SET lock_timeout = '30s'")
        await raw.execute("SELECT 1 FROM cos_shard_locks WHERE shard = 0 FOR UPDATE")
        waited = time.monotonic() - started
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)):
            await connection.execute("SELECT 1")  # its session was ended
    assert 4.0 <= waited < 25.0

"""What only PostgreSQL can show: several pools at once, concurrent commits, an unreachable server."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chiefofstate.core.errors import Internal, SequenceConflict, StoreUnavailable
from chiefofstate.core.sharding import shard_of
from chiefofstate.journal.port import EVENT_MANIFEST, SERIALIZER_ID, AppendRequest, Journal
from chiefofstate.journal.postgres import PostgresJournal, PostgresSettings
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


def settings_for(pg_database: tuple[PgServer, str], **overrides: object) -> PostgresSettings:
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
    return PostgresSettings(**options)  # type: ignore[arg-type]


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
    settings = PostgresSettings(host="127.0.0.1", port=port, connect_timeout_s=2)
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

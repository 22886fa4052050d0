"""The offset store contract: every test runs on SQLite and on PostgreSQL, against a migrated journal."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest

from chiefofstate.core.errors import Internal, StoreUnavailable
from chiefofstate.ports.journal import Journal
from chiefofstate.ports.offsets import Halt, OffsetStore, ShardRecord
from chiefofstate.stores.postgres.datastore import ConnectionSettings
from chiefofstate.stores.postgres.journal import PostgresJournal
from chiefofstate.stores.postgres.offsets import PostgresOffsetStore
from chiefofstate.stores.sqlite.journal import SqliteJournal
from chiefofstate.stores.sqlite.offsets import SqliteOffsetStore

NUM_SHARDS = 4
NOW = 1_700_000_000.0


@dataclass
class Stores:
    kind: str
    journal: Journal
    offsets: OffsetStore
    raw: Any  # aiosqlite.Connection or asyncpg.Connection

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            rows = await self.raw.execute_fetchall(re.sub(r"\$(\d+)", r"?\1", sql), args)
            return [tuple(row) for row in rows]
        return [tuple(row) for row in await self.raw.fetch(sql, *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        if self.kind == "sqlite":
            await self.raw.execute(re.sub(r"\$(\d+)", r"?\1", sql), args)
        else:
            await self.raw.execute(sql, *args)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    clock = lambda: NOW  # noqa: E731
    if request.param == "sqlite":
        path = tmp_path / "cos.db"
        journal: Journal = await SqliteJournal.open(path)
        await journal.migrate(NUM_SHARDS)
        offsets: OffsetStore = await SqliteOffsetStore.open(path, clock=clock)
        raw: Any = await aiosqlite.connect(path, isolation_level=None)
    else:
        server, database = request.getfixturevalue("pg_database")
        settings = ConnectionSettings(
            host=server.host,
            port=server.port,
            database=database,
            user=server.user,
            password=server.password,
            pool_max_size=2,
        )
        journal = await PostgresJournal.open(settings)
        await journal.migrate(NUM_SHARDS)
        offsets = await PostgresOffsetStore.open(settings, clock=clock)
        raw = await asyncpg.connect(server.dsn(database))
    try:
        yield Stores(request.param, journal, offsets, raw)
    finally:
        await offsets.close()
        await journal.close()
        await raw.close()


async def test_nothing_is_stored_for_a_new_read_side(stores: Stores) -> None:
    assert await stores.offsets.load("accounts") == {}


async def test_offsets_are_stored_in_upstreams_table_and_encoding(stores: Stores) -> None:
    await stores.offsets.save_offsets([("accounts", 3, 41)])
    await stores.offsets.save_offsets([("accounts", 3, 42)])  # an upsert, not a second row
    assert await stores.offsets.load("accounts") == {3: ShardRecord(offset=42)}
    rows = await stores.fetch(
        "SELECT projection_name, projection_key, current_offset, manifest, mergeable, last_updated "
        "FROM read_side_offsets"
    )
    assert rows == [
        ("accounts", "3", "42", "SEQ", False if stores.kind == "postgres" else 0, 1_700_000_000_000)
    ]


async def test_many_offsets_are_stored_in_one_call(stores: Stores) -> None:
    await stores.offsets.save_offsets([("a", 0, 5), ("a", 1, 6), ("b", 0, 7)])
    await stores.offsets.save_offsets([("a", 1, 9)])
    assert await stores.offsets.load("a") == {0: ShardRecord(offset=5), 1: ShardRecord(offset=9)}
    assert await stores.offsets.load("b") == {0: ShardRecord(offset=7)}
    await stores.offsets.save_offsets([])


async def test_offsets_written_by_upstream_are_read_and_unknown_manifests_refused(stores: Stores) -> None:
    await stores.execute(
        "INSERT INTO read_side_offsets VALUES ('legacy', '0', '17', 'SEQ', FALSE, 1), "
        "('legacy', '1', '5', 'SEQ', FALSE, 1)"
    )
    assert await stores.offsets.load("legacy") == {0: ShardRecord(offset=17), 1: ShardRecord(offset=5)}
    await stores.execute("INSERT INTO read_side_offsets VALUES ('odd', '0', 'x', 'TSP', FALSE, 1)")
    with pytest.raises(Internal, match="manifest 'TSP'"):
        await stores.offsets.load("odd")


async def test_pause_flags_live_in_upstreams_read_sides_table(stores: Stores) -> None:
    await stores.offsets.set_paused("accounts", [0, 1, 2, 3], True)
    await stores.offsets.set_paused("accounts", [1], False)
    loaded = await stores.offsets.load("accounts")
    assert {shard: record.paused for shard, record in loaded.items()} == {0: True, 1: False, 2: True, 3: True}
    rows = await stores.fetch(
        "SELECT projection_key, paused, last_updated FROM read_sides WHERE projection_name = 'accounts' "
        "ORDER BY projection_key"
    )
    assert [(key, bool(paused), at) for key, paused, at in rows] == [
        (str(shard), shard != 1, 1_700_000_000_000) for shard in range(4)
    ]


async def test_a_halt_is_stored_with_the_offset_reached_and_cleared_on_its_own(stores: Stores) -> None:
    halt = Halt(event_offset=12, reason="read handler answered successful=false", halted_at_ms=99)
    await stores.offsets.save_halt("accounts", 2, 11, halt)
    assert await stores.offsets.load("accounts") == {2: ShardRecord(offset=11, halt=halt)}
    await stores.offsets.save_halt("accounts", 3, None, halt)  # halted on the very first event
    assert (await stores.offsets.load("accounts"))[3] == ShardRecord(offset=None, halt=halt)
    await stores.offsets.clear_halt("accounts", 2)
    assert (await stores.offsets.load("accounts"))[2] == ShardRecord(offset=11)


async def test_skip_to_stores_the_offset_and_forgets_the_halt(stores: Stores) -> None:
    await stores.offsets.save_halt("accounts", 1, 5, Halt(9, "failed", 1))
    await stores.offsets.skip_to("accounts", 1, 9)
    assert await stores.offsets.load("accounts") == {1: ShardRecord(offset=9)}


async def test_reset_forgets_offset_and_halt_but_keeps_the_pause_flag(stores: Stores) -> None:
    await stores.offsets.save_halt("accounts", 0, 5, Halt(9, "failed", 1))
    await stores.offsets.set_paused("accounts", [0], True)
    await stores.offsets.reset("accounts", 0)
    assert await stores.offsets.load("accounts") == {0: ShardRecord(paused=True)}


async def test_read_sides_are_kept_apart(stores: Stores) -> None:
    await stores.offsets.save_offsets([("a", 0, 1)])
    await stores.offsets.set_paused("b", [0], True)
    await stores.offsets.save_halt("c", 0, None, Halt(3, "x", 1))
    assert await stores.offsets.load("a") == {0: ShardRecord(offset=1)}
    assert await stores.offsets.load("b") == {0: ShardRecord(paused=True)}
    assert await stores.offsets.load("c") == {0: ShardRecord(halt=Halt(3, "x", 1))}


async def test_a_closed_store_is_unavailable(stores: Stores) -> None:
    await stores.offsets.close()
    with pytest.raises(StoreUnavailable):
        await stores.offsets.load("accounts")

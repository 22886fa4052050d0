"""Offset commits and halts fenced by the projection's lease token (cluster mode): the contract on every store
with projection leases (PostgreSQL and in memory), each offset store beside the cluster store that
grants the leases, as in a node; and SQLite, which runs alone, refusing tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chiefofstate.core.errors import Internal
from chiefofstate.ports.cluster import ClusterStore, LeaseKey
from chiefofstate.ports.offsets import Halt, OffsetStore, ProjectionChange, ShardRecord
from chiefofstate.stores.memory.cluster import MemoryClusterDatabase, MemoryClusterStore
from chiefofstate.stores.memory.offsets import MemoryOffsetStore
from chiefofstate.stores.postgres.cluster import PostgresClusterStore
from chiefofstate.stores.postgres.datastore import ConnectionSettings
from chiefofstate.stores.postgres.journal import PostgresJournal
from chiefofstate.stores.postgres.offsets import PostgresOffsetStore
from tests.contract.conftest import opened_stores

TTL_S = 60.0
BALANCES_2 = LeaseKey.projection("balances", 2)
BALANCES_3 = LeaseKey.projection("balances", 3)


@dataclass
class Fenced:
    offsets: OffsetStore
    cluster: ClusterStore


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Fenced]:
    if request.param == "memory":
        database = MemoryClusterDatabase()
        yield Fenced(MemoryOffsetStore(database.projection_token), MemoryClusterStore(database))
        return
    server, name = request.getfixturevalue("pg_database")
    settings = ConnectionSettings(
        host=server.host, port=server.port, database=name, user=server.user, password=server.password
    )
    journal = await PostgresJournal.open(settings)
    await journal.migrate(8)
    offsets = await PostgresOffsetStore.open(settings)
    cluster = await PostgresClusterStore.open(settings)
    try:
        yield Fenced(offsets, cluster)
    finally:
        await cluster.close()
        await offsets.close()
        await journal.close()


async def offset_of(store: OffsetStore, read_side_id: str, shard: int) -> int | None:
    return (await store.load(read_side_id)).get(shard, ShardRecord()).offset


async def test_a_commit_under_the_current_token_is_written(stores: Fenced) -> None:
    token = await stores.cluster.acquire(BALANCES_2, "member-a", TTL_S)
    assert token is not None
    refused = await stores.offsets.save_offsets([("balances", 2, 41)], lease_tokens={("balances", 2): token})
    assert refused == set()
    assert await offset_of(stores.offsets, "balances", 2) == 41


async def test_a_former_owner_cannot_commit_once_another_member_took_the_lease(stores: Fenced) -> None:
    old = await stores.cluster.acquire(BALANCES_2, "member-a", TTL_S)
    current_3 = await stores.cluster.acquire(BALANCES_3, "member-a", TTL_S)
    assert old is not None and current_3 is not None
    await stores.offsets.save_offsets([("balances", 2, 10)], lease_tokens={("balances", 2): old})
    # member-a is paused; its lease is freed and member-b takes it (a higher token)
    await stores.cluster.release(BALANCES_2, "member-a", old)
    new = await stores.cluster.acquire(BALANCES_2, "member-b", TTL_S)
    assert new is not None and new > old

    refused = await stores.offsets.save_offsets(
        [("balances", 2, 99), ("balances", 3, 7), ("audit", 0, 5)],
        lease_tokens={("balances", 2): old, ("balances", 3): current_3},
    )

    assert refused == {("balances", 2)}
    assert await offset_of(stores.offsets, "balances", 2) == 10  # the stale commit wrote nothing
    assert await offset_of(stores.offsets, "balances", 3) == 7  # the rest of the batch is written
    assert await offset_of(stores.offsets, "audit", 0) == 5  # an entry without a token is not fenced
    assert (
        await stores.offsets.save_offsets([("balances", 2, 12)], lease_tokens={("balances", 2): new}) == set()
    )
    assert await offset_of(stores.offsets, "balances", 2) == 12


async def test_a_token_for_a_projection_never_leased_is_refused(stores: Fenced) -> None:
    refused = await stores.offsets.save_offsets([("never", 1, 3)], lease_tokens={("never", 1): 1})
    assert refused == {("never", 1)}
    assert await stores.offsets.load("never") == {}


async def test_a_halt_is_stored_only_under_the_current_token(stores: Fenced) -> None:
    old = await stores.cluster.acquire(BALANCES_2, "member-a", TTL_S)
    assert old is not None
    await stores.cluster.release(BALANCES_2, "member-a", old)
    new = await stores.cluster.acquire(BALANCES_2, "member-b", TTL_S)
    assert new is not None
    halt = Halt(event_offset=9, reason="read handler answered successful=false", halted_at_ms=1)

    assert not await stores.offsets.save_halt("balances", 2, 8, halt, lease_token=old)
    assert await stores.offsets.load("balances") == {}  # neither the offset nor the halt
    assert await stores.offsets.save_halt("balances", 2, 8, halt, lease_token=new)
    assert await stores.offsets.load("balances") == {2: ShardRecord(offset=8, halt=halt)}


async def test_a_manager_operation_is_stored_for_every_shard_or_for_none(stores: Fenced) -> None:
    token_2 = await stores.cluster.acquire(BALANCES_2, "member-a", TTL_S)
    token_3 = await stores.cluster.acquire(BALANCES_3, "member-b", TTL_S)
    assert token_2 is not None and token_3 is not None
    await stores.offsets.save_offsets([("balances", 2, 20), ("balances", 3, 30)])
    restart = ProjectionChange((2, 3), forget_offsets=True, clear_halts=True)
    # shard 3 moved to member-c after its projection was held under token_3: nothing is stored
    await stores.cluster.release(BALANCES_3, "member-b", token_3)
    moved = await stores.cluster.acquire(BALANCES_3, "member-c", TTL_S)
    assert moved is not None

    refused = await stores.offsets.apply_change(
        "balances", restart, lease_tokens={("balances", 2): token_2, ("balances", 3): token_3}
    )

    assert refused == {("balances", 3)}
    assert await offset_of(stores.offsets, "balances", 2) == 20  # not even the shard whose token held
    assert await offset_of(stores.offsets, "balances", 3) == 30
    pause = ProjectionChange((2, 3), paused=True)
    assert (
        await stores.offsets.apply_change(
            "balances", pause, lease_tokens={("balances", 2): token_2, ("balances", 3): moved}
        )
        == set()
    )
    assert {shard: record.paused for shard, record in (await stores.offsets.load("balances")).items()} == {
        2: True,
        3: True,
    }


async def test_sqlite_runs_alone_and_refuses_lease_tokens(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with opened_stores("sqlite", request, tmp_path) as opened:
        with pytest.raises(Internal, match="runs alone"):
            await opened.offsets.save_offsets([("balances", 0, 1)], lease_tokens={("balances", 0): 1})
        with pytest.raises(Internal, match="runs alone"):
            await opened.offsets.save_halt("balances", 0, None, Halt(1, "failed", 1), lease_token=1)
        with pytest.raises(Internal, match="runs alone"):
            await opened.offsets.apply_change(
                "balances", ProjectionChange((0,), paused=True), lease_tokens={("balances", 0): 1}
            )
        assert await opened.offsets.load("balances") == {}
        assert await opened.offsets.save_offsets([("balances", 0, 1)]) == set()

"""Appends fenced by lease token: the contract on every journal, then what only PostgreSQL can show (a
takeover racing appends, renewals beside appends, a node of the previous release)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import pytest

from chiefofstate.core.errors import Code, LeaseLost, SequenceConflict
from chiefofstate.ports.cluster import LeaseKey
from chiefofstate.ports.journal import AppendRequest, Journal
from chiefofstate.stores.postgres.cluster import PostgresClusterStore
from tests.contract.conftest import NUM_SHARDS, Backend
from tests.contract.test_journal_contract import append_ok, entities_in_shard, payload, request

SHARD = 3
OTHER_SHARD = 5


@pytest.fixture
async def journal(backend: Backend) -> Journal:
    """The journal on the backend whose shard rows the tests set tokens in (the SQL stores)."""
    return await backend.migrated()


def fenced(
    entity_id: str, expected: int, token: int | None, shard: int = SHARD, count: int = 1
) -> AppendRequest:
    return dataclasses.replace(request(entity_id, expected, count=count, shard=shard), lease_token=token)


async def set_token(backend: Backend, shard: int, token: int) -> None:
    """What an acquisition by another node does to the shard's row, as far as appends can tell."""
    await backend.raw.execute("UPDATE cos_shard_locks SET lease_token = $1 WHERE shard = $2", token, shard)


async def written(journal: Journal, entity_id: str) -> list[int]:
    return [row.sequence_number for row in await journal.read_events(entity_id)]


# ---------------------------------------------------------------------------------------------- contract


async def test_a_fenced_append_with_the_current_token_commits(backend: Backend, journal: Journal) -> None:
    await set_token(backend, SHARD, 3)
    await append_ok(journal, fenced("holder", 0, 3, count=2))
    await append_ok(journal, fenced("holder", 2, 3))
    assert await written(journal, "holder") == [1, 2, 3]
    assert [row.payload for row in await journal.read_shard(SHARD, 0, 10)][0] == payload("holder", 1)


async def test_an_append_under_a_superseded_token_is_refused_and_writes_nothing_while_the_batch_commits(
    backend: Backend, journal: Journal
) -> None:
    await set_token(backend, SHARD, 3)
    await set_token(backend, OTHER_SHARD, 8)
    await append_ok(journal, fenced("stale", 0, 3))
    await set_token(backend, SHARD, 4)  # another node acquired the shard

    results = await journal.append_batch(
        [
            fenced("unfenced", 0, None),
            fenced("stale", 1, 3, count=3),
            fenced("current", 0, 4),
            fenced("elsewhere", 0, 8, shard=OTHER_SHARD),
        ]
    )

    assert results[0] is None and results[2] is None and results[3] is None
    refused = results[1]
    assert isinstance(refused, LeaseLost) and refused.code == Code.UNAVAILABLE
    assert "'stale'" in str(refused) and f"shard {SHARD}" in str(refused)
    assert await written(journal, "stale") == [1]
    assert await written(journal, "unfenced") == [1]
    assert await written(journal, "current") == [1]
    assert await written(journal, "elsewhere") == [1]
    # the refused request left no trace: its revision is free for the shard's new owner
    await append_ok(journal, fenced("stale", 1, 4))
    assert await written(journal, "stale") == [1, 2]


async def test_an_unfenced_append_still_appends_whatever_the_token(
    backend: Backend, journal: Journal
) -> None:
    await set_token(backend, SHARD, 41)
    await append_ok(journal, fenced("alone", 0, None), fenced("alone-too", 0, None, shard=OTHER_SHARD))
    assert await written(journal, "alone") == [1]


async def test_a_lost_lease_is_reported_before_a_sequence_conflict(
    backend: Backend, journal: Journal
) -> None:
    await set_token(backend, SHARD, 2)
    await append_ok(journal, fenced("both", 0, 2))
    (result,) = await journal.append_batch([fenced("both", 0, 1)])
    assert isinstance(result, LeaseLost)
    (result,) = await journal.append_batch([fenced("both", 0, 2)])
    assert isinstance(result, SequenceConflict)


async def test_a_token_for_a_shard_never_leased_is_refused(journal: Journal) -> None:
    beyond = NUM_SHARDS + 3  # no row until this append adds it, with no lease on it
    results = await journal.append_batch([fenced("far", 0, 1, shard=beyond), fenced("near", 0, None)])
    assert isinstance(results[0], LeaseLost) and results[1] is None
    assert await written(journal, "far") == []
    (result,) = await journal.append_batch([fenced("never", 0, 1)])  # a shard row at token 0
    assert isinstance(result, LeaseLost)


async def test_fencing_holds_when_a_batch_is_written_one_request_at_a_time(
    backend: Backend, journal: Journal
) -> None:
    # Two requests of one entity send the batch down the one-request-per-transaction path.
    await set_token(backend, SHARD, 6)
    first, second = entities_in_shard(SHARD, 2, prefix="split")
    results = await journal.append_batch(
        [fenced(first, 0, 6), fenced(first, 1, 6), fenced(second, 0, 5), fenced(second, 0, None)]
    )
    assert results[:2] == [None, None]
    assert isinstance(results[2], LeaseLost) and results[3] is None
    assert await written(journal, first) == [1, 2]
    assert await written(journal, second) == [1]


# ------------------------------------------------------------------------------------ PostgreSQL only

# Leases are kept, and the append function stored, on PostgreSQL only: SQLite runs alone.
ON_POSTGRES = pytest.mark.parametrize(
    "target", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
async def leases(backend: Backend) -> AsyncIterator[PostgresClusterStore]:
    assert backend.pg_settings is not None  # the tests below run on PostgreSQL only (ON_POSTGRES)
    store = await PostgresClusterStore.open(backend.pg_settings)
    try:
        yield store
    finally:
        await store.close()


@ON_POSTGRES
async def test_once_a_takeover_returns_no_append_of_the_old_owner_lands(
    backend: Backend, journal: Journal, leases: PostgresClusterStore
) -> None:
    key = LeaseKey.entity_shard(SHARD)
    old = await leases.acquire(key, "old", 0.3)
    assert old is not None
    refused: list[Exception] = []

    async def old_owner_keeps_appending() -> None:
        revision = 0
        while True:
            (result,) = await journal.append_batch([fenced("contended", revision, old)])
            if result is not None:
                refused.append(result)
                return
            revision += 1

    appending = asyncio.create_task(old_owner_keeps_appending())
    successor = await backend.migrated()  # the new owner's own pool
    deadline = time.monotonic() + 30
    new = None
    while new is None:
        assert time.monotonic() < deadline, "the old owner's lease never expired"
        await asyncio.sleep(0.02)
        new = await leases.acquire(key, "new", 60.0)
    seen = await written(successor, "contended")
    await asyncio.wait_for(appending, 30)
    assert isinstance(refused[0], LeaseLost)
    assert await written(successor, "contended") == seen  # nothing landed after the takeover
    await append_ok(successor, fenced("contended", len(seen), new))


@ON_POSTGRES
async def test_renewals_and_acquisitions_beside_appends_on_the_same_shards_never_deadlock(
    backend: Backend, journal: Journal, leases: PostgresClusterStore
) -> None:
    keys = [LeaseKey.entity_shard(shard) for shard in reversed(range(NUM_SHARDS))]
    tokens = await leases.acquire_many(keys, "node", 60.0)
    held = [(key, tokens[key]) for key in keys]  # renewed in the reverse of the appends' lock order
    writers = [entities_in_shard(shard, 1, prefix="busy")[0] for shard in range(NUM_SHARDS)]
    stop = asyncio.Event()

    async def append_across_all_shards() -> int:
        revision = 0
        while not stop.is_set():
            batch = [
                fenced(entity, revision, tokens[LeaseKey.entity_shard(shard)], shard=shard)
                for shard, entity in enumerate(writers)
            ]
            await append_ok(journal, *batch)
            revision += 1
        return revision

    appending = asyncio.create_task(append_across_all_shards())
    try:
        for _ in range(100):
            assert await leases.renew_all("node", held, 60.0) == set(keys)
            # refused, but it locks every row on its way, in order, as a takeover would
            assert await leases.acquire_many(keys, "other", 60.0) == {}
    finally:
        stop.set()
        revisions = await asyncio.wait_for(appending, 30)
    assert revisions > 0


@ON_POSTGRES
async def test_a_node_of_the_previous_release_still_appends_unfenced(
    backend: Backend, journal: Journal
) -> None:
    await set_token(backend, SHARD, 9)
    # the call of migration 9's signature, with nine arguments
    rows = await backend.raw.fetch(
        "SELECT entity_id, current_sequence FROM cos_append_events($1::int[], $2::text[], $3::bigint[], "
        "$4::text[], $5::bigint[], $6::text[], $7::bigint[], $8::bytea[], $9::text[])",
        [SHARD],
        ["previous"],
        [0],
        ["previous"],
        [1],
        ["w"],
        [1],
        [b"p"],
        [str(SHARD)],
    )
    assert rows == [("previous", 0)]
    assert await written(journal, "previous") == [1]

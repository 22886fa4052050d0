"""Whole-read-side operations, all or nothing (readside/operations.py): holds, one fenced change, releases."""

from __future__ import annotations

import asyncio

import pytest

from chiefofstate.core.errors import Code, CosError, Unavailable
from chiefofstate.ports.cluster import LeaseKey
from chiefofstate.readside.operations import ShardHold, change_all_shards
from chiefofstate.stores.memory.cluster import MemoryClusterDatabase, MemoryClusterStore
from chiefofstate.stores.memory.journal import MemoryJournal
from chiefofstate.stores.memory.offsets import MemoryOffsetStore
from tests.support.readside import append_events


class Shards:
    """Projections of three shards, each leased by "member-a", held and released as they would be."""

    def __init__(self) -> None:
        self.database = MemoryClusterDatabase()
        self.cluster = MemoryClusterStore(self.database)
        self.store = MemoryOffsetStore(self.database.projection_token)
        self.journal = MemoryJournal()
        self.tokens: dict[int, int] = {}
        self.held: set[int] = set()
        self.released: list[int] = []

    async def lease_all(self) -> None:
        for shard in range(3):
            token = await self.cluster.acquire(LeaseKey.projection("a", shard), "member-a", 60.0)
            assert token is not None
            self.tokens[shard] = token

    def hold(self, shard: int, *, refuse: CosError | None = None, delay_s: float = 0.0) -> ShardHold:
        async def hold() -> int | None:
            await asyncio.sleep(delay_s)
            if refuse is not None:
                raise refuse
            self.held.add(shard)
            return self.tokens[shard]

        async def release() -> None:
            self.held.discard(shard)
            self.released.append(shard)

        return ShardHold(shard, hold, release)


async def test_every_shard_changes_in_one_go_and_every_hold_is_released() -> None:
    shards = Shards()
    await shards.lease_all()
    await append_events(shards.journal, "x", 1, 2)
    await shards.store.save_offsets([("a", 1, 1)], lease_tokens={("a", 1): shards.tokens[1]})

    skipped = await change_all_shards(
        "skip", "a", [shards.hold(n) for n in range(3)], shards.store, shards.journal, 60.0
    )

    assert skipped == [(1, 2)]  # the next event after shard 1's offset; the others have none
    assert (await shards.store.load("a"))[1].offset == 2
    assert shards.held == set() and sorted(shards.released) == [0, 1, 2]


async def test_a_shard_that_cannot_be_held_changes_nothing_and_the_others_are_released() -> None:
    shards = Shards()
    await shards.lease_all()
    busy = CosError("read side a shard 2: another manager operation on it", code=Code.FAILED_PRECONDITION)
    holds = [shards.hold(0), shards.hold(1), shards.hold(2, refuse=busy)]

    with pytest.raises(CosError, match="shard 2"):
        await change_all_shards("pause", "a", holds, shards.store, shards.journal, 60.0)

    assert await shards.store.load("a") == {}
    assert sorted(shards.released) == [0, 1]  # never the shard another operation holds


async def test_a_projection_that_moved_after_its_hold_refuses_the_whole_change() -> None:
    shards = Shards()
    await shards.lease_all()
    key = LeaseKey.projection("a", 1)
    holds = [shards.hold(n) for n in range(3)]
    # shard 1's lease goes to another member after member-a answered the hold with its token
    await shards.cluster.release(key, "member-a", shards.tokens[1])
    assert await shards.cluster.acquire(key, "member-b", 60.0) is not None

    with pytest.raises(Unavailable, match="shard 1 moved") as refused:
        await change_all_shards("pause", "a", holds, shards.store, shards.journal, 60.0)

    assert refused.value.code is Code.UNAVAILABLE
    assert await shards.store.load("a") == {}
    assert sorted(shards.released) == [0, 1, 2]


async def test_holds_that_took_too_long_change_nothing() -> None:
    shards = Shards()
    await shards.lease_all()
    holds = [shards.hold(0), shards.hold(1, delay_s=0.3), shards.hold(2)]

    with pytest.raises(Unavailable, match="took more than"):
        await change_all_shards("restart", "a", holds, shards.store, shards.journal, 0.4)

    assert await shards.store.load("a") == {}
    assert sorted(shards.released) == [0, 1, 2]

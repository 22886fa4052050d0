"""The runtime of a cluster member: projections run only under their lease, start from the stored
record (offset, pause, halt) wherever they ran before, and a fenced offset commit stops them here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chiefofstate.config.read_sides import DeliverySettings, ReadSideSettings, ReadSidesSettings
from chiefofstate.core.readside_rules import Backoff, ProjectionState
from chiefofstate.ports.cluster import LeaseKey
from chiefofstate.ports.offsets import Halt, OffsetStore, ShardRecord
from chiefofstate.readside.delivery import GuardedReadHandler
from chiefofstate.readside.offset_committer import OffsetCommitter
from chiefofstate.readside.projection import ProjectionContext
from chiefofstate.readside.runtime import ReadSideRuntime
from chiefofstate.stores.memory.cluster import MemoryClusterDatabase, MemoryClusterStore
from chiefofstate.stores.memory.journal import MemoryJournal
from chiefofstate.stores.memory.offsets import MemoryOffsetStore
from tests.support.readside import (
    FailingOffsetStore,
    ScriptedHandler,
    append_events,
    eventually,
    eventually_equal,
    failing_for,
)

SHARDS = 4
TTL_S = 60.0


class Member:
    """One member's read sides on a journal, offset store and cluster database shared with others."""

    def __init__(self, journal: MemoryJournal, store: OffsetStore) -> None:
        self.handler = ScriptedHandler()
        self.committer = OffsetCommitter(store, 0.01, fenced=True)
        self.runtime = ReadSideRuntime(
            ReadSidesSettings(enabled=True, read_sides=(ReadSideSettings("a", "127.0.0.1", 1),)),
            SHARDS,
            ProjectionContext(
                journal=journal,
                store=store,
                committer=self.committer,
                delivery=DeliverySettings(
                    poll_interval_s=0.05,
                    commit_interval_s=0.01,
                    restart_backoff=Backoff(minimum_s=0.01, maximum_s=0.05, jitter=0.0),
                ),
                slots=asyncio.Semaphore(8),
            ),
            lambda read_side: GuardedReadHandler(read_side, self.handler, None),
        )
        self.committer.on_fenced = self.runtime.drop_projection


class Rig:
    def __init__(self) -> None:
        self.journal = MemoryJournal()
        self.database = MemoryClusterDatabase()
        self.leases = MemoryClusterStore(self.database)
        self.store = MemoryOffsetStore(self.database.projection_token)
        self.members: list[Member] = []

    async def member(self, store: OffsetStore | None = None) -> Member:
        member = Member(self.journal, store or self.store)
        await member.runtime.prepare(apply_auto_start=not self.members)
        self.members.append(member)
        return member

    async def lease(self, owner: str, shard: int) -> int:
        key = LeaseKey.projection("a", shard)
        for held in await self.leases.holders():
            if held.key == key:  # another member gives it up (or loses it: the token goes up all the same)
                await self.leases.release(key, held.owner, held.token)
        token = await self.leases.acquire(key, owner, TTL_S)
        assert token is not None
        return token

    async def stored(self, shard: int) -> int | None:
        record = (await self.store.load("a")).get(shard)
        return None if record is None else record.offset


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    made = Rig()
    yield made
    for member in made.members:
        await member.runtime.close()


async def test_a_member_runs_only_the_projections_whose_lease_it_was_given(rig: Rig) -> None:
    member = await rig.member()
    await append_events(rig.journal, "x", 1, 3)
    await append_events(rig.journal, "y", 2, 2)
    member.runtime.run_projection(("a", 1), await rig.lease("m1", 1))
    await eventually(lambda: len(member.handler.calls) == 3)
    await asyncio.sleep(0.1)
    assert {shard for _, _, shard in member.handler.calls} == {1}
    assert member.runtime.running_here() == [("a", 1)]
    await eventually_equal(lambda: rig.stored(1), 3)


async def test_a_projection_handed_over_continues_on_the_next_member_where_it_stopped(rig: Rig) -> None:
    first, second = await rig.member(), await rig.member()
    await append_events(rig.journal, "x", 1, 3)
    first.runtime.run_projection(("a", 1), await rig.lease("m1", 1))
    await eventually(lambda: len(first.handler.calls) == 3)
    await first.runtime.stop_projection(("a", 1))
    assert await rig.stored(1) == 3  # stored under the lease before it is released
    second.runtime.run_projection(("a", 1), await rig.lease("m2", 1))
    await append_events(rig.journal, "x", 1, 2)
    second.runtime.wake_all()
    await eventually(lambda: len(second.handler.calls) == 2)
    assert [revision for _, revision, _ in second.handler.calls] == [4, 5]  # nothing again, nothing skipped


async def test_a_halted_or_paused_projection_stays_so_on_the_member_it_moves_to(rig: Rig) -> None:
    member = await rig.member()
    await append_events(rig.journal, "x", 1, 2)
    await append_events(rig.journal, "y", 2, 2)
    await rig.store.save_halt("a", 1, None, Halt(1, "the read handler refused it", 5))
    await rig.store.set_paused("a", [2], True)
    member.runtime.run_projection(("a", 1), await rig.lease("m1", 1))
    member.runtime.run_projection(("a", 2), await rig.lease("m1", 2))
    await eventually(lambda: len(member.runtime.running_here()) == 2)
    await asyncio.sleep(0.15)
    assert member.handler.calls == []
    assert member.runtime.states("a") == {1: ProjectionState.HALTED, 2: ProjectionState.PAUSED}


async def test_a_fenced_offset_commit_stops_the_projection_here(rig: Rig) -> None:
    former = await rig.member()
    await append_events(rig.journal, "x", 1, 2)
    former.runtime.run_projection(("a", 1), await rig.lease("m1", 1))
    await eventually_equal(lambda: rig.stored(1), 2)
    # The lease moves on while this member does not notice (a pause): its next commit is refused.
    await rig.lease("m2", 1)
    await append_events(rig.journal, "x", 1, 3)
    former.runtime.wake_all()
    await eventually(lambda: former.runtime.running_here() == [])
    assert former.committer.refused >= 1
    assert await rig.stored(1) == 2  # nothing written under the superseded token
    await append_events(rig.journal, "x", 1, 1)
    former.runtime.wake_all()
    calls = len(former.handler.calls)
    await asyncio.sleep(0.15)
    assert len(former.handler.calls) == calls  # it delivers nothing more


async def test_a_lost_lease_stops_the_projection_without_storing_anything_more(rig: Rig) -> None:
    member = await rig.member()
    await append_events(rig.journal, "x", 1, 1)
    member.runtime.run_projection(("a", 1), await rig.lease("m1", 1))
    await eventually_equal(lambda: rig.stored(1), 1)
    member.runtime.drop_projection(("a", 1))
    await eventually(lambda: member.runtime.running_here() == [])
    await append_events(rig.journal, "x", 1, 1)
    await asyncio.sleep(0.15)
    assert len(member.handler.calls) == 1


async def test_a_projection_whose_record_cannot_be_read_yet_starts_once_the_store_answers(rig: Rig) -> None:
    failing = FailingOffsetStore()
    member = await rig.member(failing)
    failing.failures_left = 3  # the database goes away as the lease is granted
    await append_events(rig.journal, "x", 1, 2)
    member.runtime.run_projection(("a", 1), await rig.lease("m1", 1))
    await eventually(lambda: len(member.handler.calls) == 2)
    assert failing.failures_left == 0


async def test_nothing_is_delivered_while_the_lease_is_not_usable_by_the_members_clock(rig: Rig) -> None:
    member = await rig.member()
    usable = {"now": False}
    member.runtime.lease_usable = lambda key: usable["now"]
    await append_events(rig.journal, "x", 1, 2)
    member.runtime.run_projection(("a", 1), await rig.lease("m1", 1))
    await eventually(lambda: member.runtime.running_here() == [("a", 1)])
    await asyncio.sleep(0.2)
    assert member.handler.calls == []
    usable["now"] = True  # a renewal was confirmed in time
    await eventually(lambda: len(member.handler.calls) == 2)


async def test_a_former_owner_cannot_store_a_halt(rig: Rig) -> None:
    former = await rig.member()
    former.handler.answer = failing_for(("x", 1))
    former.runtime.run_projection(("a", 1), await rig.lease("m1", 1))
    await eventually(lambda: former.runtime.running_here() == [("a", 1)])
    await rig.lease("m2", 1)  # the lease moves on while this member does not notice
    await append_events(rig.journal, "x", 1, 1)
    former.runtime.wake_all()
    await eventually(lambda: former.runtime.running_here() == [])
    assert len(former.handler.calls) == 1
    assert await rig.store.load("a") == {}  # no halt: the projection's next owner delivers the event


class CountingStore(FailingOffsetStore):
    """Counts the record loads of each read side."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def load(self, read_side_id: str) -> dict[int, ShardRecord]:
        self.loads += 1
        await asyncio.sleep(0.01)  # a database round trip: the grants of one round arrive meanwhile
        return await super().load(read_side_id)


async def test_projections_granted_together_read_their_read_sides_records_once(rig: Rig) -> None:
    store = CountingStore()
    store.inner = rig.store  # fenced by the rig's leases
    member = await rig.member(store)
    await store.inner.set_paused("a", [3], True)
    loads = store.loads
    tokens = [await rig.lease("m1", shard) for shard in range(SHARDS)]
    for shard, token in enumerate(tokens):  # one coordinator round taking four leases
        member.runtime.run_projection(("a", shard), token)
    await eventually(lambda: len(member.runtime.running_here()) == SHARDS)
    assert store.loads - loads == 1
    assert member.runtime.states("a")[3] is ProjectionState.PAUSED  # each starts from its own record

    # A grant after that load began reads again: the record may have changed since (its former owner
    # stored it before releasing the lease).
    await member.runtime.stop_projection(("a", 3))
    await store.inner.set_paused("a", [3], False)
    member.runtime.run_projection(("a", 3), await rig.lease("m1", 3))
    await eventually(lambda: member.runtime.states("a").get(3) is ProjectionState.RUNNING)
    assert store.loads - loads == 2

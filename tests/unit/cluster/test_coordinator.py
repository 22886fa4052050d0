"""Coordinators of several members on one in-memory cluster database, rounds driven one by one, both
clocks (each member's monotonic clock and the database's) moved by the test."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass, field, replace

import pytest

from chiefofstate.cluster.coordinator import Coordinator
from chiefofstate.cluster.ownership import LeaseBook, ShardGateOfLeases
from chiefofstate.cluster.routes import RoutingTable
from chiefofstate.config.cluster import CLUSTER_OFF, ClusterSettings
from chiefofstate.core.errors import ShardNotHere, StoreUnavailable
from chiefofstate.core.placement import assign, shard_key
from chiefofstate.ports.cluster import LeaseKey
from chiefofstate.stores.memory.cluster import MemoryClusterDatabase, MemoryClusterStore

SHARDS = 16


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class HostStandIn:
    """The two things a coordinator asks of the entity host, recorded."""

    forgotten: list[int] = field(default_factory=list)
    busy: set[int] = field(default_factory=set)

    def forget_shard(self, shard: int) -> int:
        self.forgotten.append(shard)
        return 0

    async def wait_until_idle(self, shards: Collection[int], timeout_s: float) -> bool:
        return not (self.busy & set(shards))


class FlakyStore(MemoryClusterStore):
    """A member's view of the database that the test can cut off."""

    down = False

    async def renew_all(self, owner: str, held: object, ttl_s: float) -> set[LeaseKey]:  # type: ignore[override]
        if self.down:
            raise StoreUnavailable("the database went away")
        return await super().renew_all(owner, held, ttl_s)  # type: ignore[arg-type]

    async def heartbeat(self, member_id: str) -> None:
        if self.down:
            raise StoreUnavailable("the database went away")
        await super().heartbeat(member_id)


@dataclass
class Member:
    name: str
    coordinator: Coordinator
    book: LeaseBook
    gate: ShardGateOfLeases
    routes: RoutingTable
    host: HostStandIn
    store: FlakyStore
    clock: Clock


@dataclass
class World:
    database: MemoryClusterDatabase
    db_clock: Clock
    members: dict[str, Member] = field(default_factory=dict)
    settings: ClusterSettings = field(default_factory=lambda: replace(CLUSTER_OFF, enabled=True))

    async def join(self, name: str, replica_count: int = 1) -> Member:
        clock = Clock(self.db_clock.now)
        book = LeaseBook(self.settings.leases, clock)
        routes = RoutingTable(f"{name}:25520")
        host = HostStandIn()
        store = FlakyStore(self.database)
        settings = replace(self.settings, host=name, replica_count=replica_count)
        coordinator = Coordinator(
            settings,
            SHARDS,
            name,
            store,
            book,
            routes,
            host,
            drain_timeout_s=1.0,
            clock=clock,  # type: ignore[arg-type]
        )
        await store.join(name, settings.advertised_address, SHARDS, member_ttl_s=settings.members.ttl_s)
        member = Member(name, coordinator, book, ShardGateOfLeases(book, SHARDS), routes, host, store, clock)
        self.members[name] = member
        return member

    def advance(self, seconds: float) -> None:
        self.db_clock.now += seconds
        for member in self.members.values():
            member.clock.now += seconds

    async def rounds(self, count: int = 3, *, step_s: float = 0.5) -> None:
        for _ in range(count):
            for member in list(self.members.values()):
                try:
                    await member.coordinator.round()
                except StoreUnavailable:
                    member.coordinator._drop_lapsed()
            await asyncio.sleep(0)  # let handovers run
            await asyncio.sleep(0)
            self.advance(step_s)

    def owners(self) -> dict[int, str]:
        owners: dict[int, str] = {}
        for name, member in self.members.items():
            for key, _ in member.book.held():
                assert key.shard not in owners, f"shard {key.shard} held by {owners[key.shard]} and {name}"
                owners[key.shard] = name
        return owners


@pytest.fixture
def world() -> World:
    clock = Clock()
    return World(MemoryClusterDatabase(clock=clock), clock)


def placed(members: Collection[str]) -> dict[int, str]:
    assignment = assign([shard_key(shard) for shard in range(SHARDS)], members)
    return {shard: assignment[shard_key(shard)] for shard in range(SHARDS)}


async def test_members_share_every_shard_once_as_placement_says(world: World) -> None:
    for name in ("a", "b", "c"):
        await world.join(name)
    await world.rounds(4)
    assert world.owners() == placed({"a", "b", "c"})
    for member in world.members.values():
        assert {shard: route.address for shard, route in member.routes.owners().items()} == {
            shard: f"{owner}:25520" for shard, owner in placed({"a", "b", "c"}).items()
        }


async def test_a_member_that_leaves_hands_its_shards_over_within_a_round(world: World) -> None:
    for name in ("a", "b", "c"):
        await world.join(name)
    await world.rounds(4)
    tokens_before = {shard: world.database.shard_token(shard) for shard in range(SHARDS)}
    leaving = world.members.pop("c")
    await leaving.coordinator.leave()
    await leaving.coordinator.close()
    assert leaving.book.held() == []
    await world.rounds(2)
    assert world.owners() == placed({"a", "b"})
    for shard, owner in placed({"a", "b", "c"}).items():
        if owner == "c":
            # A new acquisition: the old token can never be presented again.
            assert world.database.shard_token(shard) > tokens_before[shard]


async def test_a_leaving_member_keeps_reading_the_routes_for_what_it_still_forwards(world: World) -> None:
    for name in ("a", "b", "c"):
        await world.join(name)
    await world.rounds(4)
    leaving = world.members.pop("c")
    await leaving.coordinator.leave()  # its API servers may still take requests while the node stops
    await world.rounds(2)
    leaving.coordinator.wake()
    expected = {shard: f"{owner}:25520" for shard, owner in placed({"a", "b"}).items()}
    for _ in range(1000):
        if {shard: route.address for shard, route in leaving.routes.owners().items()} == expected:
            break
        await asyncio.sleep(0.01)
    assert {shard: route.address for shard, route in leaving.routes.owners().items()} == expected
    await leaving.coordinator.close()


async def test_a_woken_coordinator_takes_a_departed_members_shards_without_waiting_for_its_round(
    world: World,
) -> None:
    for name in ("a", "b", "c"):
        await world.join(name)
    await world.rounds(4)
    stayers = [world.members["a"], world.members["b"]]
    for member in stayers:
        await member.coordinator.start()
        member.coordinator._round_s = 3600.0  # no periodic round during the test: only a wake-up runs one
    leaving = world.members.pop("c")
    await leaving.coordinator.leave()
    await leaving.coordinator.close()
    for member in stayers:
        member.coordinator.wake()  # as the departure's NOTIFY does
    for _ in range(1000):
        if world.owners() == placed({"a", "b"}):
            break
        await asyncio.sleep(0.01)
    assert world.owners() == placed({"a", "b"})
    for member in stayers:
        await member.coordinator.close()


async def test_a_dead_members_shards_move_once_its_leases_expire_by_the_database_clock(world: World) -> None:
    for name in ("a", "b", "c"):
        await world.join(name)
    await world.rounds(4)
    dead = world.members.pop("c")
    dead_shards = {key.shard for key, _ in dead.book.held()}
    assert dead_shards
    await world.rounds(10, step_s=0.5)  # 5 s: member TTL and lease TTL (10 s) not yet passed
    assert not dead_shards & set(world.owners())
    await world.rounds(14, step_s=0.5)  # past both TTLs
    assert world.owners() == placed({"a", "b"})


async def test_a_member_alone_takes_nothing_while_more_are_expected(world: World) -> None:
    first = await world.join("a", replica_count=2)
    await world.rounds(3)
    assert first.book.held() == []
    with pytest.raises(ShardNotHere):
        first.gate.admit(0)
    await world.join("b", replica_count=2)
    await world.rounds(3)
    assert world.owners() == placed({"a", "b"})


async def test_leases_lapse_by_the_local_clock_when_the_database_cannot_be_reached(world: World) -> None:
    member = await world.join("a")
    await world.rounds(2)
    shard = next(key.shard for key, _ in member.book.held())
    token = member.gate.admit(shard)
    assert token is not None
    member.store.down = True
    await world.rounds(12, step_s=0.5)  # 6 s: still within the usable window (TTL 10 s − margin 2 s)
    assert member.gate.admit(shard) == token
    await world.rounds(6, step_s=0.5)  # 9 s in all: past it
    with pytest.raises(ShardNotHere):
        member.gate.admit(shard)
    assert shard in member.host.forgotten
    # Nobody else took it, so once the database is back the member takes it again, under a new token:
    # state cached under the old one is never trusted (entities/gate.py).
    member.store.down = False
    await world.rounds(2)
    assert member.gate.admit(shard) != token

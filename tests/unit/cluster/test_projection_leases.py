"""Read-side projections on the coordinators' rounds: one member per (read side, shard), placed by
rendezvous hashing over the members that run the read side, handed over on leave, moved on death,
dropped when the lease lapses by the local clock. Memory cluster store, clocks driven by the test."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

import pytest

from chiefofstate.cluster.coordinator import Coordinator
from chiefofstate.cluster.ownership import LeaseBook
from chiefofstate.cluster.routes import RoutingTable
from chiefofstate.config.cluster import CLUSTER_OFF, ClusterSettings
from chiefofstate.core.errors import StoreUnavailable
from chiefofstate.core.placement import assign, read_side_key
from chiefofstate.ports.cluster import Member
from chiefofstate.stores.memory.cluster import MemoryClusterDatabase
from tests.unit.cluster.test_coordinator import Clock, FlakyStore, HostStandIn

SHARDS = 8
Key = tuple[str, int]


@dataclass
class RunnerStandIn:
    """The read sides of one member, as the coordinator drives them, recorded."""

    read_side_ids: list[str]
    running: dict[Key, int] = field(default_factory=dict)
    stopped: list[Key] = field(default_factory=list)  # handed over: offset stored first
    dropped: list[Key] = field(default_factory=list)  # lost
    auto_start: list[bool] = field(default_factory=list)

    def enabled_read_side_ids(self) -> list[str]:
        return list(self.read_side_ids)

    async def prepare(self, *, apply_auto_start: bool) -> None:
        self.auto_start.append(apply_auto_start)

    def run_projection(self, key: Key, token: int) -> None:
        assert key not in self.running, f"{key} started twice"
        self.running[key] = token

    async def stop_projection(self, key: Key) -> None:
        self.running.pop(key)
        self.stopped.append(key)

    def drop_projection(self, key: Key) -> None:
        self.running.pop(key, None)
        self.dropped.append(key)


@dataclass
class Node:
    coordinator: Coordinator
    runner: RunnerStandIn
    store: FlakyStore
    clock: Clock


@dataclass
class World:
    database: MemoryClusterDatabase
    db_clock: Clock
    nodes: dict[str, Node] = field(default_factory=dict)
    settings: ClusterSettings = field(default_factory=lambda: replace(CLUSTER_OFF, enabled=True))

    async def join(self, name: str, *read_side_ids: str) -> Node:
        clock = Clock(self.db_clock.now)
        settings = replace(self.settings, host=name)
        store = FlakyStore(self.database)
        runner = RunnerStandIn(list(read_side_ids))
        coordinator = Coordinator(
            settings,
            SHARDS,
            name,
            store,
            LeaseBook(settings.leases, clock),
            RoutingTable(f"{name}:25520"),
            HostStandIn(),  # type: ignore[arg-type]
            drain_timeout_s=1.0,
            clock=clock,
            projections=runner,
        )
        await coordinator.start()
        await coordinator.close()  # rounds are driven by the test, one by one
        node = self.nodes[name] = Node(coordinator, runner, store, clock)
        return node

    def advance(self, seconds: float) -> None:
        self.db_clock.now += seconds
        for node in self.nodes.values():
            node.clock.now += seconds

    async def rounds(self, count: int = 3, *, step_s: float = 0.5) -> None:
        for _ in range(count):
            for node in list(self.nodes.values()):
                try:
                    await node.coordinator.round()
                except StoreUnavailable:
                    node.coordinator._drop_lapsed()
            for _ in range(3):
                await asyncio.sleep(0)  # let handovers run
            self.advance(step_s)

    def runners(self) -> dict[Key, str]:
        """Which member runs each projection; fails when two members run one."""
        running: dict[Key, str] = {}
        for name, node in self.nodes.items():
            for key in node.runner.running:
                assert key not in running, f"{key} runs on {running[key]} and {name}"
                running[key] = name
        return running


@pytest.fixture
def world() -> World:
    clock = Clock()
    return World(MemoryClusterDatabase(clock=clock), clock)


def placed(read_side_id: str, members: set[str]) -> dict[Key, str]:
    names = {read_side_key(read_side_id, shard): (read_side_id, shard) for shard in range(SHARDS)}
    return {names[name]: owner for name, owner in assign(names, members).items()}


async def test_each_projection_runs_on_exactly_one_member_that_runs_its_read_side(world: World) -> None:
    await world.join("a", "balances", "audit")
    await world.join("b", "balances", "audit")
    await world.join("c", "balances")  # does not run "audit"
    await world.join("d")  # runs no read side
    await world.rounds(4)
    assert world.runners() == {
        **placed("balances", {"a", "b", "c"}),
        **placed("audit", {"a", "b"}),
    }
    assert len(set(placed("balances", {"a", "b", "c"}).values())) > 1  # the load is spread
    for node in world.nodes.values():
        for key, token in node.runner.running.items():
            assert world.database.projection_token(*key) == token
    assert sorted(world.nodes["a"].coordinator.owned_projections()) == sorted(
        key for key, name in world.runners().items() if name == "a"
    )
    assert world.nodes["d"].coordinator.projection_owners == {
        key: f"{name}:25520" for key, name in world.runners().items()
    }


async def test_only_the_first_member_applies_auto_start(world: World) -> None:
    first = await world.join("a", "balances")
    second = await world.join("b", "balances")
    assert first.runner.auto_start == [True]
    assert second.runner.auto_start == [False]


async def test_a_joining_member_takes_its_projections_after_their_owners_stored_their_offsets(
    world: World,
) -> None:
    await world.join("a", "balances")
    await world.rounds(3)
    assert set(world.runners().values()) == {"a"}
    tokens_before = dict(world.nodes["a"].runner.running)
    await world.join("b", "balances")
    await world.rounds(4)
    assert world.runners() == placed("balances", {"a", "b"})
    moved = {key for key, owner in placed("balances", {"a", "b"}).items() if owner == "b"}
    assert moved and set(world.nodes["a"].runner.stopped) == moved  # handed over, never dropped
    assert world.nodes["a"].runner.dropped == []
    for key in moved:
        assert world.nodes["b"].runner.running[key] > tokens_before[key]


async def test_a_member_that_leaves_stops_its_projections_and_they_run_elsewhere_within_a_round(
    world: World,
) -> None:
    for name in ("a", "b", "c"):
        await world.join(name, "balances")
    await world.rounds(4)
    leaving = world.nodes.pop("c")
    theirs = set(leaving.runner.running)
    assert theirs
    await leaving.coordinator.leave()
    assert set(leaving.runner.stopped) == theirs and leaving.runner.running == {}
    await world.rounds(1)
    assert world.runners() == placed("balances", {"a", "b"})


async def test_a_dead_members_projections_move_only_once_their_leases_expire(world: World) -> None:
    for name in ("a", "b", "c"):
        await world.join(name, "balances")
    await world.rounds(4)
    dead = world.nodes.pop("c")
    theirs = set(dead.runner.running)
    await world.rounds(10, step_s=0.5)  # 5 s: the lease TTL (10 s) has not passed
    assert not theirs & set(world.runners())
    await world.rounds(14, step_s=0.5)
    assert world.runners() == placed("balances", {"a", "b"})


async def test_a_member_cut_off_from_the_database_drops_its_projections_before_the_lease_expires(
    world: World,
) -> None:
    node = await world.join("a", "balances")
    await world.rounds(2)
    assert len(node.runner.running) == SHARDS
    node.store.down = True
    await world.rounds(12, step_s=0.5)  # 6 s: within the usable window (TTL 10 s − margin 2 s)
    assert len(node.runner.running) == SHARDS
    await world.rounds(6, step_s=0.5)  # 9 s: past it, 1 s before the database would let it expire
    assert node.runner.running == {}
    assert len(node.runner.dropped) == SHARDS


class CountingStore(FlakyStore):
    listed = 0

    async def live_members(self, ttl_s: float) -> list[Member]:
        self.listed += 1
        return await super().live_members(ttl_s)


async def test_starting_lists_the_live_members_once(world: World) -> None:
    await world.join("m1", "a")
    store = CountingStore(world.database)
    settings = replace(world.settings, host="m2")
    runner = RunnerStandIn(["a"])
    coordinator = Coordinator(
        settings,
        SHARDS,
        "m2",
        store,
        LeaseBook(settings.leases, Clock(world.db_clock.now)),
        RoutingTable("m2:25520"),
        HostStandIn(),  # type: ignore[arg-type]
        drain_timeout_s=1.0,
        projections=runner,
    )
    await coordinator.start()  # the autoStart decision and the first round share one listing
    await coordinator.close()
    assert store.listed == 1
    assert runner.auto_start == [False]  # m1 was live: autoStart is not applied again
    assert {member.member_id for member in coordinator.members} == {"m1", "m2"}

"""The cluster store contract: every test runs on PostgreSQL and on the in-memory store.

Time: on PostgreSQL expiry is judged by the database's clock, so the tests let real time pass; in memory
they move the store's clock. Nothing assumes a fast machine: whatever must still hold is given a TTL of a
minute, and whatever must expire is polled for until a generous deadline.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
import pytest

from chiefofstate.core.errors import ConfigError, MembershipLost, StoreUnavailable
from chiefofstate.ports.cluster import ClusterStore, LeaseKey
from chiefofstate.stores.memory.cluster import MemoryClusterDatabase, MemoryClusterStore
from chiefofstate.stores.postgres.cluster import CLUSTER_CHANNEL, PostgresClusterStore
from chiefofstate.stores.postgres.datastore import ConnectionSettings
from chiefofstate.stores.postgres.journal import PostgresJournal
from tests.support.postgres import PgServer

NUM_SHARDS = 8
LONG_TTL_S = 60.0  # outlives any test: what holds under it holds however slow the machine is
SHORT_TTL_S = 0.3
DEADLINE_S = 30.0
POLL_STEP_S = 0.05

T = TypeVar("T")

SHARD_2 = LeaseKey.entity_shard(2)
BEYOND_THE_SHARD_ROWS = LeaseKey.entity_shard(NUM_SHARDS + 5)  # no row until a lease creates it
BALANCES_0 = LeaseKey.projection("balances", 0)
AUDIT_3 = LeaseKey.projection("audit", 3)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Cluster:
    """One shared database and a way to open stores on it, one per simulated node."""

    kind: str
    opener: Callable[[], Awaitable[ClusterStore]]
    clock: FakeClock | None = None
    opened: list[ClusterStore] = field(default_factory=list)

    async def node(self) -> ClusterStore:
        store = await self.opener()
        self.opened.append(store)
        return store

    async def let_time_pass(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    async def eventually(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """Repeat `attempt`, letting time pass between tries, until it returns something truthy."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            outcome = await attempt()
            if outcome:
                return outcome
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {DEADLINE_S} s: {what}")
            await self.let_time_pass(POLL_STEP_S)


def pg_settings(pg_database: tuple[PgServer, str], **overrides: object) -> ConnectionSettings:
    server, database = pg_database
    options: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "database": database,
        "user": server.user,
        "password": server.password,
        "pool_max_size": 2,
    }
    options.update(overrides)
    return ConnectionSettings(**options)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    if request.param == "memory":
        clock = FakeClock()
        database = MemoryClusterDatabase(clock=clock)

        async def open_memory() -> ClusterStore:
            return MemoryClusterStore(database)

        result = Cluster("memory", open_memory, clock)
    else:
        settings = pg_settings(request.getfixturevalue("pg_database"))
        journal = await PostgresJournal.open(settings)
        try:
            await journal.migrate(NUM_SHARDS)
        finally:
            await journal.close()

        async def open_postgres() -> ClusterStore:
            return await PostgresClusterStore.open(settings)

        result = Cluster("postgres", open_postgres)
    try:
        yield result
    finally:
        for store in result.opened:
            await store.close()


@pytest.fixture
async def store(cluster: Cluster) -> ClusterStore:
    return await cluster.node()


async def live_ids(store: ClusterStore, ttl_s: float = LONG_TTL_S) -> list[str]:
    return [member.member_id for member in await store.live_members(ttl_s)]


# ------------------------------------------------------------------------------------------ membership


async def test_joined_members_are_live_until_they_leave(store: ClusterStore) -> None:
    await store.join("b", "10.0.0.2:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S)
    await store.join("a", "10.0.0.1:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S)
    members = await store.live_members(LONG_TTL_S)
    assert [(m.member_id, m.address, m.num_shards) for m in members] == [
        ("a", "10.0.0.1:9010", NUM_SHARDS),
        ("b", "10.0.0.2:9010", NUM_SHARDS),
    ]
    assert all(m.started_at_ms > 1_600_000_000_000 for m in members)
    assert all(0 <= m.heartbeat_age_s < LONG_TTL_S for m in members)
    await store.heartbeat("a")

    await store.leave("a")
    assert await live_ids(store) == ["b"]
    with pytest.raises(MembershipLost, match="member a"):
        await store.heartbeat("a")
    await store.leave("a")  # leaving twice, or a member never seen, changes nothing
    await store.leave("nobody")
    assert await live_ids(store) == ["b"]


async def test_members_are_listed_with_the_read_sides_they_run(store: ClusterStore) -> None:
    await store.join(
        "a", "10.0.0.1:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S, read_sides=["audit", "balances"]
    )
    await store.join("b", "10.0.0.2:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S)
    assert {m.member_id: m.read_sides for m in await store.live_members(LONG_TTL_S)} == {
        "a": frozenset({"audit", "balances"}),
        "b": frozenset(),
    }
    await store.join("a", "10.0.0.1:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S, read_sides=["audit"])
    assert (await store.live_members(LONG_TTL_S))[0].read_sides == frozenset({"audit"})


async def test_a_heartbeat_of_an_unknown_member_is_refused(store: ClusterStore) -> None:
    with pytest.raises(MembershipLost):
        await store.heartbeat("never-joined")


async def test_leaving_releases_the_leases_given_in_the_same_call(store: ClusterStore) -> None:
    await store.join("a", "10.0.0.1:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S)
    await store.join("b", "10.0.0.2:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S)
    taken = await store.acquire_many([SHARD_2, BALANCES_0, AUDIT_3], "a", LONG_TTL_S)
    stale = (AUDIT_3, taken[AUDIT_3] + 1)  # not its current token: kept
    await store.leave("a", [(SHARD_2, taken[SHARD_2]), (BALANCES_0, taken[BALANCES_0]), stale])
    assert await live_ids(store) == ["b"]
    assert [(view.key, view.owner) for view in await store.holders()] == [(AUDIT_3, "a")]
    successor = await store.acquire(SHARD_2, "b", LONG_TTL_S)
    assert successor is not None and successor > taken[SHARD_2]


async def test_a_member_that_left_can_join_again(store: ClusterStore) -> None:
    await store.join("a", "10.0.0.1:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S)
    await store.leave("a")
    await store.join("a", "10.0.0.9:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S)
    await store.heartbeat("a")
    assert [(m.member_id, m.address) for m in await store.live_members(LONG_TTL_S)] == [
        ("a", "10.0.0.9:9010")
    ]


async def test_a_member_past_its_ttl_is_not_live_and_a_heartbeat_makes_it_live_again(
    cluster: Cluster, store: ClusterStore
) -> None:
    await store.join("a", "10.0.0.1:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S)

    async def stale() -> bool:
        return await live_ids(store, SHORT_TTL_S) == []

    await cluster.eventually(stale, "the member is no longer live under a short TTL")
    assert await live_ids(store) == ["a"]  # it is still live under a longer one
    (member,) = await store.live_members(LONG_TTL_S)
    assert member.heartbeat_age_s >= SHORT_TTL_S

    # Without the heartbeat its age only grows, so this succeeds only if the heartbeat counts.
    async def live_after_heartbeat() -> bool:
        await store.heartbeat("a")
        return await live_ids(store, SHORT_TTL_S) == ["a"]

    await cluster.eventually(live_after_heartbeat, "a heartbeat makes the member live again")


async def test_a_member_with_another_shard_count_is_refused(store: ClusterStore) -> None:
    await store.join("a", "10.0.0.1:9010", 8, member_ttl_s=LONG_TTL_S)
    with pytest.raises(ConfigError) as caught:
        await store.join("b", "10.0.0.2:9010", 16, member_ttl_s=LONG_TTL_S)
    assert caught.value.variable == "COS_NUM_SHARDS"
    assert str(caught.value).startswith(
        "COS_NUM_SHARDS: is 16 here but 8 on the live members a (10.0.0.1:9010)"
    )
    assert await live_ids(store) == ["a"]
    # the member itself may come back with another count: it is the only one
    await store.join("a", "10.0.0.1:9010", 16, member_ttl_s=LONG_TTL_S)
    assert [m.num_shards for m in await store.live_members(LONG_TTL_S)] == [16]


async def test_members_that_left_or_went_silent_do_not_hold_the_shard_count(
    cluster: Cluster, store: ClusterStore
) -> None:
    await store.join("left", "10.0.0.1:9010", 8, member_ttl_s=LONG_TTL_S)
    await store.leave("left")
    await store.join("silent", "10.0.0.2:9010", 8, member_ttl_s=LONG_TTL_S)
    with pytest.raises(ConfigError, match="on the live members silent "):
        await store.join("b", "10.0.0.3:9010", 16, member_ttl_s=LONG_TTL_S)

    async def joined_once_silent_is_stale() -> bool:
        try:
            await store.join("b", "10.0.0.3:9010", 16, member_ttl_s=SHORT_TTL_S)
        except ConfigError:
            return False
        return True

    await cluster.eventually(joined_once_silent_is_stale, "a member silent past the TTL stops counting")
    assert "b" in await live_ids(store)


async def test_of_two_members_joining_at_once_with_different_shard_counts_one_is_refused(
    cluster: Cluster,
) -> None:
    first, second = await cluster.node(), await cluster.node()
    for round_number in range(10):
        outcomes = await asyncio.gather(
            first.join(f"eight-{round_number}", "10.0.0.1:9010", 8, member_ttl_s=LONG_TTL_S),
            second.join(f"sixteen-{round_number}", "10.0.0.2:9010", 16, member_ttl_s=LONG_TTL_S),
            return_exceptions=True,
        )
        refused = [outcome for outcome in outcomes if isinstance(outcome, ConfigError)]
        assert len(refused) == 1 and sum(isinstance(outcome, int) for outcome in outcomes) == 1, outcomes
        (winner,) = await live_ids(first)
        await first.leave(winner)


# ---------------------------------------------------------------------------------------------- leases


@pytest.mark.parametrize("key", [SHARD_2, BEYOND_THE_SHARD_ROWS, BALANCES_0], ids=str)
async def test_a_node_joining_at_a_members_address_evicts_it_and_frees_its_leases(
    store: ClusterStore, key: LeaseKey
) -> None:
    # The earlier process at this address was killed: the node restarted in its place has just bound
    # the address, so the member recorded there cannot be running.
    await store.join("killed", "10.0.0.1:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S)
    await store.join("other", "10.0.0.2:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S)
    assert await store.acquire(key, "killed", LONG_TTL_S) == 1
    assert await store.join("restarted", "10.0.0.1:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S) == 1
    assert await live_ids(store) == ["other", "restarted"]
    with pytest.raises(MembershipLost):
        await store.heartbeat("killed")
    assert await store.holders() == []
    assert await store.renew(key, "killed", 1, LONG_TTL_S) is False
    assert await store.acquire(key, "restarted", LONG_TTL_S) == 2  # the token kept growing


async def test_a_predecessor_with_another_shard_count_does_not_block_the_restart(
    store: ClusterStore,
) -> None:
    # A node restarted in place with a new COS_NUM_SHARDS: its predecessor is not counted.
    assert await store.join("first", "10.0.0.1:9010", NUM_SHARDS, member_ttl_s=LONG_TTL_S) == 0
    assert await store.join("second", "10.0.0.1:9010", NUM_SHARDS * 2, member_ttl_s=LONG_TTL_S) == 1
    assert await store.join("second", "10.0.0.1:9010", NUM_SHARDS * 2, member_ttl_s=LONG_TTL_S) == 0
    assert await live_ids(store) == ["second"]


@pytest.mark.parametrize("key", [SHARD_2, BEYOND_THE_SHARD_ROWS, BALANCES_0], ids=str)
async def test_a_free_lease_is_taken_and_then_refused_to_another_owner(
    store: ClusterStore, key: LeaseKey
) -> None:
    assert await store.acquire(key, "a", LONG_TTL_S) == 1
    assert await store.acquire(key, "b", LONG_TTL_S) is None
    (view,) = await store.holders()
    assert (view.key, view.owner, view.token) == (key, "a", 1)


async def test_taking_again_a_lease_we_hold_raises_its_token(store: ClusterStore) -> None:
    first = await store.acquire(BALANCES_0, "a", LONG_TTL_S)
    again = await store.acquire(BALANCES_0, "a", LONG_TTL_S)
    assert first is not None and again is not None and again > first
    assert not await store.renew(BALANCES_0, "a", first, LONG_TTL_S)  # the earlier token is stale now
    assert await store.renew(BALANCES_0, "a", again, LONG_TTL_S)


@pytest.mark.parametrize("key", [SHARD_2, BALANCES_0], ids=str)
async def test_an_expired_lease_is_taken_over_with_a_greater_token(
    cluster: Cluster, store: ClusterStore, key: LeaseKey
) -> None:
    old = await store.acquire(key, "a", SHORT_TTL_S)
    assert old is not None

    async def take_over() -> int | None:
        return await store.acquire(key, "b", LONG_TTL_S)

    new = await cluster.eventually(take_over, "the expired lease is taken over")
    assert new > old
    (view,) = await store.holders()
    assert (view.owner, view.token) == ("b", new)
    assert await store.acquire(key, "a", LONG_TTL_S) is None


@pytest.mark.parametrize("key", [SHARD_2, BALANCES_0], ids=str)
async def test_a_renewal_with_a_stale_token_fails_after_another_node_took_over(
    cluster: Cluster, store: ClusterStore, key: LeaseKey
) -> None:
    old = await store.acquire(key, "a", SHORT_TTL_S)
    assert old is not None

    async def take_over() -> int | None:
        return await store.acquire(key, "b", LONG_TTL_S)

    new = await cluster.eventually(take_over, "the expired lease is taken over")
    assert not await store.renew(key, "a", old, LONG_TTL_S)
    assert not await store.renew(key, "a", new, LONG_TTL_S)  # the token alone is not enough
    assert not await store.renew(key, "b", old, LONG_TTL_S)  # nor the owner alone
    assert await store.renew(key, "b", new, LONG_TTL_S)
    (view,) = await store.holders()
    assert (view.owner, view.token) == ("b", new)


async def test_a_renewal_extends_the_lease_but_never_shortens_it(store: ClusterStore) -> None:
    token = await store.acquire(SHARD_2, "a", SHORT_TTL_S)
    assert token is not None
    assert await store.renew(SHARD_2, "a", token, LONG_TTL_S)
    (view,) = await store.holders()
    assert LONG_TTL_S / 2 < view.expires_in_s <= LONG_TTL_S
    assert await store.renew(SHARD_2, "a", token, SHORT_TTL_S)
    (view,) = await store.holders()
    assert view.expires_in_s > LONG_TTL_S / 2
    assert await store.acquire(SHARD_2, "b", LONG_TTL_S) is None


async def test_an_expired_lease_nobody_took_is_renewed_under_its_token(
    cluster: Cluster, store: ClusterStore
) -> None:
    token = await store.acquire(AUDIT_3, "a", SHORT_TTL_S)
    assert token is not None

    async def expired() -> bool:
        (view,) = await store.holders()
        return view.expires_in_s < 0

    await cluster.eventually(expired, "the lease expires")
    assert await store.renew(AUDIT_3, "a", token, LONG_TTL_S)
    (view,) = await store.holders()
    assert (view.owner, view.token) == ("a", token) and view.expires_in_s > LONG_TTL_S / 2
    assert await store.acquire(AUDIT_3, "b", LONG_TTL_S) is None


@pytest.mark.parametrize("key", [SHARD_2, BALANCES_0], ids=str)
async def test_a_released_lease_is_free_at_once_and_its_token_keeps_growing(
    store: ClusterStore, key: LeaseKey
) -> None:
    token = await store.acquire(key, "a", LONG_TTL_S)
    assert token is not None
    await store.release(key, "a", token + 1)  # not the current token: nothing happens
    await store.release(key, "b", token)  # not the owner: nothing happens
    assert await store.acquire(key, "b", LONG_TTL_S) is None

    await store.release(key, "a", token)
    assert await store.holders() == []
    assert not await store.renew(key, "a", token, LONG_TTL_S)
    successor = await store.acquire(key, "b", LONG_TTL_S)
    assert successor is not None and successor > token


async def test_many_leases_are_taken_renewed_and_released_in_one_call(store: ClusterStore) -> None:
    assert await store.acquire(AUDIT_3, "b", LONG_TTL_S) == 1
    taken = await store.acquire_many(
        [SHARD_2, BALANCES_0, AUDIT_3, SHARD_2, BEYOND_THE_SHARD_ROWS], "a", LONG_TTL_S
    )
    assert taken == {SHARD_2: 1, BALANCES_0: 1, BEYOND_THE_SHARD_ROWS: 1}
    assert await store.acquire_many([], "a", LONG_TTL_S) == {}

    held = [(SHARD_2, 1), (BALANCES_0, 1), (BEYOND_THE_SHARD_ROWS, 7), (AUDIT_3, 1)]
    assert await store.renew_all("a", held, LONG_TTL_S) == {SHARD_2, BALANCES_0}
    assert await store.renew_all("a", [], LONG_TTL_S) == set()

    await store.release_all("a", [(SHARD_2, 1), (BALANCES_0, 1), (AUDIT_3, 1)])
    await store.release_all("a", [])
    assert [(view.key, view.owner) for view in await store.holders()] == [
        (BEYOND_THE_SHARD_ROWS, "a"),
        (AUDIT_3, "b"),
    ]


async def test_holders_report_expiry_by_the_database_clock(cluster: Cluster, store: ClusterStore) -> None:
    await store.acquire_many([BALANCES_0, SHARD_2], "a", LONG_TTL_S)
    await store.acquire(AUDIT_3, "b", SHORT_TTL_S)
    await store.acquire(BEYOND_THE_SHARD_ROWS, "b", LONG_TTL_S)
    views = await store.holders()
    assert [(view.key, view.owner, view.token) for view in views] == [
        (SHARD_2, "a", 1),
        (BEYOND_THE_SHARD_ROWS, "b", 1),
        (AUDIT_3, "b", 1),
        (BALANCES_0, "a", 1),
    ]
    assert all(LONG_TTL_S / 2 < view.expires_in_s <= LONG_TTL_S for view in views if view.key != AUDIT_3)

    async def audit_expired() -> bool:
        return any(view.key == AUDIT_3 and view.expires_in_s < 0 for view in await store.holders())

    await cluster.eventually(audit_expired, "an expired lease shows a negative time left")


async def test_of_two_nodes_acquiring_a_free_lease_at_once_exactly_one_wins(cluster: Cluster) -> None:
    first, second = await cluster.node(), await cluster.node()
    keys = [LeaseKey.entity_shard(shard) for shard in range(NUM_SHARDS + 40)]  # existing rows and new ones
    keys += [LeaseKey.projection(f"side-{n % 3}", n) for n in range(40)]
    outcomes = await asyncio.gather(
        *(
            node.acquire(key, owner, LONG_TTL_S)
            for key in keys
            for node, owner in ((first, "a"), (second, "b"))
        )
    )
    for index, key in enumerate(keys):
        pair = outcomes[2 * index : 2 * index + 2]
        assert sorted(pair, key=lambda token: token is None) == [1, None], (key, pair)
    views = await first.holders()
    assert len(views) == len(keys)
    winners = {view.key: view.owner for view in views}
    for index, key in enumerate(keys):
        assert winners[key] == ("a" if outcomes[2 * index] is not None else "b")


async def test_of_two_nodes_taking_over_an_expired_lease_at_once_exactly_one_wins(cluster: Cluster) -> None:
    first, second = await cluster.node(), await cluster.node()
    keys = [LeaseKey.entity_shard(shard) for shard in range(NUM_SHARDS)]
    keys += [LeaseKey.projection("balances", shard) for shard in range(NUM_SHARDS)]
    assert len(await first.acquire_many(keys, "old", SHORT_TTL_S)) == len(keys)

    async def all_expired() -> bool:
        return all(view.expires_in_s < 0 for view in await first.holders())

    await cluster.eventually(all_expired, "the old owner's leases expire")
    outcomes = await asyncio.gather(
        *(
            node.acquire(key, owner, LONG_TTL_S)
            for key in keys
            for node, owner in ((first, "a"), (second, "b"))
        )
    )
    for index, key in enumerate(keys):
        pair = outcomes[2 * index : 2 * index + 2]
        assert sorted(pair, key=lambda token: token is None) == [2, None], (key, pair)


async def test_a_renewal_racing_a_takeover_never_leaves_both_believing_they_hold_the_lease(
    cluster: Cluster,
) -> None:
    holder, rival = await cluster.node(), await cluster.node()
    keys = [LeaseKey.entity_shard(shard) for shard in range(NUM_SHARDS)]
    tokens = await holder.acquire_many(keys, "a", SHORT_TTL_S)

    async def all_expired() -> bool:
        return all(view.expires_in_s < 0 for view in await holder.holders())

    await cluster.eventually(all_expired, "the holder's leases expire")
    renewals = holder.renew_all("a", list(tokens.items()), LONG_TTL_S)
    takeovers = asyncio.gather(*(rival.acquire(key, "b", LONG_TTL_S) for key in keys))
    renewed, taken = await asyncio.gather(renewals, takeovers)
    for key, token in zip(keys, taken, strict=True):
        assert (key in renewed) != (token is not None), key
    owners = {view.key: view.owner for view in await holder.holders()}
    assert owners == {key: "a" if key in renewed else "b" for key in keys}


# ------------------------------------------------------------------------------------------ availability


async def test_a_closed_store_is_unavailable(store: ClusterStore) -> None:
    await store.close()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.join("a", "h:1", NUM_SHARDS, member_ttl_s=LONG_TTL_S),
        lambda: store.heartbeat("a"),
        lambda: store.live_members(LONG_TTL_S),
        lambda: store.leave("a"),
        lambda: store.acquire(SHARD_2, "a", LONG_TTL_S),
        lambda: store.renew(SHARD_2, "a", 1, LONG_TTL_S),
        lambda: store.release(SHARD_2, "a", 1),
        store.holders,
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call()


@pytest.mark.postgres
async def test_an_unreachable_server_is_store_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    settings = ConnectionSettings(host="127.0.0.1", port=port, connect_timeout_s=2)
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}/postgres"):
        await PostgresClusterStore.open(settings)


@pytest.mark.postgres
async def test_releases_and_departures_are_notified_to_listening_members(
    pg_database: tuple[PgServer, str],
) -> None:
    """The others' coordinators take a released shard at once, woken by this notification instead of
    waiting for their next round; a release or leave that changes nothing notifies nobody."""
    settings = pg_settings(pg_database)
    journal = await PostgresJournal.open(settings)
    try:
        await journal.migrate(NUM_SHARDS)
    finally:
        await journal.close()
    store = await PostgresClusterStore.open(settings)
    server, database = pg_database
    listener = await asyncpg.connect(server.dsn(database))
    payloads: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(CLUSTER_CHANNEL, lambda *args: payloads.put_nowait(args[-1]))
    try:
        await store.join("a", "a:1", NUM_SHARDS, member_ttl_s=LONG_TTL_S)
        token = await store.acquire(SHARD_2, "a", LONG_TTL_S)
        assert token is not None
        await store.release_all("a", [(SHARD_2, token + 1)])  # another tenure: nothing released
        await store.release_all("a", [(SHARD_2, token)])
        assert await asyncio.wait_for(payloads.get(), DEADLINE_S) == "a"
        await store.leave("a")
        assert await asyncio.wait_for(payloads.get(), DEADLINE_S) == "a"
        await store.join("c", "c:1", NUM_SHARDS, member_ttl_s=LONG_TTL_S)
        held = await store.acquire(SHARD_2, "c", LONG_TTL_S)
        assert held is not None
        await store.leave("c", [(SHARD_2, held)])  # leaving and releasing: one notification
        assert await asyncio.wait_for(payloads.get(), DEADLINE_S) == "c"
        await store.leave("a")  # already gone
        await store.release_all("a", [(SHARD_2, token)])  # already released
        # Notifications arrive in commit order: the next one is b's, so those two sent none.
        successor = await store.acquire(SHARD_2, "b", LONG_TTL_S)
        assert successor is not None
        await store.release(SHARD_2, "b", successor)
        assert await asyncio.wait_for(payloads.get(), DEADLINE_S) == "b"
    finally:
        await listener.close()
        await store.close()


@pytest.mark.postgres
async def test_migrations_11_and_13_add_the_cluster_tables(pg_database: tuple[PgServer, str]) -> None:
    settings = pg_settings(pg_database)
    journal = await PostgresJournal.open(settings)
    try:
        await journal.migrate(NUM_SHARDS)
    finally:
        await journal.close()
    server, database = pg_database
    raw = await asyncpg.connect(server.dsn(database))
    try:
        rows = await raw.fetch(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name IN "
            "('cos_cluster_members', 'cos_projection_leases', 'cos_shard_locks')"
        )
    finally:
        await raw.close()
    columns = {
        (row["table_name"], row["column_name"]): (row["data_type"], row["is_nullable"]) for row in rows
    }
    timestamp = "timestamp with time zone"
    assert columns == {
        ("cos_cluster_members", "member_id"): ("text", "NO"),
        ("cos_cluster_members", "address"): ("text", "NO"),
        ("cos_cluster_members", "num_shards"): ("integer", "NO"),
        ("cos_cluster_members", "started_at"): (timestamp, "NO"),
        ("cos_cluster_members", "heartbeat_at"): (timestamp, "NO"),
        ("cos_cluster_members", "left_at"): (timestamp, "YES"),
        # migration 13: the read sides each member runs
        ("cos_cluster_members", "read_sides"): ("ARRAY", "NO"),
        ("cos_shard_locks", "shard"): ("integer", "NO"),
        ("cos_shard_locks", "lease_token"): ("bigint", "NO"),
        ("cos_shard_locks", "owner"): ("text", "YES"),
        ("cos_shard_locks", "expires_at"): (timestamp, "YES"),
        ("cos_projection_leases", "read_side_id"): ("text", "NO"),
        ("cos_projection_leases", "shard"): ("integer", "NO"),
        ("cos_projection_leases", "owner"): ("text", "YES"),
        ("cos_projection_leases", "lease_token"): ("bigint", "NO"),
        ("cos_projection_leases", "expires_at"): (timestamp, "YES"),
    }

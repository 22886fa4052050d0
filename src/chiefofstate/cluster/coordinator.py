"""One member's part in the cluster: its heartbeat, which shards it should own, and its leases.

Every round (COS_CLUSTER_HEARTBEAT_INTERVAL / 8, at most 0.25 s) the coordinator reads the live members
from the database, places every shard on one of them by rendezvous hashing (core/placement.py), renews
the leases it holds, hands over the ones placement gives to another member, acquires the ones placement
gives to it once they are free or expired, and rereads who holds what for the routing table. The
database is the only authority: expiry is judged by its clock, and the fencing token of every append
is checked inside the append's transaction (docs/cluster.md). A member alone where COS_REPLICA_COUNT
expects more takes no shard (core/leases.py, `expected_members_present`).

Handing a shard over: stop admitting its commands (they are forwarded to the next owner once it holds
the lease), wait for the ones in flight, forget its cached entities, release the lease at once so the
next owner need not wait for it to expire. A release or a departure notifies the others (PostgreSQL
NOTIFY, heard by the node's listener, which calls `wake`), so the next owner runs its round at once.

Read-side projections ride the same rounds (cluster/projection_leases.py): one lease per (read side,
shard), placed by the same rendezvous hashing over the live members that run that read side, renewed,
handed over and lost like the shards' leases. Handing one over stops the projection and stores its
offset under the lease before releasing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.cluster.ownership import LeaseBook
from chiefofstate.cluster.projection_leases import ProjectionPlacement, ProjectionRunner
from chiefofstate.cluster.routes import Route, RoutingTable
from chiefofstate.config.cluster import ClusterSettings
from chiefofstate.core.errors import CosError
from chiefofstate.core.leases import expected_members_present
from chiefofstate.core.placement import assign, shard_key
from chiefofstate.entities.host import EntityHost
from chiefofstate.ports.cluster import ClusterStore, LeaseKey, LeaseView, Member

log = logging.getLogger("chiefofstate.cluster")

# A handover completes at the successor's next round: short rounds keep it well under a second, for two
# small statements per round and member.
LONGEST_ROUND_S = 0.25


class Coordinator:
    """Owns one task; `await start()` joins and takes this member's share, `await leave()` hands
    everything over and leaves, `await close()` stops without handing over (the leases then expire)."""

    def __init__(
        self,
        settings: ClusterSettings,
        num_shards: int,
        member_id: str,
        store: ClusterStore,
        book: LeaseBook,
        routes: RoutingTable,
        host: EntityHost,
        *,
        drain_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        projections: ProjectionRunner | None = None,
    ) -> None:
        self._settings = settings
        self.member_id = member_id
        self._store = store
        self._book = book
        self._routes = routes
        self._host = host
        self._drain_timeout_s = drain_timeout_s
        self._clock = clock
        self._shard_keys = [LeaseKey.entity_shard(shard) for shard in range(num_shards)]
        self._placement_names = {key: shard_key(key.shard) for key in self._shard_keys}
        self._placed_for: frozenset[tuple[str, frozenset[str]]] = frozenset()
        self._placed: set[LeaseKey] = set()
        self._projections = projections
        self._projection_placement = ProjectionPlacement(
            projections.enabled_read_side_ids() if projections is not None else [], num_shards
        )
        # (read side id, shard) → address of the member running it, as of the last round
        self.projection_owners: dict[tuple[str, int], str] = {}
        self._round_s = min(settings.members.heartbeat_interval_s / 8, LONGEST_ROUND_S)
        self._next_heartbeat = 0.0
        self._next_renewal = 0.0
        self._task: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()
        self._leaving: asyncio.Task[None] | None = None
        self._handovers: dict[LeaseKey, asyncio.Task[None]] = {}
        self.members: list[Member] = []
        self.settled = asyncio.Event()  # set once a round has taken this member's share
        self.acquisitions = 0
        self.losses = 0
        self._failing_since: float | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Join (refused when the live members run with another COS_NUM_SHARDS) and take this member's
        share of the shards before the node reports ready."""
        predecessors = await self._store.join(
            self.member_id,
            self._settings.advertised_address,
            len(self._shard_keys),
            member_ttl_s=self._settings.members.ttl_s,
            read_sides=self._projection_placement.read_side_ids,
        )
        if predecessors:
            log.warning(
                "%d earlier member(s) at %s evicted: this node holds their address, so they are gone",
                predecessors,
                self._settings.advertised_address,
            )
        self._next_heartbeat = self._clock() + self._settings.members.heartbeat_interval_s
        members = None
        if self._projections is not None:
            members = await self._store.live_members(self._settings.members.ttl_s)
            others = [member for member in members if member.member_id != self.member_id]
            # autoStart is applied by the first member only: the others' projections already run.
            await self._projections.prepare(apply_auto_start=not others)
        await self.round(members)
        self._task = asyncio.create_task(self._run(), name="cluster-coordinator")

    async def close(self) -> None:
        await cancel_and_wait(self._task, self._leaving, *self._handovers.values())
        self._task = None
        self._handovers.clear()

    async def leave(self) -> None:
        """Graceful leave: hand every shard over at once, then the projections. Called again (the
        node starts it at SIGTERM and awaits it again in its shutdown sequence), it waits for the
        first call."""
        if self._leaving is None:
            self._leaving = asyncio.create_task(self._leave(), name="cluster-leave")
        await self._leaving

    async def _leave(self) -> None:
        """The entity shards go first, in one statement that also leaves the membership (and notifies
        the others, who take them at once): their successors need not wait for the projections to
        store their offsets. The projections' leases follow once they have stopped. Meanwhile the
        routes keep being read, for the requests this member still forwards while it shuts down."""
        await cancel_and_wait(self._task)
        self._task = asyncio.create_task(self._follow_routes(), name="cluster-routes")
        held = self._book.held()
        for key, _ in held:
            self._book.handing_over(key)
        shards = [(key, token) for key, token in held if key.read_side_id is None]
        projections = [(key, token) for key, token in held if key.read_side_id is not None]
        await self._drain([key.shard for key, _ in shards])
        for key, _ in shards:
            self._forget_entities(key)
            self._book.dropped(key)
        with contextlib.suppress(CosError):  # what is not released expires by itself
            await self._store.leave(self.member_id, shards)
        await asyncio.gather(*(self._stop_projection(key) for key, _ in projections))
        for key, _ in projections:
            self._book.dropped(key)
        with contextlib.suppress(CosError):
            await self._store.release_all(self.member_id, projections)
        await cancel_and_wait(*self._handovers.values())
        self._handovers.clear()
        log.warning(
            "left the cluster: %d shard and %d projection leases released", len(shards), len(projections)
        )

    # ------------------------------------------------------------------------------------ rounds

    async def _follow_routes(self) -> None:
        """A leaving member's rounds: only the routing table, so that what it forwards meanwhile goes
        to the shards' new owners."""
        while True:
            await self._wait_for_round()
            with contextlib.suppress(CosError):
                await self._refresh_routes(await self._store.live_members(self._settings.members.ttl_s))

    async def _wait_for_round(self) -> None:
        """Until the round interval has passed, or a wake-up came first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._round_s):
                await self._woken.wait()
        self._woken.clear()

    def wake(self) -> None:
        """Run the next round now: another member released leases or left (its NOTIFY), so a shard may
        be free for this one to take, and the routes may have changed."""
        self._woken.set()

    async def _run(self) -> None:
        while True:
            await self._wait_for_round()
            try:
                await self.round()
            except CosError as error:
                # The database is away or refused us: leases lapse by the local clock meanwhile, and the
                # gate stops admitting their shards before anyone else can hold them.
                if self._failing_since is None:
                    self._failing_since = self._clock()
                    log.warning("cluster round failed: %s", error)
                self._drop_lapsed()
            else:
                if self._failing_since is not None:
                    log.warning(
                        "cluster rounds succeed again after %.1fs", self._clock() - self._failing_since
                    )
                    self._failing_since = None

    async def round(self, members: list[Member] | None = None) -> None:
        """One round: heartbeat, members, renewals, handovers, acquisitions, routes (the task runs one
        every round interval; tests run them one by one). `members`: the live members when the caller
        has just listed them (the first round, right after joining)."""
        now = self._clock()
        if now >= self._next_heartbeat:
            await self._store.heartbeat(self.member_id)
            self._next_heartbeat = now + self._settings.members.heartbeat_interval_s
        if members is None:
            members = await self._store.live_members(self._settings.members.ttl_s)
        self.members = members
        await self._renew_if_due()
        self._drop_lapsed()
        desired = self._desired(members)
        for key in self._book.keys():  # noqa: SIM118 - a copy: handovers change the book
            if key not in desired and key not in self._handovers:
                self._start_handover(key)
        wanted = [key for key in desired if key not in self._book]
        if wanted:
            sent_at = self._clock()
            taken = await self._store.acquire_many(wanted, self.member_id, self._settings.leases.ttl_s)
            for key, token in taken.items():
                self._book.granted(key, token, sent_at)
                if key.read_side_id is not None and self._projections is not None:
                    self._projections.run_projection((key.read_side_id, key.shard), token)
            if taken:
                self.acquisitions += len(taken)
                log.info(
                    "acquired %d leases: %s",
                    len(taken),
                    ", ".join(str(key) for key in sorted(taken, key=lambda key: key.sort_key)),
                )
        await self._refresh_routes(members)
        self.settled.set()

    def _desired(self, members: Sequence[Member]) -> set[LeaseKey]:
        runs = {member.member_id: member.read_sides for member in members}
        # our own heartbeat may not be visible in a read that raced it
        runs[self.member_id] = frozenset(self._projection_placement.read_side_ids)
        if not expected_members_present(len(runs), self._settings.replica_count):
            return set()
        members_now = frozenset(runs.items())
        if members_now != self._placed_for:
            # Hashing every shard against every member is the round's only CPU of note: done again
            # only when the live members change, not every quarter second.
            placed = assign(self._placement_names.values(), runs)
            self._placed_for = members_now
            self._placed = {
                key for key, name in self._placement_names.items() if placed.get(name) == self.member_id
            }
            self._placed |= self._projection_placement.mine(runs, self.member_id)
        return self._placed

    async def _renew_if_due(self) -> None:
        held = self._book.held()
        if not held or self._clock() < self._next_renewal:
            return
        sent_at = self._clock()
        kept = await self._store.renew_all(self.member_id, held, self._settings.leases.ttl_s)
        self._book.renewed(kept, sent_at)
        self._next_renewal = sent_at + self._settings.leases.renew_interval_s
        for key, _ in held:
            if key not in kept:
                self._lose(key, "another member holds it now")

    def _drop_lapsed(self) -> None:
        for key in self._book.lapsed():
            self._lose(key, "not renewed in time")

    def _lose(self, key: LeaseKey, why: str) -> None:
        self._book.dropped(key)
        self._forget_entities(key)
        if key.read_side_id is not None and self._projections is not None:
            self._projections.drop_projection((key.read_side_id, key.shard))
        handover = self._handovers.pop(key, None)
        if handover is not None:
            handover.cancel()
        self.losses += 1
        log.warning("lost the lease of %s (%s)", key, why)

    async def _refresh_routes(self, members: Sequence[Member]) -> None:
        addresses = {member.member_id: member.address for member in members}
        owners: dict[int, Route] = {}
        projection_owners: dict[tuple[str, int], str] = {}
        for view in await self._store.holders():
            if view.expires_in_s <= 0 or view.owner not in addresses:
                continue
            if view.key.read_side_id is None:
                owners[view.key.shard] = Route(addresses[view.owner], view.token)
            else:
                projection_owners[(view.key.read_side_id, view.key.shard)] = addresses[view.owner]
        self._routes.replace(owners)
        self.projection_owners = projection_owners

    # ------------------------------------------------------------------------------------ handover

    def _start_handover(self, key: LeaseKey) -> None:
        self._book.handing_over(key)
        self._handovers[key] = asyncio.create_task(self._hand_over(key), name=f"handover {key}")

    async def _hand_over(self, key: LeaseKey) -> None:
        try:
            if key.read_side_id is None:
                await self._drain([key.shard])
            else:
                await self._stop_projection(key)
            token = self._book.token(key)
            self._forget_entities(key)
            self._book.dropped(key)
            if token is not None:
                with contextlib.suppress(CosError):  # it then expires by itself
                    await self._store.release(key, self.member_id, token)
            log.info("handed over %s", key)
        finally:
            self._handovers.pop(key, None)

    def _forget_entities(self, key: LeaseKey) -> None:
        """An entity shard no longer ours: its cached entities are read again by whoever serves it next."""
        if key.read_side_id is None:
            self._host.forget_shard(key.shard)

    async def _stop_projection(self, key: LeaseKey) -> None:
        """Stop the projection and store its offset under the lease, before the lease is released."""
        if self._projections is not None and key.read_side_id is not None:
            await self._projections.stop_projection((key.read_side_id, key.shard))

    async def _drain(self, shards: Sequence[int]) -> None:
        """Wait for the commands in flight on these shards, at most the drain timeout: past it they
        fail at their append (the lease is gone), which writes nothing."""
        if not await self._host.wait_until_idle(shards, self._drain_timeout_s):
            log.warning("shards %s still had commands in flight when handed over", sorted(shards))

    # ------------------------------------------------------------------------------------ status

    def owned_shards(self) -> list[int]:
        return sorted(key.shard for key, _ in self._book.held() if key.read_side_id is None)

    async def lease_holders(self) -> list[LeaseView]:
        """Every held lease of the cluster as the database has it now (the admin console's maps)."""
        return await self._store.holders()

    def owned_projections(self) -> list[tuple[str, int]]:
        return sorted((key.read_side_id, key.shard) for key, _ in self._book.held() if key.read_side_id)

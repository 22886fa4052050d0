"""Membership and leases in memory, for tests of the cluster layer without a database.

`MemoryClusterDatabase` stands in for the shared database: its tables and its clock (injectable, the
stand-in for the database's `now()`), shared by every `MemoryClusterStore` opened on it as nodes share
one PostgreSQL. Each operation runs to completion without awaiting, so on one event loop it is as
atomic as a statement, and two acquisitions of one lease cannot both succeed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chiefofstate.core.errors import MembershipLost, StoreUnavailable
from chiefofstate.ports.cluster import LeaseKey, LeaseView, Member
from chiefofstate.stores.cluster_rows import shard_count_mismatch


@dataclass(slots=True)
class _MemberRow:
    address: str
    num_shards: int
    started_at: float
    heartbeat_at: float
    left_at: float | None = None
    read_sides: frozenset[str] = frozenset()


@dataclass(slots=True)
class _LeaseRow:
    owner: str | None = None
    token: int = 0
    expires_at: float | None = None


@dataclass
class MemoryClusterDatabase:
    """The tables every store opened on it shares, and the clock that judges expiry."""

    clock: Callable[[], float] = time.time
    members: dict[str, _MemberRow] = field(default_factory=dict)
    leases: dict[LeaseKey, _LeaseRow] = field(default_factory=dict)

    def shard_token(self, shard: int) -> int:
        """The entity shard's current lease token (0 when it was never leased), for a journal in memory
        that fences appends as the database's append does."""
        row = self.leases.get(LeaseKey.entity_shard(shard))
        return 0 if row is None else row.token

    def projection_token(self, read_side_id: str, shard: int) -> int:
        """The projection's current lease token (0 when it was never leased), for an offset store in
        memory that fences offset commits as the database's does."""
        row = self.leases.get(LeaseKey.projection(read_side_id, shard))
        return 0 if row is None else row.token


class MemoryClusterStore:
    """`ClusterStore` on a `MemoryClusterDatabase`. Build one per simulated node on a shared database."""

    def __init__(self, database: MemoryClusterDatabase | None = None) -> None:
        self.database = MemoryClusterDatabase() if database is None else database
        self._closed = False

    @property
    def description(self) -> str:
        return "memory"

    def _now(self, action: str) -> float:
        if self._closed:
            raise StoreUnavailable(f"the memory cluster store is closed (cannot {action})")
        return self.database.clock()

    def _is_live(self, row: _MemberRow, now: float, ttl_s: float) -> bool:
        return row.left_at is None and row.heartbeat_at >= now - ttl_s

    async def join(
        self,
        member_id: str,
        address: str,
        num_shards: int,
        *,
        member_ttl_s: float,
        read_sides: Sequence[str] = (),
    ) -> int:
        now = self._now("join the cluster")
        predecessors = [
            other_id
            for other_id, row in self.database.members.items()
            if other_id != member_id and row.address == address and row.left_at is None
        ]
        for other_id in predecessors:
            self.database.members[other_id].left_at = now
        for lease in self.database.leases.values():
            if lease.owner in predecessors:
                lease.owner, lease.expires_at = None, None
        others = [
            (other_id, row)
            for other_id, row in sorted(self.database.members.items())
            if other_id != member_id
            and row.num_shards != num_shards
            and self._is_live(row, now, member_ttl_s)
        ]
        if others:
            raise shard_count_mismatch(
                num_shards, [(other_id, row.address, row.num_shards) for other_id, row in others]
            )
        self.database.members[member_id] = _MemberRow(
            address, num_shards, now, now, read_sides=frozenset(read_sides)
        )
        return len(predecessors)

    async def heartbeat(self, member_id: str) -> None:
        now = self._now("record a heartbeat")
        row = self.database.members.get(member_id)
        if row is None or row.left_at is not None:
            raise MembershipLost(
                f"member {member_id} is no longer in the cluster (its row is gone or has left)"
            )
        row.heartbeat_at = max(row.heartbeat_at, now)

    async def live_members(self, ttl_s: float) -> list[Member]:
        now = self._now("list the live members")
        return [
            Member(
                member_id,
                row.address,
                row.num_shards,
                int(row.started_at * 1000),
                max(now - row.heartbeat_at, 0.0),
                row.read_sides,
            )
            for member_id, row in sorted(self.database.members.items())
            if self._is_live(row, now, ttl_s)
        ]

    async def leave(self, member_id: str, releasing: Sequence[tuple[LeaseKey, int]] = ()) -> None:
        now = self._now("leave the cluster")
        for _, lease in self._held(member_id, releasing):
            lease.owner = None
            lease.expires_at = None
        row = self.database.members.get(member_id)
        if row is not None and row.left_at is None:
            row.left_at = now

    async def acquire(self, key: LeaseKey, owner: str, ttl_s: float) -> int | None:
        return (await self.acquire_many([key], owner, ttl_s)).get(key)

    async def acquire_many(self, keys: Sequence[LeaseKey], owner: str, ttl_s: float) -> dict[LeaseKey, int]:
        now = self._now("acquire leases")
        taken: dict[LeaseKey, int] = {}
        for key in dict.fromkeys(keys):
            row = self.database.leases.setdefault(key, _LeaseRow())
            expired = row.expires_at is not None and row.expires_at < now
            if row.owner is None or expired or row.owner == owner:
                row.owner = owner
                row.token += 1
                row.expires_at = _later(row.expires_at, now + ttl_s)
                taken[key] = row.token
        return taken

    async def renew(self, key: LeaseKey, owner: str, token: int, ttl_s: float) -> bool:
        return key in await self.renew_all(owner, [(key, token)], ttl_s)

    async def renew_all(
        self, owner: str, held: Sequence[tuple[LeaseKey, int]], ttl_s: float
    ) -> set[LeaseKey]:
        now = self._now("renew leases")
        renewed: set[LeaseKey] = set()
        for key, row in self._held(owner, held):
            row.expires_at = _later(row.expires_at, now + ttl_s)
            renewed.add(key)
        return renewed

    async def release(self, key: LeaseKey, owner: str, token: int) -> None:
        await self.release_all(owner, [(key, token)])

    async def release_all(self, owner: str, held: Sequence[tuple[LeaseKey, int]]) -> None:
        self._now("release leases")
        for _, row in self._held(owner, held):
            row.owner = None
            row.expires_at = None

    def _held(self, owner: str, held: Sequence[tuple[LeaseKey, int]]) -> list[tuple[LeaseKey, _LeaseRow]]:
        ours = []
        for key, token in held:
            row = self.database.leases.get(key)
            if row is not None and row.owner == owner and row.token == token:
                ours.append((key, row))
        return ours

    async def holders(self) -> list[LeaseView]:
        now = self._now("list the lease holders")
        views = [
            LeaseView(
                key, row.owner, row.token, (row.expires_at if row.expires_at is not None else now) - now
            )
            for key, row in self.database.leases.items()
            if row.owner is not None
        ]
        return sorted(views, key=lambda view: view.key.sort_key)

    async def close(self) -> None:
        self._closed = True


def _later(current: float | None, proposed: float) -> float:
    """The later of two expiries (as SQL's greatest(), which skips a missing one)."""
    return proposed if current is None else max(current, proposed)

"""The cluster port: which nodes are members, and which node owns each shard, kept in the database.

Nodes of a cluster share one database and agree through it alone. Every expiry (a member's heartbeat, a
lease) is judged by the database's clock, never by a node's: node clocks may disagree, the database's is
the one clock they all read. A node that needs to know how long it may act on a lease measures that on
its own monotonic clock from the moment it sent the request that the database confirmed.

A lease has a token that grows at every acquisition. Whoever acts on a shard presents the token it was
given, and the database refuses a token that is not the current one: a node that lost a lease without
noticing (a long pause, a partition) is fenced by the database, not by its own judgement.

Every method raises `StoreUnavailable` when the database cannot be reached, and `Internal` when it
refuses the request (a schema older than version 13, for one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Member:
    """A live member, as `live_members` sees it."""

    member_id: str
    address: str  # host:port of the node's internal gRPC service
    num_shards: int
    started_at_ms: int  # epoch milliseconds, by the database's clock
    heartbeat_age_s: float  # seconds since its last heartbeat, by the database's clock
    # the read sides the member runs: only they may be placed on it (empty: it runs none)
    read_sides: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LeaseKey:
    """What a lease is on: an entity shard (`read_side_id` None) or one read side's projection of a
    shard. Build it with `LeaseKey.entity_shard(s)` or `LeaseKey.projection(read_side_id, s)`."""

    read_side_id: str | None
    shard: int

    @classmethod
    def entity_shard(cls, shard: int) -> LeaseKey:
        return cls(None, shard)

    @classmethod
    def projection(cls, read_side_id: str, shard: int) -> LeaseKey:
        return cls(read_side_id, shard)

    @property
    def sort_key(self) -> tuple[int, str, int]:
        """Entity shards first, then by read side and shard."""
        if self.read_side_id is None:
            return (0, "", self.shard)
        return (1, self.read_side_id, self.shard)

    def __str__(self) -> str:
        if self.read_side_id is None:
            return f"entity shard {self.shard}"
        return f"read side {self.read_side_id!r} shard {self.shard}"


@dataclass(frozen=True, slots=True)
class LeaseView:
    """A held lease, for operators (`cos cluster status`)."""

    key: LeaseKey
    owner: str
    token: int
    # seconds until the lease expires by the database's clock; negative once it has expired and nobody
    # has taken it yet
    expires_in_s: float


class Membership(Protocol):
    async def join(
        self,
        member_id: str,
        address: str,
        num_shards: int,
        *,
        member_ttl_s: float,
        read_sides: Sequence[str] = (),
    ) -> int:
        """Record the member as started now (again, if it had left), with the read sides it runs
        (schema version 13), and return how many predecessors
        it evicted: members recorded at the same address, which the joining node has just bound, so
        they cannot be running; they are marked as left and their leases freed (tokens kept).

        Raises `ConfigError` naming COS_NUM_SHARDS when a live member (heartbeat within
        `member_ttl_s`) runs with another shard count: two nodes would file the same entity under
        different shards. Joins are serialised, so two nodes starting together with different counts
        cannot both be let in."""
        ...

    async def heartbeat(self, member_id: str) -> None:
        """Mark the member alive now. Raises `MembershipLost` when its row is gone or marked as left:
        the node was evicted and must stop acting on what it owned. A member that was merely silent
        past the TTL is live again; whatever leases were taken from it meanwhile stay fenced."""
        ...

    async def live_members(self, ttl_s: float) -> list[Member]:
        """Members that have not left and whose last heartbeat is at most `ttl_s` old, by member id."""
        ...

    async def leave(self, member_id: str, releasing: Sequence[tuple[LeaseKey, int]] = ()) -> None:
        """Mark the member as left (its next heartbeat fails) and `release` the (key, token) pairs given,
        at once: the others place the shards without it as they find them free. Nothing happens to a
        member unknown or already gone, nor to leases it no longer holds under those tokens."""
        ...


class Leases(Protocol):
    async def acquire(self, key: LeaseKey, owner: str, ttl_s: float) -> int | None:
        """Take the lease for `ttl_s` when it is free, expired, or already `owner`'s; returns the new
        token, which is greater than any token the lease had before. None when another owner holds
        it. Of two nodes acquiring one lease at once, at most one succeeds."""
        ...

    async def acquire_many(self, keys: Sequence[LeaseKey], owner: str, ttl_s: float) -> dict[LeaseKey, int]:
        """`acquire` of many leases in one round trip: the new token of each lease taken; the others
        are left out."""
        ...

    async def renew(self, key: LeaseKey, owner: str, token: int, ttl_s: float) -> bool:
        """Extend the lease to at least `ttl_s` from now, if `owner` still holds it under `token`;
        False when it is no longer ours. An expiry is never moved earlier, so a renewal that arrives
        late cannot shorten what an earlier confirmation promised. A lease that expired but that nobody
        took since keeps its token and is renewed: nobody else can have acted on it in between."""
        ...

    async def renew_all(
        self, owner: str, held: Sequence[tuple[LeaseKey, int]], ttl_s: float
    ) -> set[LeaseKey]:
        """`renew` of many (key, token) pairs in one round trip; returns the keys still held."""
        ...

    async def release(self, key: LeaseKey, owner: str, token: int) -> None:
        """Free the lease at once, if `owner` still holds it under `token`, so a successor need not
        wait for it to expire. The token is kept: the next acquisition raises it further."""
        ...

    async def release_all(self, owner: str, held: Sequence[tuple[LeaseKey, int]]) -> None:
        """`release` of many (key, token) pairs in one round trip (a node shutting down)."""
        ...

    async def holders(self) -> list[LeaseView]:
        """Every lease with an owner (expired ones included), entity shards first, then by read side
        and shard."""
        ...


class ClusterStore(Membership, Leases, Protocol):
    """Membership and leases on one database."""

    @property
    def description(self) -> str: ...

    async def close(self) -> None: ...

"""Membership and leases on PostgreSQL (migrations 11 and 13), judged by the database's clock.

Every method is one autocommitted statement, except `join`, whose check and write share a transaction.
Within a statement `now()` is the time its transaction started, so an expiry a statement sets is
`now() + ttl` measured from before the database received it: a node that reads its own clock before
sending may act until its reading plus the TTL (less a safety margin) and never outlive the database's
view of the lease.

Two nodes acquiring one lease at once: acquisition is one `INSERT … ON CONFLICT DO UPDATE … WHERE`
statement. The row is locked before the condition is tested, and the loser of the race tests it
against the winner's committed row (or waits for the winner's new row to commit and then takes the
conflict path), where the lease is held by another owner and unexpired, so it takes nothing.

Lock order: appends lock entity-shard rows in shard order (decision D3) and every statement here that
touches several rows locks them in the same order (entity shards, then projection leases by read side
and shard), so a renewal of a node's few hundred leases and the appends on those shards never deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from chiefofstate.core.errors import MembershipLost
from chiefofstate.ports.cluster import LeaseKey, LeaseView, Member
from chiefofstate.stores.cluster_rows import shard_count_mismatch
from chiefofstate.stores.postgres.datastore import ConnectionSettings, PostgresDatastore

# pg_advisory_xact_lock key serialising joins ("cos_join"), so that two nodes starting together with
# different shard counts cannot each miss the other.
_JOIN_LOCK_KEY = 0x636F735F6A6F696E

_LIVE = "left_at IS NULL AND heartbeat_at >= now() - make_interval(secs => {ttl}::float8)"
_LIVE_WITH_OTHER_SHARD_COUNT = f"""
SELECT member_id, address, num_shards FROM cos_cluster_members
WHERE member_id <> $1 AND num_shards <> $2 AND {_LIVE.format(ttl="$3")}
ORDER BY member_id
"""
_JOIN = """
INSERT INTO cos_cluster_members
    (member_id, address, num_shards, started_at, heartbeat_at, left_at, read_sides)
VALUES ($1, $2, $3, now(), now(), NULL, $4::text[])
ON CONFLICT (member_id) DO UPDATE SET
    address = EXCLUDED.address, num_shards = EXCLUDED.num_shards, started_at = EXCLUDED.started_at,
    heartbeat_at = EXCLUDED.heartbeat_at, left_at = NULL, read_sides = EXCLUDED.read_sides
"""
# greatest(): a heartbeat whose transaction started earlier but committed later must not move it back.
_HEARTBEAT = """
UPDATE cos_cluster_members SET heartbeat_at = greatest(heartbeat_at, now())
WHERE member_id = $1 AND left_at IS NULL
RETURNING member_id
"""
_LIVE_MEMBERS = f"""
SELECT member_id, address, num_shards, read_sides,
       (extract(epoch FROM started_at) * 1000)::bigint AS started_at_ms,
       greatest(extract(epoch FROM now() - heartbeat_at)::float8, 0) AS heartbeat_age_s
FROM cos_cluster_members
WHERE {_LIVE.format(ttl="$1")}
ORDER BY member_id
"""
# A member recorded at the address a joining node has just bound cannot be running (it would hold the
# address): it is its predecessor, killed or crashed. Its leases are freed at once, their tokens kept,
# so a node restarted in place serves again without waiting for them to expire.
_EVICT_PREDECESSORS = """
WITH gone AS (
    UPDATE cos_cluster_members SET left_at = now()
    WHERE address = $2 AND member_id <> $1 AND left_at IS NULL
    RETURNING member_id
),
freed_shards AS (
    UPDATE cos_shard_locks AS l SET owner = NULL, expires_at = NULL
    FROM (
        SELECT k.shard FROM cos_shard_locks AS k
        WHERE k.owner IN (SELECT member_id FROM gone)
        ORDER BY k.shard
        FOR UPDATE OF k
    ) AS theirs
    WHERE l.shard = theirs.shard
    RETURNING l.shard
),
freed_projections AS (
    UPDATE cos_projection_leases AS p SET owner = NULL, expires_at = NULL
    FROM (
        SELECT k.read_side_id, k.shard FROM cos_projection_leases AS k
        WHERE k.owner IN (SELECT member_id FROM gone)
        ORDER BY k.read_side_id, k.shard
        FOR UPDATE OF k
    ) AS theirs
    WHERE p.read_side_id = theirs.read_side_id AND p.shard = theirs.shard
    RETURNING p.shard
)
SELECT (SELECT count(*) FROM gone) AS members,
       (SELECT count(*) FROM freed_shards) + (SELECT count(*) FROM freed_projections) AS leases
"""
# Notified at commit when a member releases leases or leaves, so that the others' coordinators run a
# round at once instead of at their next periodic one (docs/cluster.md, "Handover"); the payload is
# the member's id, for the log.
CLUSTER_CHANNEL = "cos_cluster"

# $1 owner, $2 TTL in seconds, $3 entity shards, $4 and $5 the projections' read side ids and shards.
# A new row starts at token 1; an existing one goes up by one, so every acquisition raises the token.
# greatest(): taking again a lease we hold never shortens it.
_ACQUIRE = """
WITH taken_shards AS (
    INSERT INTO cos_shard_locks AS l (shard, owner, lease_token, expires_at)
    SELECT wanted.shard, $1, 1, now() + make_interval(secs => $2::float8)
    FROM unnest($3::int[]) AS wanted(shard)
    ORDER BY wanted.shard
    ON CONFLICT (shard) DO UPDATE SET
        owner = EXCLUDED.owner, lease_token = l.lease_token + 1,
        expires_at = greatest(l.expires_at, EXCLUDED.expires_at)
    WHERE l.owner IS NULL OR l.expires_at < now() OR l.owner = EXCLUDED.owner
    RETURNING NULL::text AS read_side_id, l.shard, l.lease_token
),
taken_projections AS (
    INSERT INTO cos_projection_leases AS p (read_side_id, shard, owner, lease_token, expires_at)
    SELECT wanted.read_side_id, wanted.shard, $1, 1, now() + make_interval(secs => $2::float8)
    FROM unnest($4::text[], $5::int[]) AS wanted(read_side_id, shard)
    ORDER BY wanted.read_side_id, wanted.shard
    ON CONFLICT (read_side_id, shard) DO UPDATE SET
        owner = EXCLUDED.owner, lease_token = p.lease_token + 1,
        expires_at = greatest(p.expires_at, EXCLUDED.expires_at)
    WHERE p.owner IS NULL OR p.expires_at < now() OR p.owner = EXCLUDED.owner
    RETURNING p.read_side_id, p.shard, p.lease_token
)
SELECT read_side_id, shard, lease_token FROM taken_shards
UNION ALL
SELECT read_side_id, shard, lease_token FROM taken_projections
"""


def _held_leases_update(assignment: str, *, notify: bool = False, leave: bool = False) -> str:
    """One statement changing the leases `owner` ($1) holds under the given tokens: $2, $3 entity shards
    and tokens, $4, $5, $6 the projections' read side ids, shards and tokens (further parameters are
    the assignment's). The rows are locked first, in the order appends lock them, by a sub-select that
    re-checks owner and token on the row it locks. With `notify`, the statement answers no rows and
    notifies CLUSTER_CHANNEL when it changed any; with `leave` too, it also marks member $1 as left."""
    changed = """SELECT read_side_id, shard FROM changed_shards
UNION ALL
SELECT read_side_id, shard FROM changed_projections"""
    gone = ""
    if notify:
        changed = f"""SELECT pg_notify('{CLUSTER_CHANNEL}', $1)
WHERE EXISTS (SELECT 1 FROM changed_shards) OR EXISTS (SELECT 1 FROM changed_projections)"""
    if leave:
        gone = """,
gone AS (
    UPDATE cos_cluster_members SET left_at = now() WHERE member_id = $1 AND left_at IS NULL
    RETURNING member_id
)"""
        changed += " OR EXISTS (SELECT 1 FROM gone)"
    return f"""
WITH changed_shards AS (
    UPDATE cos_shard_locks AS l SET {assignment}
    FROM (
        SELECT k.shard FROM cos_shard_locks AS k
        JOIN unnest($2::int[], $3::bigint[]) AS held(shard, token)
            ON k.shard = held.shard AND k.lease_token = held.token
        WHERE k.owner = $1
        ORDER BY k.shard
        FOR UPDATE OF k
    ) AS ours
    WHERE l.shard = ours.shard
    RETURNING NULL::text AS read_side_id, l.shard
),
changed_projections AS (
    UPDATE cos_projection_leases AS l SET {assignment}
    FROM (
        SELECT k.read_side_id, k.shard FROM cos_projection_leases AS k
        JOIN unnest($4::text[], $5::int[], $6::bigint[]) AS held(read_side_id, shard, token)
            ON k.read_side_id = held.read_side_id AND k.shard = held.shard AND k.lease_token = held.token
        WHERE k.owner = $1
        ORDER BY k.read_side_id, k.shard
        FOR UPDATE OF k
    ) AS ours
    WHERE l.read_side_id = ours.read_side_id AND l.shard = ours.shard
    RETURNING l.read_side_id, l.shard
){gone}
{changed}
"""


# An expiry is never moved earlier: a renewal that started before another but landed after it must
# not take back what the other's confirmation promised.
_RENEW = _held_leases_update("expires_at = greatest(l.expires_at, now() + make_interval(secs => $7::float8))")
# The token stays: the next acquisition raises it further, so the released token is never valid again.
_RELEASE = _held_leases_update("owner = NULL, expires_at = NULL", notify=True)
# Leaving releases the leases given and marks the member as left in one statement, so the others'
# placement stops counting it at the moment its shards are free.
_LEAVE = _held_leases_update("owner = NULL, expires_at = NULL", notify=True, leave=True)
# An owner without an expiry is never written here; a row edited by hand that has one reads as expiring now.
_HOLDERS = """
SELECT NULL::text AS read_side_id, shard, owner, lease_token,
       COALESCE(extract(epoch FROM expires_at - now())::float8, 0) AS expires_in_s
FROM cos_shard_locks WHERE owner IS NOT NULL
UNION ALL
SELECT read_side_id, shard, owner, lease_token, COALESCE(extract(epoch FROM expires_at - now())::float8, 0)
FROM cos_projection_leases WHERE owner IS NOT NULL
"""


def _key(record: Any) -> LeaseKey:
    read_side_id: str | None = record["read_side_id"]
    return LeaseKey(read_side_id, int(record["shard"]))


def _acquisition_arguments(keys: Iterable[LeaseKey]) -> tuple[list[int], list[str], list[int]]:
    shards: list[int] = []
    read_side_ids: list[str] = []
    projection_shards: list[int] = []
    # ON CONFLICT DO UPDATE refuses to change one row twice in a statement.
    for key in dict.fromkeys(keys):
        if key.read_side_id is None:
            shards.append(key.shard)
        else:
            read_side_ids.append(key.read_side_id)
            projection_shards.append(key.shard)
    return shards, read_side_ids, projection_shards


def _held_arguments(
    held: Iterable[tuple[LeaseKey, int]],
) -> tuple[list[int], list[int], list[str], list[int], list[int]]:
    shards: list[int] = []
    tokens: list[int] = []
    read_side_ids: list[str] = []
    projection_shards: list[int] = []
    projection_tokens: list[int] = []
    for key, token in dict.fromkeys(held):
        if key.read_side_id is None:
            shards.append(key.shard)
            tokens.append(token)
        else:
            read_side_ids.append(key.read_side_id)
            projection_shards.append(key.shard)
            projection_tokens.append(token)
    return shards, tokens, read_side_ids, projection_shards, projection_tokens


class PostgresClusterStore:
    """`ClusterStore` on PostgreSQL; the schema is migrated by the journal (version 13 or later).

    It has a pool of its own: a renewal that queued behind appends or read-side queries could let the
    node's leases expire under load."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        self._datastore = datastore

    @classmethod
    async def open(cls, settings: ConnectionSettings) -> PostgresClusterStore:
        """Connect the pool; raises StoreUnavailable when the server cannot be reached or refuses us."""
        return cls(await PostgresDatastore.open(settings, application_name="chiefofstate-cluster"))

    @property
    def description(self) -> str:
        return self._datastore.description

    async def join(
        self,
        member_id: str,
        address: str,
        num_shards: int,
        *,
        member_ttl_s: float,
        read_sides: Sequence[str] = (),
    ) -> int:
        async with self._datastore.connection("join the cluster") as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _JOIN_LOCK_KEY)
            evicted = await connection.fetchrow(_EVICT_PREDECESSORS, member_id, address)
            others = await connection.fetch(_LIVE_WITH_OTHER_SHARD_COUNT, member_id, num_shards, member_ttl_s)
            if others:
                raise shard_count_mismatch(
                    num_shards,
                    [
                        (record["member_id"], record["address"], int(record["num_shards"]))
                        for record in others
                    ],
                )
            await connection.execute(_JOIN, member_id, address, num_shards, list(read_sides))
        return int(evicted["members"])

    async def heartbeat(self, member_id: str) -> None:
        async with self._datastore.connection("record a heartbeat") as connection:
            found = await connection.fetchval(_HEARTBEAT, member_id)
        if found is None:
            raise MembershipLost(
                f"member {member_id} is no longer in the cluster (its row is gone or has left)"
            )

    async def live_members(self, ttl_s: float) -> list[Member]:
        async with self._datastore.connection("list the live members") as connection:
            records = await connection.fetch(_LIVE_MEMBERS, ttl_s)
        return [
            Member(
                record["member_id"],
                record["address"],
                int(record["num_shards"]),
                int(record["started_at_ms"]),
                float(record["heartbeat_age_s"]),
                frozenset(record["read_sides"] or ()),
            )
            for record in records
        ]

    async def leave(self, member_id: str, releasing: Sequence[tuple[LeaseKey, int]] = ()) -> None:
        async with self._datastore.connection("leave the cluster") as connection:
            await connection.fetch(_LEAVE, member_id, *_held_arguments(releasing))

    async def acquire(self, key: LeaseKey, owner: str, ttl_s: float) -> int | None:
        return (await self.acquire_many([key], owner, ttl_s)).get(key)

    async def acquire_many(self, keys: Sequence[LeaseKey], owner: str, ttl_s: float) -> dict[LeaseKey, int]:
        shards, read_side_ids, projection_shards = _acquisition_arguments(keys)
        if not shards and not read_side_ids:
            return {}
        async with self._datastore.connection("acquire leases") as connection:
            records = await connection.fetch(_ACQUIRE, owner, ttl_s, shards, read_side_ids, projection_shards)
        return {_key(record): int(record["lease_token"]) for record in records}

    async def renew(self, key: LeaseKey, owner: str, token: int, ttl_s: float) -> bool:
        return key in await self.renew_all(owner, [(key, token)], ttl_s)

    async def renew_all(
        self, owner: str, held: Sequence[tuple[LeaseKey, int]], ttl_s: float
    ) -> set[LeaseKey]:
        if not held:
            return set()
        async with self._datastore.connection("renew leases") as connection:
            records = await connection.fetch(_RENEW, owner, *_held_arguments(held), ttl_s)
        return {_key(record) for record in records}

    async def release(self, key: LeaseKey, owner: str, token: int) -> None:
        await self.release_all(owner, [(key, token)])

    async def release_all(self, owner: str, held: Sequence[tuple[LeaseKey, int]]) -> None:
        if not held:
            return
        async with self._datastore.connection("release leases") as connection:
            await connection.fetch(_RELEASE, owner, *_held_arguments(held))

    async def holders(self) -> list[LeaseView]:
        async with self._datastore.connection("list the lease holders") as connection:
            records = await connection.fetch(_HOLDERS)
        views = [
            LeaseView(
                _key(record), record["owner"], int(record["lease_token"]), float(record["expires_in_s"])
            )
            for record in records
        ]
        return sorted(views, key=lambda view: view.key.sort_key)

    async def close(self) -> None:
        await self._datastore.close()

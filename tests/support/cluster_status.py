"""Waiting for a two-member cluster to settle, and finding entities each member owns, through
`cos cluster status`'s reader (the database's view of members and leases)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from chiefofstate.cli.cluster import ClusterStatus, read_status
from chiefofstate.config.settings import load_settings
from chiefofstate.core.sharding import shard_of
from tests.support.cluster import Node

SETTLE_TIMEOUT_S = 90.0


async def settled(node: Node, members: int = 2) -> ClusterStatus:
    """`members` members live, every shard held, each member holding some."""
    settings = load_settings(node.env, require_write_side=False)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        status = await read_status(settings)
        held = [status.owned(member.member_id)[0] for member in status.members]
        if len(held) == members and all(held) and not status.unowned_shards():
            return status
        assert time.monotonic() < deadline, f"not settled: {status.as_json()}"
        await asyncio.sleep(0.2)


def entities_owned_by_each(
    status: ClusterStatus, nodes: Sequence[Node], prefix: str = "acct"
) -> dict[str, str]:
    """An entity id for each member's shards: {entity id: name of the node owning it}."""
    by_address = {f"127.0.0.1:{node.cluster_port}": node.name for node in nodes}
    owner_of_shard = {
        shard: by_address[member.address]
        for member in status.members
        for shard in status.owned(member.member_id)[0]
    }
    chosen: dict[str, str] = {}
    for index in range(10_000):
        entity = f"{prefix}-{index}"
        owner = owner_of_shard[shard_of(entity, status.num_shards)]
        if owner not in chosen.values():
            chosen[entity] = owner
        if len(chosen) == len(nodes):
            return chosen
    raise AssertionError("no entity found for each member")

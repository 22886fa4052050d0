"""`cos cluster status`: the members of the cluster and who owns each shard, read from the database the
members share (the same COS_DB_* settings as the nodes), so it works whichever node is up."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import typer
from rich.table import Table

from chiefofstate.cli.output import make_console
from chiefofstate.config.settings import Settings
from chiefofstate.node.stores import open_cluster_store
from chiefofstate.ports.cluster import LeaseView, Member

app = typer.Typer(no_args_is_help=True, help="Inspect the cluster of nodes sharing this database.")
console = make_console()


@dataclass(frozen=True)
class ClusterStatus:
    num_shards: int
    members: list[Member]
    leases: list[LeaseView]

    def owned(self, member_id: str) -> tuple[list[int], list[str]]:
        shards, projections = [], []
        for lease in self.leases:
            if lease.owner != member_id or lease.expires_in_s <= 0:
                continue
            if lease.key.read_side_id is None:
                shards.append(lease.key.shard)
            else:
                projections.append(f"{lease.key.read_side_id}/{lease.key.shard}")
        return sorted(shards), sorted(projections)

    def unowned_shards(self) -> list[int]:
        held = {
            lease.key.shard
            for lease in self.leases
            if lease.key.read_side_id is None and lease.expires_in_s > 0
        }
        return [shard for shard in range(self.num_shards) if shard not in held]

    def _member_json(self, member: Member) -> dict[str, Any]:
        shards, projections = self.owned(member.member_id)
        return {
            "member_id": member.member_id,
            "address": member.address,
            "started_at": _iso(member.started_at_ms),
            "last_heartbeat_seconds_ago": round(member.heartbeat_age_s, 3),
            "read_sides": sorted(member.read_sides),
            "shards": shards,
            "projections": projections,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "num_shards": self.num_shards,
            "members": [self._member_json(member) for member in self.members],
            "leases": [
                {
                    "shard": lease.key.shard,
                    "read_side_id": lease.key.read_side_id,
                    "owner": lease.owner,
                    "token": lease.token,
                    "expires_in_seconds": round(lease.expires_in_s, 3),
                }
                for lease in self.leases
            ],
            "unowned_shards": self.unowned_shards(),
        }


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="seconds")


async def read_status(settings: Settings) -> ClusterStatus:
    store = await open_cluster_store(settings.store)
    try:
        members = await store.live_members(settings.cluster.members.ttl_s)
        leases = await store.holders()
    finally:
        await store.close()
    return ClusterStatus(settings.num_shards, members, leases)


def print_status(status: ClusterStatus, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status.as_json(), indent=2))
        return
    members = Table(title=f"{len(status.members)} live members")
    for column in ("member", "address", "started", "heartbeat", "shards", "projections"):
        members.add_column(column)
    for member in status.members:
        shards, projections = status.owned(member.member_id)
        members.add_row(
            member.member_id[:8],
            member.address,
            _iso(member.started_at_ms),
            f"{member.heartbeat_age_s:.1f}s ago",
            ", ".join(map(str, shards)) or "-",
            str(len(projections)),
        )
    console.print(members)
    leases = Table(title="shard leases")
    for column in ("shard", "owner", "token", "expires in"):
        leases.add_column(column)
    for lease in status.leases:
        if lease.key.read_side_id is None:
            leases.add_row(
                str(lease.key.shard), lease.owner[:8], str(lease.token), f"{lease.expires_in_s:.1f}s"
            )
    console.print(leases)
    projection_leases = [lease for lease in status.leases if lease.key.read_side_id is not None]
    if projection_leases:
        table = Table(title="projection leases (read side / shard)")
        for column in ("projection", "owner", "token", "expires in"):
            table.add_column(column)
        for lease in projection_leases:
            table.add_row(
                f"{lease.key.read_side_id}/{lease.key.shard}",
                lease.owner[:8],
                str(lease.token),
                f"{lease.expires_in_s:.1f}s",
            )
        console.print(table)
    unowned = status.unowned_shards()
    console.print(f"shards without an owner: {', '.join(map(str, unowned)) if unowned else 'none'}")

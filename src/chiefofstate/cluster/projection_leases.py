"""Which read-side projections a member should run, and what the coordinator asks of the read sides.

Each (read side, shard) projection has a lease of its own (`LeaseKey.projection`) and goes to one live
member by the rendezvous hashing entity shards use (core/placement.py, `read_side_key`), among the
members that run that read side: a member records the read sides it runs when it joins, so a member
started with COS_READ_SIDE_ENABLED=false, or without a read side in its configuration, is given none
of its projections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from chiefofstate.core.placement import assign, read_side_key
from chiefofstate.ports.cluster import LeaseKey
from chiefofstate.ports.offsets import ProjectionKey


class ProjectionRunner(Protocol):
    """The read sides of a member (readside/runtime.py), as the coordinator drives them."""

    def enabled_read_side_ids(self) -> list[str]: ...

    async def prepare(self, *, apply_auto_start: bool) -> None:
        """Ready the read sides before any projection runs (autoStart when this member is the first)."""
        ...

    def run_projection(self, key: ProjectionKey, token: int) -> None:
        """The lease was granted under `token`: start the projection from its stored record."""
        ...

    async def stop_projection(self, key: ProjectionKey) -> None:
        """Handing over: stop it and store its offset under the lease; returns when done."""
        ...

    def drop_projection(self, key: ProjectionKey) -> None:
        """The lease is lost: stop it without storing anything more."""
        ...


class ProjectionPlacement:
    """The projection keys of the read sides this member runs, and which of them are its own."""

    def __init__(self, read_side_ids: Sequence[str], num_shards: int) -> None:
        self.read_side_ids = list(read_side_ids)
        self._names = {
            read_side_id: {
                LeaseKey.projection(read_side_id, shard): read_side_key(read_side_id, shard)
                for shard in range(num_shards)
            }
            for read_side_id in self.read_side_ids
        }

    def mine(self, runs: Mapping[str, frozenset[str]], member_id: str) -> set[LeaseKey]:
        """The projection keys placed on `member_id`, given the read sides each live member runs."""
        placed: set[LeaseKey] = set()
        for read_side_id, names in self._names.items():
            candidates = [member for member, read_sides in runs.items() if read_side_id in read_sides]
            owners = assign(names.values(), candidates)
            placed.update(key for key, name in names.items() if owners.get(name) == member_id)
        return placed

"""Where each entity shard is served: the member holding its lease, the address it advertises and the
lease's token, as the coordinator last read them from the database (cluster/coordinator.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import NamedTuple


class Route(NamedTuple):
    address: str
    # The lease's token: a new tenure of the shard, even at the same address (a member restarted in
    # place), is a new route, which a request that found the old one unreachable may try.
    token: int


class RoutingTable:
    def __init__(self, own_address: str) -> None:
        self.own_address = own_address
        self._owners: dict[int, Route] = {}
        self._changed = asyncio.Event()

    def owner(self, shard: int) -> Route | None:
        return self._owners.get(shard)

    def replace(self, owners: Mapping[int, Route]) -> None:
        if owners != self._owners:
            self._owners = dict(owners)
        # Woken on every refresh, changed or not: a request waiting for an owner checks again.
        self._changed.set()
        self._changed = asyncio.Event()

    def forget(self, shard: int, route: Route) -> None:
        """A member answered that it does not serve the shard: do not send it there again until the
        next refresh says otherwise."""
        if self._owners.get(shard) == route:
            del self._owners[shard]

    async def refreshed(self) -> None:
        """Returns at the next refresh of the table."""
        await self._changed.wait()

    def owners(self) -> dict[int, Route]:
        return dict(self._owners)

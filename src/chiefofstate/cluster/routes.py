"""Where each entity shard is served: the member holding its lease and the address it advertises, as
the coordinator last read them from the database (cluster/coordinator.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping


class RoutingTable:
    def __init__(self, own_address: str) -> None:
        self.own_address = own_address
        self._owners: dict[int, str] = {}
        self._changed = asyncio.Event()

    def owner_address(self, shard: int) -> str | None:
        return self._owners.get(shard)

    def replace(self, owners: Mapping[int, str]) -> None:
        if owners != self._owners:
            self._owners = dict(owners)
        # Woken on every refresh, changed or not: a request waiting for an owner checks again.
        self._changed.set()
        self._changed = asyncio.Event()

    def forget(self, shard: int, address: str) -> None:
        """A member answered that it does not serve the shard: do not send it there again until the
        next refresh says otherwise."""
        if self._owners.get(shard) == address:
            del self._owners[shard]

    async def refreshed(self) -> None:
        """Returns at the next refresh of the table."""
        await self._changed.wait()

    def owners(self) -> dict[int, str]:
        return dict(self._owners)

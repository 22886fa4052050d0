"""The offset store in memory, beside the in-memory journal and for the same uses (see journal.py).

It needs no journal: offsets are plain numbers here, kept per read side and shard. The SQL stores also
write when each row was last updated; that is not visible through the port, so nothing here keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from chiefofstate.ports.offsets import Halt, ProjectionChange, ProjectionKey, ShardRecord
from chiefofstate.stores.memory.datastore import MemoryDatastore
from chiefofstate.stores.offset_rows import merge_records


class MemoryOffsetStore:
    """`OffsetStore` in this process's memory."""

    def __init__(self, lease_token: Callable[[str, int], int] | None = None) -> None:
        """`lease_token(read side id, shard)`: the projection lease's current token, for fenced commits
        (`MemoryClusterDatabase.projection_token`); without it every fenced entry is refused."""
        self._datastore = MemoryDatastore("offset store")
        self._lease_token = lease_token
        # read side id → shard → value, one map per upstream table
        self._offsets: dict[str, dict[int, int]] = {}
        self._paused: dict[str, dict[int, bool]] = {}
        self._halts: dict[str, dict[int, Halt]] = {}

    @property
    def description(self) -> str:
        return self._datastore.description

    async def load(self, read_side_id: str) -> dict[int, ShardRecord]:
        return await self._datastore.run(
            lambda: merge_records(
                self._offsets.get(read_side_id, {}),
                self._paused.get(read_side_id, {}),
                self._halts.get(read_side_id, {}),
            )
        )

    def _holds(self, key: ProjectionKey, token: int) -> bool:
        """Whether `token` is the projection lease's current one (never, without a cluster database)."""
        return self._lease_token is not None and self._lease_token(*key) == token

    async def save_offsets(
        self,
        offsets: Sequence[tuple[str, int, int]],
        *,
        lease_tokens: Mapping[ProjectionKey, int] | None = None,
    ) -> set[ProjectionKey]:
        tokens = lease_tokens or {}

        def save() -> set[ProjectionKey]:
            refused = {key for key, token in tokens.items() if not self._holds(key, token)}
            # In order, so an entry repeated in one call ends at its last value, as on SQLite.
            for read_side_id, shard, offset in offsets:
                if (read_side_id, shard) not in refused:
                    self._offsets.setdefault(read_side_id, {})[shard] = offset
            return {(read_side_id, shard) for read_side_id, shard, _ in offsets} & refused

        return await self._datastore.run(save)

    async def skip_to(self, read_side_id: str, shard: int, offset: int) -> None:
        def skip() -> None:
            self._offsets.setdefault(read_side_id, {})[shard] = offset
            self._halts.get(read_side_id, {}).pop(shard, None)

        await self._datastore.run(skip)

    async def reset(self, read_side_id: str, shard: int) -> None:
        def reset() -> None:
            self._offsets.get(read_side_id, {}).pop(shard, None)
            self._halts.get(read_side_id, {}).pop(shard, None)

        await self._datastore.run(reset)

    async def set_paused(self, read_side_id: str, shards: Sequence[int], paused: bool) -> None:
        def store() -> None:
            flags = self._paused.setdefault(read_side_id, {})
            for shard in shards:
                flags[shard] = paused

        await self._datastore.run(store)

    async def save_halt(
        self,
        read_side_id: str,
        shard: int,
        offset: int | None,
        halt: Halt,
        *,
        lease_token: int | None = None,
    ) -> bool:
        def save() -> bool:
            if lease_token is not None and not self._holds((read_side_id, shard), lease_token):
                return False
            if offset is not None:
                self._offsets.setdefault(read_side_id, {})[shard] = offset
            self._halts.setdefault(read_side_id, {})[shard] = halt
            return True

        return await self._datastore.run(save)

    async def clear_halt(self, read_side_id: str, shard: int) -> None:
        def clear() -> None:
            self._halts.get(read_side_id, {}).pop(shard, None)

        await self._datastore.run(clear)

    async def apply_change(
        self,
        read_side_id: str,
        change: ProjectionChange,
        *,
        lease_tokens: Mapping[ProjectionKey, int] | None = None,
    ) -> set[ProjectionKey]:
        tokens = lease_tokens or {}

        def apply() -> set[ProjectionKey]:
            refused = {key for key, token in tokens.items() if not self._holds(key, token)}
            if refused:
                return refused
            offsets = self._offsets.setdefault(read_side_id, {})
            halts = self._halts.setdefault(read_side_id, {})
            for shard in change.shards:
                if change.paused is not None:
                    self._paused.setdefault(read_side_id, {})[shard] = change.paused
                if change.forget_offsets:
                    offsets.pop(shard, None)
                if change.clear_halts:
                    halts.pop(shard, None)
            offsets.update(change.offsets)
            return set()

        return await self._datastore.run(apply)

    async def close(self) -> None:
        def forget() -> None:
            self._offsets.clear()
            self._paused.clear()
            self._halts.clear()

        self._datastore.close(forget)

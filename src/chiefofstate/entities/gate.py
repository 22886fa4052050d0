"""Which shards this node may serve now, as the entities see it.

A node alone on its journal serves every shard unfenced. A cluster member serves a shard only while it
holds the shard's lease (cluster/ownership.py), and appends with the lease's fencing token so that the
journal refuses the append of a member that lost the lease, however late it arrives (docs/cluster.md).
"""

from __future__ import annotations

from typing import Protocol


class ShardGate(Protocol):
    def admit(self, shard: int) -> int | None:
        """The fencing token to append with (None: unfenced), or raise `ShardNotHere`.

        The token is also the shard's *tenure* on this node: state cached under another token may be
        older than what another node wrote meanwhile, so it is recovered again."""
        ...

    def serves(self, shard: int, tenure: int | None) -> bool:
        """Whether `admit(shard)` would return `tenure` now, without raising: the fast path of reads of
        cached entities asks this before answering from the cache."""
        ...


class OpenGate:
    """Every shard, unfenced: a node that runs alone (the embedded SQLite file)."""

    __slots__ = ()

    def admit(self, shard: int) -> int | None:
        return None

    def serves(self, shard: int, tenure: int | None) -> bool:
        return tenure is None


OPEN_GATE = OpenGate()

"""What the cluster stores of every database say alike."""

from __future__ import annotations

from collections.abc import Sequence

from chiefofstate.core.errors import ConfigError

NUM_SHARDS_VARIABLE = "COS_NUM_SHARDS"


def shard_count_mismatch(num_shards: int, others: Sequence[tuple[str, str, int]]) -> ConfigError:
    """The refusal of a join when live members, given as (member id, address, shard count), run with
    another shard count: two nodes would file the same entity under different shards."""
    theirs = " and ".join(str(count) for count in sorted({count for _, _, count in others}))
    members = ", ".join(f"{member_id} ({address})" for member_id, address, _ in others)
    return ConfigError(
        NUM_SHARDS_VARIABLE,
        f"is {num_shards} here but {theirs} on the live members {members}; every node of a cluster must "
        f"file entities under the same shards: set {NUM_SHARDS_VARIABLE} to match, or stop those nodes first",
    )

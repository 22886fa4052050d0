"""Browsing the journal from a moment: the ordering to start after so the page begins with the first
event written at or after it. Each shard is searched by halves over its orderings, one row read per
step (about 20 steps for a million events), the shards together; write times are taken as rising with
the ordering within a shard, as one writer at a time appends to it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from chiefofstate.core.errors import InvalidArgument
from chiefofstate.readside.projection import ShardReader


def parse_moment(text: str) -> int:
    """Epoch milliseconds of `2026-12-03T20:04`, `2026-12-03 20:04:49` or with a zone; UTC when none."""
    try:
        moment = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise InvalidArgument(
            f"from must be a date and time such as 2026-12-03T20:04:05 (UTC), got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


async def cursor_in_shard(journal: ShardReader, shard: int, at_ms: int) -> int:
    """The ordering after which the shard's first row written at or after `at_ms` comes."""
    low = 0
    high = (await journal.shard_progress(shard, 0, 0)).head
    while low < high:
        middle = (low + high) // 2
        rows = await journal.read_shard(shard, middle, 1)
        if not rows:
            high = middle
        elif rows[0].write_timestamp_ms is None or rows[0].write_timestamp_ms < at_ms:
            low = rows[0].ordering
        else:
            high = middle
    return low


async def cursor_at(journal: ShardReader, shards: Sequence[int], at_ms: int) -> int:
    """The ordering to browse the given shards after, from `at_ms` on."""
    cursors = await asyncio.gather(*(cursor_in_shard(journal, shard, at_ms) for shard in shards))
    return min(cursors, default=0)

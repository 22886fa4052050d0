"""Browsing the journal from a moment: the search by halves finds the first event written at or after
it, in every shard, whatever the shard's size."""

from __future__ import annotations

import pytest

from chiefofstate.api.console.journal_time import cursor_at, cursor_in_shard, parse_moment
from chiefofstate.core.errors import InvalidArgument
from chiefofstate.ports.journal import AppendRequest
from chiefofstate.stores.memory.journal import MemoryJournal


async def _journal(writes: list[tuple[str, int, int]]) -> MemoryJournal:
    """(entity, shard, write time) per event, appended in that order."""
    journal = MemoryJournal()
    await journal.migrate(4)
    sequences: dict[str, int] = {}
    for entity_id, shard, written_ms in writes:
        sequence = sequences.get(entity_id, 0)
        request = AppendRequest(entity_id, shard, sequence, [b"x"], written_ms, "test")
        assert await journal.append_batch([request]) == [None]
        sequences[entity_id] = sequence + 1
    return journal


@pytest.mark.parametrize("count", [1, 2, 3, 10, 257])
async def test_the_cursor_starts_at_the_first_event_written_at_or_after_the_moment(count: int) -> None:
    journal = await _journal([("a", 1, 1000 + 10 * number) for number in range(count)])
    for at_ms in (0, 1000, 1001, 1000 + 10 * (count // 2), 1000 + 10 * count):
        after = await cursor_in_shard(journal, 1, at_ms)
        rows = await journal.read_shard(1, after, 1)
        expected = [
            row for row in await journal.read_shard(1, 0, 1000) if (row.write_timestamp_ms or 0) >= at_ms
        ]
        assert [row.ordering for row in rows] == [row.ordering for row in expected[:1]]


async def test_across_shards_no_event_at_or_after_the_moment_is_left_behind() -> None:
    journal = await _journal([("a", 0, 100), ("b", 2, 200), ("a", 0, 300), ("b", 2, 400)])
    after = await cursor_at(journal, [0, 1, 2, 3], 250)
    rows = [row for shard in range(4) for row in await journal.read_shard(shard, after, 10)]
    assert sorted(row.write_timestamp_ms or 0 for row in rows if (row.write_timestamp_ms or 0) >= 250) == [
        300,
        400,
    ]
    assert await cursor_at(journal, [1, 3], 250) == 0  # shards without events


def test_moments_are_utc_unless_they_say_otherwise() -> None:
    assert parse_moment("1970-01-01T00:00:01") == 1000
    assert parse_moment("1970-01-01 00:00:01.5") == 1500
    assert parse_moment("1970-01-01T01:00:01+01:00") == 1000
    with pytest.raises(InvalidArgument, match="from must be a date and time"):
        parse_moment("yesterday")

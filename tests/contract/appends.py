"""Append requests as the journal's contract and schema tests write them."""

from __future__ import annotations

from chiefofstate.core.sharding import shard_of
from chiefofstate.ports.journal import AppendRequest, Journal
from tests.contract.conftest import NUM_SHARDS

WRITER = "writer-1"
NOW_MS = 1_700_000_000_000


def request(entity_id: str, expected: int, count: int = 1, shard: int | None = None) -> AppendRequest:
    return AppendRequest(
        entity_id=entity_id,
        shard=shard_of(entity_id, NUM_SHARDS) if shard is None else shard,
        expected_sequence=expected,
        events=[payload(entity_id, expected + offset) for offset in range(1, count + 1)],
        write_timestamp_ms=NOW_MS,
        writer=WRITER,
    )


def payload(entity_id: str, sequence: int) -> bytes:
    return f"{entity_id}#{sequence}".encode()


async def append_ok(journal: Journal, *requests: AppendRequest) -> None:
    assert await journal.append_batch(list(requests)) == [None] * len(requests)

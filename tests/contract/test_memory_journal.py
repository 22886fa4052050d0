"""What only the in-memory stores have to show: no schema to wait for, nothing kept after close, one
operation at a time across threads, and a cancelled call that changes nothing."""

from __future__ import annotations

import asyncio
import threading

import pytest

from chiefofstate.core.errors import StoreUnavailable
from chiefofstate.ports.journal import AppendRequest
from chiefofstate.stores.memory.journal import MemoryJournal
from chiefofstate.stores.memory.offsets import MemoryOffsetStore


def request(entity_id: str, expected: int, shard: int = 0) -> AppendRequest:
    return AppendRequest(entity_id, shard, expected, [f"{entity_id}#{expected + 1}".encode()], 1, "w")


async def test_the_journal_needs_no_migration_and_says_it_is_not_durable() -> None:
    journal = MemoryJournal()
    assert await journal.append_batch([request("early", 0)]) == [None]
    assert len(await journal.read_events("early")) == 1
    assert journal.description == "in-memory journal (not durable)"
    assert MemoryOffsetStore().description == "in-memory offset store (not durable)"


async def test_closing_forgets_everything_and_closing_again_is_harmless() -> None:
    journal = MemoryJournal()
    await journal.append_batch([request("gone", 0)])
    await journal.close()
    await journal.close()
    assert journal._by_entity == {} and journal._by_tag == {}  # white-box: the memory is given back
    with pytest.raises(StoreUnavailable, match="in-memory journal"):
        await journal.read_events("gone")
    with pytest.raises(StoreUnavailable):
        await journal.migrate(8)


async def test_a_call_cancelled_before_its_turn_writes_nothing() -> None:
    journal = MemoryJournal()
    task = asyncio.create_task(journal.append_batch([request("cancelled", 0)]))
    await asyncio.sleep(0)  # the call is suspended, as it would be waiting for a database
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await journal.read_events("cancelled") == []
    assert await journal.append_batch([request("cancelled", 0)]) == [None]


def test_appends_from_several_threads_keep_one_commit_order_per_shard() -> None:
    journal = MemoryJournal()
    revisions = 200

    def writer(name: str) -> None:
        async def append_all() -> None:
            for revision in range(revisions):
                assert await journal.append_batch([request(name, revision, shard=1)]) == [None]

        asyncio.run(append_all())

    threads = [threading.Thread(target=writer, args=(f"thread-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    rows = asyncio.run(journal.read_shard(1, 0, 10_000))
    assert [row.ordering for row in rows] == list(range(1, 4 * revisions + 1))
    for n in range(4):
        mine = [row.sequence_number for row in rows if row.entity_id == f"thread-{n}"]
        assert mine == list(range(1, revisions + 1))

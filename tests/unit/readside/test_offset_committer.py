"""The background offset committer: batching, flush on demand, retries after store errors."""

from __future__ import annotations

import pytest

from chiefofstate.core.errors import StoreUnavailable
from chiefofstate.readside.offset_committer import OffsetCommitter
from chiefofstate.stores.memory.offsets import MemoryOffsetStore
from tests.support.readside import FailingOffsetStore, eventually_equal, stored_offsets


async def test_positions_are_written_together_at_the_interval() -> None:
    store = MemoryOffsetStore()
    committer = OffsetCommitter(store, 0.02)
    committer.start()
    for offset in range(1, 50):
        committer.record(("a", 0), offset)
    committer.record(("a", 1), 7)
    committer.record(("b", 0), 3)
    await eventually_equal(lambda: stored_offsets(store, "a", "b"), {("a", 0): 49, ("a", 1): 7, ("b", 0): 3})
    assert committer.writes == 1
    await committer.close()


async def test_flushing_one_key_leaves_the_others_pending() -> None:
    store = MemoryOffsetStore()
    committer = OffsetCommitter(store, 3600)
    committer.record(("a", 0), 5)
    committer.record(("a", 1), 6)
    await committer.flush(("a", 0))
    assert await stored_offsets(store, "a") == {("a", 0): 5}
    await committer.close()  # the rest is written on the way out
    assert await stored_offsets(store, "a") == {("a", 0): 5, ("a", 1): 6}


async def test_a_failed_write_keeps_the_positions_for_the_next_round() -> None:
    store = FailingOffsetStore(failures_left=2)
    committer = OffsetCommitter(store, 0.01)
    committer.start()
    committer.record(("a", 0), 5)
    await eventually_equal(lambda: stored_offsets(store.inner, "a"), {("a", 0): 5})
    await committer.close()


async def test_a_flush_on_demand_reports_the_store_error() -> None:
    store = FailingOffsetStore(failures_left=1)
    committer = OffsetCommitter(store, 3600)
    committer.record(("a", 0), 5)
    with pytest.raises(StoreUnavailable):
        await committer.flush(("a", 0))
    await committer.flush(("a", 0))
    assert await stored_offsets(store.inner, "a") == {("a", 0): 5}

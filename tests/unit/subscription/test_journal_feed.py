"""The journal feed of cluster-wide subscriptions: from the shard heads on, every event once, in journal
order per shard, in bounded reads, through database errors (subscription/feed.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from chiefofstate.core.errors import StoreUnavailable
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.ports.journal import JournalRow, ShardProgress
from chiefofstate.subscription.feed import JournalFeed
from chiefofstate.subscription.hub import SubscriptionHub


class FakeJournal:
    def __init__(self) -> None:
        self.rows: dict[int, list[JournalRow]] = {}
        self.ordering = 0
        self.reads: list[tuple[int, int, int]] = []
        self.failures = 0

    def append(self, shard: int, entity_id: str, revision: int) -> None:
        self.ordering += 1
        payload = EventWrapper(
            meta=MetaData(entity_id=entity_id, revision_number=revision)
        ).SerializeToString()
        row = JournalRow(self.ordering, entity_id, revision, shard, False, 0, payload)
        self.rows.setdefault(shard, []).append(row)

    async def read_shard(self, shard: int, after_ordering: int, limit: int) -> list[JournalRow]:
        self.reads.append((shard, after_ordering, limit))
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the database is away")
        return [row for row in self.rows.get(shard, []) if row.ordering > after_ordering][:limit]

    async def shard_progress(self, shard: int, after_ordering: int, count_limit: int) -> ShardProgress:
        rows = self.rows.get(shard, [])
        return ShardProgress(head=rows[-1].ordering if rows else 0, pending=0)


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, list[int]]] = []

    def on_committed(self, entity_id: str, shard: int, events: Sequence[EventWrapper]) -> None:
        self.calls.append((entity_id, shard, [event.meta.revision_number for event in events]))


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached in 5 s")


async def test_events_before_the_start_are_not_streamed_and_later_ones_are_in_order() -> None:
    journal, sink = FakeJournal(), Sink()
    journal.append(0, "old", 1)
    feed = JournalFeed(journal, 2, sink)
    await feed.start()
    await feed.activate()  # a subscriber is here
    try:
        for revision in (1, 2):
            journal.append(0, "a", revision)
        journal.append(1, "b", 1)
        journal.append(0, "c", 1)
        journal.append(0, "a", 3)
        feed.wake_shards([0, 1, 2, -1, 7])  # shards out of range (the count itself too) are ignored
        await until(lambda: feed.delivered == 5)
        assert sorted(sink.calls) == [("a", 0, [1, 2]), ("a", 0, [3]), ("b", 1, [1]), ("c", 0, [1])]
        assert [call for call in sink.calls if call[1] == 0] == [
            ("a", 0, [1, 2]),
            ("c", 0, [1]),
            ("a", 0, [3]),
        ]
        feed.wake_all()  # nothing new: nothing streamed twice
        await until(lambda: len(journal.reads) >= 4)
        await asyncio.sleep(0.01)
        assert feed.delivered == 5
    finally:
        await feed.close()


async def test_a_long_backlog_is_read_in_bounded_batches_taking_turns_with_other_shards() -> None:
    journal, sink = FakeJournal(), Sink()
    feed = JournalFeed(journal, 2, sink, batch_size=3)
    await feed.start()
    await feed.activate()  # a subscriber is here
    try:
        for revision in range(1, 8):
            journal.append(0, "busy", revision)
        journal.append(1, "quiet", 1)
        feed.wake_shards([0, 1])
        await until(lambda: feed.delivered == 8)
        assert all(limit == 3 for _, _, limit in journal.reads)
        assert [shard for shard, _, _ in journal.reads[:3]] == [0, 1, 0]  # the quiet shard is not held up
        busy = [revision for entity, _, revisions in sink.calls if entity == "busy" for revision in revisions]
        assert busy == list(range(1, 8))
    finally:
        await feed.close()


async def test_a_failed_read_is_retried_from_the_same_place() -> None:
    journal, sink = FakeJournal(), Sink()
    feed = JournalFeed(journal, 1, sink, retry_delay_s=0.01)
    await feed.start()
    await feed.activate()  # a subscriber is here
    try:
        journal.append(0, "a", 1)
        journal.failures = 2
        feed.wake_shards([0])
        await until(lambda: feed.delivered == 1)
        assert sink.calls == [("a", 0, [1])]
        assert [after for _, after, _ in journal.reads] == [0, 0, 0]
    finally:
        await feed.close()


async def test_without_subscribers_the_feed_reads_nothing_and_the_first_one_misses_nothing() -> None:
    journal, hub = FakeJournal(), SubscriptionHub(100, 10)
    feed = JournalFeed(journal, 2, hub)
    hub.source = feed
    await feed.start()
    try:
        for revision in (1, 2, 3):
            journal.append(0, "a", revision)
            feed.wake_all()  # every append's NOTIFY
        await asyncio.sleep(0.05)
        assert (journal.reads, feed.reads) == ([], 0)  # not one query while nobody listens

        subscription = hub.open("s-1", None)
        await hub.ready()  # what Subscribe waits for before answering
        journal.append(0, "a", 4)  # committed right after the subscriber was told it is subscribed
        journal.append(1, "b", 1)
        feed.wake_all()
        assert await subscription.take() != []
        await until(lambda: feed.delivered == 2)  # only what came after: 3 events before are not read
        assert feed.reads >= 2

        hub.unsubscribe("s-1")  # the last subscriber leaves: the feed pauses
        hub.release(subscription)
        reads = feed.reads
        journal.append(0, "a", 5)
        feed.wake_all()
        await asyncio.sleep(0.05)
        assert feed.reads == reads and not feed.active

        again = hub.open("s-2", "a")
        await hub.ready()  # starts again from the heads: revision 5 came before it
        journal.append(0, "a", 6)
        feed.wake_shards([0])
        await until(lambda: feed.delivered == 3)
        assert len(await again.take()) == 1
    finally:
        await feed.close()

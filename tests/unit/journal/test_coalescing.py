"""Coalesced reads (journal/coalescing.py): the key queue, batching, bounds, failures, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from chiefofstate.core.errors import StoreUnavailable
from chiefofstate.journal.coalescing import CoalescingReader, KeyQueue

# ------------------------------------------------------------------------------------------- KeyQueue


def test_take_returns_the_oldest_keys_with_their_waiters() -> None:
    queue: KeyQueue[str, int] = KeyQueue()
    for number, key in enumerate(["a", "b", "a", "c"]):
        queue.add(key, number)
    assert len(queue) == 3
    assert queue.take(2) == {"a": [0, 2], "b": [1]}
    assert len(queue) == 1
    assert queue.take(10) == {"c": [3]}
    assert len(queue) == 0
    assert queue.take(10) == {}


def test_take_stops_at_the_bound_and_keeps_the_rest_in_order() -> None:
    queue: KeyQueue[int, str] = KeyQueue()
    for key in range(300):
        queue.add(key, f"w{key}")
    first = queue.take(256)
    assert list(first) == list(range(256))
    assert list(queue.take(256)) == list(range(256, 300))


def test_a_key_added_again_after_take_goes_in_the_next_batch() -> None:
    queue: KeyQueue[str, int] = KeyQueue()
    queue.add("a", 1)
    assert queue.take(5) == {"a": [1]}
    queue.add("a", 2)
    assert queue.take(5) == {"a": [2]}


def test_remove_forgets_one_waiter_and_the_key_with_its_last() -> None:
    queue: KeyQueue[str, int] = KeyQueue()
    queue.add("a", 1)
    queue.add("a", 2)
    queue.add("b", 3)
    queue.remove("a", 1)
    assert len(queue) == 2
    queue.remove("b", 3)
    assert queue.take(5) == {"a": [2]}
    queue.remove("a", 2)  # already taken: nothing to do
    queue.remove("zzz", 9)
    assert len(queue) == 0


def test_take_all_empties_the_queue() -> None:
    queue: KeyQueue[str, int] = KeyQueue()
    queue.add("a", 1)
    queue.add("b", 2)
    assert queue.take_all() == {"a": [1], "b": [2]}
    assert len(queue) == 0


def test_take_needs_a_positive_bound() -> None:
    with pytest.raises(ValueError):
        KeyQueue[str, int]().take(0)


# ------------------------------------------------------------------------------------- CoalescingReader


class FakeStore:
    """Answers `len(key)`; each fetch waits until the test lets it finish when `gated` is set."""

    def __init__(self, *, gated: bool = False) -> None:
        self.fetches: list[list[str]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.failure: Exception | None = None
        self.failing_keys: set[str] = set()  # a batch holding one of these raises `failure`
        if not gated:
            self.release.set()

    async def fetch(self, keys: Sequence[str]) -> Mapping[str, int]:
        self.fetches.append(list(keys))
        self.started.set()
        await self.release.wait()
        if self.failure is not None and self.failing_keys & set(keys):
            raise self.failure
        return {key: len(key) for key in keys if key != "missing"}


def reader(store: FakeStore, max_batch: int = 256) -> CoalescingReader[str, int]:
    return CoalescingReader(store.fetch, stopped=lambda: StoreUnavailable("stopped"), max_batch=max_batch)


async def wait_until_queued(target: CoalescingReader[str, int], count: int) -> None:
    """Let the callers' tasks run until `count` keys are queued (a few turns of the loop)."""
    for _ in range(1000):
        if target.waiting >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{target.waiting} keys queued, expected {count}")


async def test_a_lone_caller_is_read_at_once() -> None:
    store = FakeStore()
    target = reader(store)
    assert await target.get("abc") == 3
    assert store.fetches == [["abc"]]


async def test_callers_arriving_together_share_one_fetch() -> None:
    store = FakeStore()
    target = reader(store)
    keys = [f"k{'x' * n}" for n in range(50)]
    assert await asyncio.gather(*(target.get(key) for key in keys)) == [len(key) for key in keys]
    assert store.fetches == [keys]


async def test_callers_arriving_during_a_fetch_go_together_in_the_next() -> None:
    store = FakeStore(gated=True)
    target = reader(store)
    first = asyncio.create_task(target.get("first"))
    await store.started.wait()
    later = [asyncio.create_task(target.get(key)) for key in ("b", "cc", "first", "b")]
    await wait_until_queued(target, 3)
    store.release.set()
    assert await first == 5
    assert [await task for task in later] == [1, 2, 5, 1]
    # the id already in flight is read again: the in-flight answer may predate the later caller's ask
    assert store.fetches == [["first"], ["b", "cc", "first"]]


async def test_no_fetch_takes_more_than_the_bound() -> None:
    store = FakeStore(gated=True)
    target = reader(store, max_batch=4)
    blocker = asyncio.create_task(target.get("blocker"))
    await store.started.wait()
    keys = [f"key-{n}" for n in range(10)]
    tasks = [asyncio.create_task(target.get(key)) for key in keys]
    await wait_until_queued(target, 10)
    store.release.set()
    assert await blocker == 7
    assert [await task for task in tasks] == [len(key) for key in keys]
    assert store.fetches == [["blocker"], keys[0:4], keys[4:8], keys[8:10]]


async def test_a_failed_fetch_fails_each_caller_of_its_batch_with_its_own_copy() -> None:
    store = FakeStore(gated=True)
    store.failure = StoreUnavailable("database away")
    store.failing_keys = {"x"}
    target = reader(store)
    first = asyncio.create_task(target.get("ok"))
    await store.started.wait()
    failing = [asyncio.create_task(target.get(key)) for key in ("x", "y", "y")]
    await wait_until_queued(target, 2)
    store.release.set()
    assert await first == 2
    errors = []
    for task in failing:
        with pytest.raises(StoreUnavailable, match="database away") as caught:
            await task
        errors.append(caught.value)
    assert len({id(error) for error in errors}) == 3
    assert store.fetches == [["ok"], ["x", "y"]]
    # the reader serves later callers
    assert await target.get("later") == 5


async def test_a_key_the_fetch_did_not_answer_fails_only_its_callers() -> None:
    target = reader(FakeStore())
    results = await asyncio.gather(target.get("missing"), target.get("abc"), return_exceptions=True)
    assert isinstance(results[0], LookupError)
    assert results[1] == 3


async def test_a_cancelled_caller_leaves_the_others_their_answers() -> None:
    store = FakeStore(gated=True)
    target = reader(store)
    first = asyncio.create_task(target.get("first"))
    await store.started.wait()
    shared_a = asyncio.create_task(target.get("shared"))
    shared_b = asyncio.create_task(target.get("shared"))
    alone = asyncio.create_task(target.get("alone"))
    other = asyncio.create_task(target.get("other"))
    await wait_until_queued(target, 3)
    shared_a.cancel()
    alone.cancel()
    await asyncio.wait([shared_a, alone])
    assert target.waiting == 2  # "shared" still wanted by shared_b; "alone" dropped
    first.cancel()  # cancelled while its fetch is in flight
    await asyncio.wait([first])
    store.release.set()
    assert await shared_b == 6
    assert await other == 5
    assert store.fetches == [["first"], ["shared", "other"]]
    assert shared_a.cancelled() and alone.cancelled() and first.cancelled()


async def test_close_fails_the_fetch_in_flight_and_the_queue_then_refuses() -> None:
    store = FakeStore(gated=True)
    target = reader(store)
    in_flight = asyncio.create_task(target.get("first"))
    await store.started.wait()
    queued = asyncio.create_task(target.get("second"))
    await wait_until_queued(target, 1)
    await target.close()
    for task in (in_flight, queued):
        with pytest.raises(StoreUnavailable, match="stopped"):
            await task
    with pytest.raises(StoreUnavailable, match="stopped"):
        await target.get("third")


async def test_close_of_an_idle_reader_is_immediate() -> None:
    target = reader(FakeStore())
    assert await target.get("a") == 1
    await target.close()


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        reader(FakeStore(), max_batch=0)


# ------------------------------------------------------------------------------- waiting for company


async def steady_arrivals(target: CoalescingReader[str, int], count: int, gap_s: float) -> list[int]:
    """`count` callers arriving one every `gap_s` seconds, as recoveries do under steady load."""
    calls = []
    for n in range(count):
        calls.append(asyncio.create_task(target.get(f"key-{n}")))
        await asyncio.sleep(gap_s)
    return list(await asyncio.gather(*calls))


async def test_keys_arriving_often_wait_to_share_a_fetch() -> None:
    store = FakeStore()
    target = reader(store)
    target.wait_for_company(lambda: 0.05)
    # Keys every millisecond: one is expected within the 50 ms wait (even where a busy machine stretches
    # the gaps tenfold), so reads share round trips.
    await steady_arrivals(target, 40, 0.001)
    assert len(store.fetches) <= 20
    assert max(len(batch) for batch in store.fetches) >= 4


async def test_keys_arriving_rarely_are_read_at_once() -> None:
    store = FakeStore()
    target = reader(store)
    target.wait_for_company(lambda: 0.02)
    # Keys every 50 ms: none is expected within the 20 ms wait, so each is read alone, without waiting.
    loop = asyncio.get_running_loop()
    await steady_arrivals(target, 10, 0.05)
    started = loop.time()
    assert await target.get("lone") == 4
    assert loop.time() - started < 0.02
    assert all(len(batch) == 1 for batch in store.fetches)


async def test_a_full_batch_ends_the_wait_and_close_ends_it_too() -> None:
    store = FakeStore()
    target = reader(store, max_batch=4)
    target.wait_for_company(lambda: 60.0)
    loop = asyncio.get_running_loop()
    # Teaches the reader that keys come often: the first is read alone, then two full batches.
    await asyncio.wait_for(steady_arrivals(target, 9, 0.0005), 5.0)
    store.fetches.clear()
    started = loop.time()
    four = asyncio.gather(*(target.get(f"k{n}") for n in range(4)))
    assert await asyncio.wait_for(four, 5.0) == [2, 2, 2, 2]
    assert loop.time() - started < 1.0 and store.fetches == [["k0", "k1", "k2", "k3"]]

    waiting = asyncio.create_task(target.get("left alone"))
    await asyncio.sleep(0.01)  # the reader is waiting for company that will not come
    await target.close()
    with pytest.raises(StoreUnavailable, match="stopped"):
        await waiting

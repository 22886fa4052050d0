"""The subscription hub: bounded buffers, per-entity order, both fall-behind bounds, unsubscribe, counts
and the messages it shares between subscribers (§7, D8)."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.any_pb2 import Any

from chiefofstate.core.errors import AlreadyExists, ResourceExhausted, Unavailable
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.subscription.hub import Subscription, SubscriptionHub


def wrapper(entity_id: str, revision: int) -> EventWrapper:
    return EventWrapper(meta=MetaData(entity_id=entity_id, revision_number=revision))


def revisions(bodies: list[bytes]) -> list[tuple[str, int]]:
    metas = [pb.SubscribeAllResponse.FromString(body).meta for body in bodies]
    return [(meta.entity_id, meta.revision_number) for meta in metas]


async def written(subscription: Subscription) -> list[bytes]:
    """What a stream writer does: take the buffered events and write each."""
    bodies = await subscription.take()
    for _ in bodies:
        subscription.wrote()
    return bodies


async def test_an_entity_subscription_gets_only_its_entity_in_commit_order() -> None:
    hub = SubscriptionHub(buffer_size=10, max_streams=10)
    mine = hub.open("s-1", "a")
    everything = hub.open("s-2", None)
    hub.on_committed("a", 0, [wrapper("a", 1), wrapper("a", 2)])
    hub.on_committed("b", 1, [wrapper("b", 1)])
    hub.on_committed("a", 0, [wrapper("a", 3)])
    assert revisions(await mine.take()) == [("a", 1), ("a", 2), ("a", 3)]
    assert revisions(await everything.take()) == [("a", 1), ("a", 2), ("b", 1), ("a", 3)]


async def test_every_subscriber_of_an_entity_and_of_all_entities_gets_every_event_in_order() -> None:
    hub = SubscriptionHub(buffer_size=100, max_streams=100)
    of_a = [hub.open(f"a-{number}", "a") for number in range(5)]
    of_b = [hub.open(f"b-{number}", "b") for number in range(2)]
    of_all = [hub.open(f"all-{number}", None) for number in range(5)]
    for revision in range(1, 4):
        hub.on_committed("a", 0, [wrapper("a", revision)])
        hub.on_committed("b", 1, [wrapper("b", revision)])
    hub.on_committed("c", 2, [wrapper("c", 1), wrapper("c", 2)])  # nobody watches c but the all-subscribers
    for subscription in of_a:
        assert revisions(await written(subscription)) == [("a", 1), ("a", 2), ("a", 3)]
    for subscription in of_b:
        assert revisions(await written(subscription)) == [("b", 1), ("b", 2), ("b", 3)]
    for subscription in of_all:
        assert revisions(await written(subscription)) == [
            ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3), ("c", 1), ("c", 2)
        ]  # fmt: skip


async def test_take_waits_for_the_next_commit() -> None:
    hub = SubscriptionHub(buffer_size=10, max_streams=10)
    subscription = hub.open("s", "a")
    waiting = asyncio.create_task(subscription.take())
    await asyncio.sleep(0)
    assert not waiting.done()
    hub.on_committed("a", 0, [wrapper("a", 1)])
    assert revisions(await asyncio.wait_for(waiting, 1)) == [("a", 1)]


async def test_a_subscriber_that_falls_behind_is_ended_and_never_slows_the_committer() -> None:
    hub = SubscriptionHub(buffer_size=3, max_streams=10)
    slow = hub.open("slow", None)
    fast = hub.open("fast", None)
    for revision in range(1, 4):
        hub.on_committed("a", 0, [wrapper("a", revision)])
        assert len(await written(fast)) == 1
    hub.on_committed("a", 0, [wrapper("a", 4)])  # the fourth event does not fit in slow's buffer
    assert hub.overflows == 1 and hub.live == 1 and hub.open_streams == 2
    with pytest.raises(ResourceExhausted, match="fell behind: more than 3 events"):
        await slow.take()
    assert revisions(await fast.take()) == [("a", 4)]
    hub.release(slow)
    assert hub.open_streams == 1


async def test_unsubscribe_completes_the_stream_and_frees_the_id_at_once() -> None:
    hub = SubscriptionHub(buffer_size=10, max_streams=10)
    first = hub.open("s", "a")
    hub.on_committed("a", 0, [wrapper("a", 1)])
    assert hub.unsubscribe("s") and not hub.unsubscribe("unknown")
    assert await first.take() == []  # undelivered events are dropped; [] means "completed"
    second = hub.open("s", "a")  # the id is free although the first stream has not released yet
    hub.release(first)
    hub.on_committed("a", 0, [wrapper("a", 2)])
    assert revisions(await second.take()) == [("a", 2)]
    assert hub.live == 1 and hub.open_streams == 1


async def test_reusing_an_active_id_is_refused() -> None:
    hub = SubscriptionHub(buffer_size=10, max_streams=10)
    hub.open("s", "a")
    with pytest.raises(AlreadyExists, match="subscription s is already active"):
        hub.open("s", None)


async def test_the_number_of_open_streams_is_bounded_including_ended_ones_not_yet_released() -> None:
    hub = SubscriptionHub(buffer_size=1, max_streams=2)
    first = hub.open("1", None)
    hub.open("2", "a")
    with pytest.raises(ResourceExhausted, match="limit 2, COS_SUBSCRIPTION_MAX"):
        hub.open("3", None)
    hub.unsubscribe("1")
    with pytest.raises(ResourceExhausted):
        hub.open("3", None)  # the first stream still holds its place until its handler finishes
    hub.release(first)
    hub.release(first)  # idempotent
    hub.open("3", None)
    assert hub.open_streams == 2


async def test_close_ends_every_stream_and_refuses_new_ones() -> None:
    hub = SubscriptionHub(buffer_size=10, max_streams=10)
    subscriptions = [hub.open(str(i), None if i % 2 else "a") for i in range(4)]
    hub.close()
    for subscription in subscriptions:
        with pytest.raises(Unavailable):
            await subscription.take()
        hub.release(subscription)
    assert hub.live == 0 and hub.open_streams == 0
    with pytest.raises(Unavailable):
        hub.open("late", None)


async def test_nothing_is_kept_for_entities_nobody_watches() -> None:
    hub = SubscriptionHub(buffer_size=10, max_streams=10)
    subscription = hub.open("s", "a")
    hub.unsubscribe("s")
    hub.release(subscription)
    hub.on_committed("a", 0, [wrapper("a", 1)])
    assert hub.live == 0 and hub._by_entity == {} and hub._all_entities == {}


async def test_each_event_is_serialized_once_and_each_subscriber_gets_its_own_id_in_front() -> None:
    hub = SubscriptionHub(buffer_size=10, max_streams=10)
    one, everything = hub.open("one", "a"), hub.open("everything", None)
    event = wrapper("a", 1)
    event.event.CopyFrom(Any(type_url="type.googleapis.com/bank.v1.MoneyDeposited", value=b"\x08\x05"))
    event.resulting_state.CopyFrom(Any(type_url="type.googleapis.com/bank.v1.Account", value=b"\x10\x05"))
    hub.on_committed("a", 0, [event])
    [mine], [theirs] = await one.take(), await everything.take()
    assert mine is theirs  # one body for every subscriber
    as_entity = pb.SubscribeResponse.FromString(one.prefix + mine)
    assert as_entity == pb.SubscribeResponse(
        subscription_id="one", event=event.event, resulting_state=event.resulting_state, meta=event.meta
    )
    assert pb.SubscribeAllResponse.FromString(everything.prefix + theirs).subscription_id == "everything"


async def test_events_taken_but_not_yet_written_still_count_toward_the_bound() -> None:
    hub = SubscriptionHub(buffer_size=2, max_streams=10)
    stuck = hub.open("stuck", None)
    hub.on_committed("a", 0, [wrapper("a", 1), wrapper("a", 2)])
    assert len(await stuck.take()) == 2  # taken by the writer, whose first write then blocks
    hub.on_committed("a", 0, [wrapper("a", 3)])
    assert hub.overflows == 1 and stuck.finished
    with pytest.raises(ResourceExhausted, match="more than 2 events"):
        await stuck.take()


async def test_a_write_that_does_not_complete_in_time_ends_the_subscriber_and_cancels_its_writer() -> None:
    hub = SubscriptionHub(buffer_size=100, max_streams=10, write_timeout_s=0.05)
    blocked, other = hub.open("blocked", None), hub.open("other", None)
    never = asyncio.Event()

    async def writer(subscription: Subscription, completes: bool) -> None:
        while True:
            for _ in await subscription.take():
                await hub.before_write(subscription)
                if not completes:
                    await never.wait()  # the client's window is full: the write never completes
                subscription.wrote()

    tasks = [asyncio.create_task(writer(blocked, False)), asyncio.create_task(writer(other, True))]
    blocked.writer, other.writer = tasks
    for revision in range(1, 30):
        hub.on_committed("a", 0, [wrapper("a", revision)])
        await asyncio.sleep(0.01)
    assert tasks[0].cancelled() and blocked.timed_out
    assert isinstance(blocked.failure, ResourceExhausted) and "COS_SUBSCRIPTION_WRITE_TIMEOUT" in str(
        blocked.failure
    )
    assert not tasks[1].done() and not other.finished and other.unwritten == 0 and hub.overflows == 1
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

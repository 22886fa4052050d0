"""The live tail over a real subscription hub: bounded, filtered, released when nobody watches."""

from __future__ import annotations

import asyncio

from google.protobuf.wrappers_pb2 import StringValue

from chiefofstate.api.console.decoding import Decoder, Shown
from chiefofstate.api.console.tail import LiveTail, TailEvent, select
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.inspect.descriptors import from_this_process
from chiefofstate.subscription.hub import SubscriptionHub
from tests.support.readside import eventually


def _event(entity_id: str, revision: int, text: str = "x") -> EventWrapper:
    wrapper = EventWrapper(meta=MetaData(entity_id=entity_id, revision_number=revision))
    wrapper.meta.revision_date.FromMilliseconds(1_000_000 + revision)
    wrapper.event.Pack(StringValue(value=text))
    return wrapper


async def test_the_tail_keeps_the_newest_events_up_to_its_capacity_decoded() -> None:
    hub = SubscriptionHub(buffer_size=1000, max_streams=10)
    decoder = Decoder(from_this_process())
    tail = LiveTail(hub, decoder, capacity=5, idle_s=60.0, clock=asyncio.get_running_loop().time)
    try:
        assert await tail.poll(0, "", "", 100) == []
        assert hub.live == 1
        hub.on_committed("a", 0, [_event("a", revision) for revision in range(1, 9)])
        await eventually(lambda: len(tail.buffered()) == 5, timeout_s=10, what="the buffer full")
        await eventually(lambda: tail.buffered()[-1].revision == 8, timeout_s=10, what="eight events")
        events = await tail.poll(0, "", "", 100)
        assert [event.revision for event in events] == [4, 5, 6, 7, 8]  # the oldest fell out
        assert events[0].event is not None and events[0].event.type_name == "google.protobuf.StringValue"
        assert events[0].event.json_text == '"x"'
        assert events[0].key == "a#4" and events[0].committed_ms == 1_000_004
        assert [event.revision for event in await tail.poll(1_000_007, "", "", 100)] == [7, 8]
    finally:
        await tail.close()
        decoder.close()
    assert hub.live == 0


async def test_a_tail_nobody_polls_releases_its_subscription() -> None:
    hub = SubscriptionHub(buffer_size=1000, max_streams=10)
    decoder = Decoder(from_this_process())
    tail = LiveTail(hub, decoder, idle_s=0.2, clock=asyncio.get_running_loop().time)
    try:
        await tail.poll(0, "", "", 10)
        await eventually(lambda: hub.live == 0, timeout_s=10, what="released")
        assert not tail.following
        await tail.poll(0, "", "", 10)  # a new page polls again: following again
        assert hub.live == 1
    finally:
        await tail.close()
        decoder.close()


async def test_a_tail_that_falls_behind_says_so_and_follows_again() -> None:
    hub = SubscriptionHub(buffer_size=3, max_streams=10)
    decoder = Decoder(from_this_process())
    tail = LiveTail(hub, decoder, clock=asyncio.get_running_loop().time)
    try:
        await tail.poll(0, "", "", 10)
        hub.on_committed("a", 0, [_event("a", revision) for revision in range(1, 6)])  # over the buffer
        await eventually(lambda: any(event.note for event in tail.buffered()), timeout_s=10, what="the note")
        await eventually(lambda: hub.live == 1, timeout_s=10, what="a new subscription")
        hub.on_committed("b", 0, [_event("b", 1)])
        await eventually(
            lambda: any(event.entity_id == "b" for event in tail.buffered()), timeout_s=10, what="b's event"
        )
        note = next(event for event in await tail.poll(0, "", "", 10) if event.event is None)
        assert "fell behind" in note.note
    finally:
        await tail.close()
        decoder.close()


def test_select_filters_by_entity_and_type_and_keeps_the_newest() -> None:
    def event(at_ms: int, entity_id: str, type_name: str) -> TailEvent:
        return TailEvent(f"{entity_id}#{at_ms}", at_ms, entity_id, at_ms, None, Shown(type_name, "{}"))

    events = [
        event(1, "a", "bank.v1.AccountOpened"),
        event(2, "b", "bank.v1.MoneyDeposited"),
        event(3, "a", "bank.v1.MoneyDeposited"),
        TailEvent("note-1", 4, "", 0, None, None, "note"),
    ]
    assert [e.committed_ms for e in select(events, 0, "a", "", 10)] == [1, 3, 4]
    assert [e.committed_ms for e in select(events, 0, "", "Deposited", 10)] == [2, 3]
    assert [e.committed_ms for e in select(events, 2, "", "", 2)] == [3, 4]

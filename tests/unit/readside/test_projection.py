"""Projections against in-memory ports: ordering, offsets, failure policies, breaker, operator actions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

import pytest

from chiefofstate.config.read_sides import DeliverySettings, ReadSideSettings
from chiefofstate.core.breaker import BreakerSettings, CircuitBreaker
from chiefofstate.core.readside_rules import Backoff, FailurePolicy, ProjectionState
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest
from chiefofstate.ports.journal import JournalRow, ShardProgress
from chiefofstate.ports.offsets import Halt, ShardRecord
from chiefofstate.ports.read_handler import DeliveryFailed
from chiefofstate.readside.delivery import REFUSED, GuardedReadHandler
from chiefofstate.readside.offset_committer import OffsetCommitter
from chiefofstate.readside.projection import Projection, ProjectionContext
from tests.support.readside import (
    FailingJournal,
    FailingOffsetStore,
    RecordingSleep,
    ScriptedHandler,
    append_events,
    eventually,
    eventually_equal,
    failing_for,
)

SHARD = 2
DELIVERY = DeliverySettings(
    replay_delay_s=5.0,
    batch_size=3,
    poll_interval_s=10.0,  # long: tests rely on wake-ups, never on the poll
    max_concurrency=8,
    commit_batch=1,
    commit_interval_s=0.01,
    restart_backoff=Backoff(3.0, 30.0),
)


@dataclass
class Rig:
    journal: FailingJournal = field(default_factory=FailingJournal)
    store: FailingOffsetStore = field(default_factory=FailingOffsetStore)
    handler: ScriptedHandler = field(default_factory=ScriptedHandler)
    sleep: RecordingSleep = field(default_factory=RecordingSleep)
    projections: list[Projection] = field(default_factory=list)
    committers: list[OffsetCommitter] = field(default_factory=list)

    def context(self, delivery: DeliverySettings = DELIVERY, slots: int = 8) -> ProjectionContext:
        committer = OffsetCommitter(self.store, delivery.commit_interval_s)
        committer.start()
        self.committers.append(committer)
        return ProjectionContext(
            journal=self.journal,
            store=self.store,
            committer=committer,
            delivery=delivery,
            slots=asyncio.Semaphore(slots),
            wall_clock=lambda: 1_700_000_000.0,
            sleep=self.sleep,
            random_unit=lambda: 0.0,
        )

    async def start(
        self,
        policy: FailurePolicy = FailurePolicy.STOP,
        record: ShardRecord | None = None,
        shard: int = SHARD,
        delivery: DeliverySettings = DELIVERY,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Projection:
        read_side = ReadSideSettings("accounts", "127.0.0.1", 1, failure_policy=policy)
        guarded = GuardedReadHandler(read_side, self.handler, breaker, **({"clock": clock} if clock else {}))
        projection = Projection(read_side, shard, guarded, self.context(delivery))
        self.projections.append(projection)
        await projection.start(record or ShardRecord())
        return projection

    def delivered(self) -> list[tuple[str, int]]:
        return [(entity, revision) for entity, revision, _ in self.handler.calls]

    async def append(self, entity_id: str, shard: int, count: int = 1) -> list[JournalRow]:
        return await append_events(self.journal.inner, entity_id, shard, count)

    async def record(self, shard: int = SHARD) -> ShardRecord:
        """What the offset store holds for the projection under test, read past the fault injection."""
        return (await self.store.inner.load("accounts")).get(shard, ShardRecord())

    async def offset(self) -> int | None:
        return (await self.record()).offset


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = Rig()
    yield rig
    for projection in rig.projections:
        await projection.close()
    for committer in rig.committers:
        await committer.close()


async def test_events_are_delivered_in_ordering_order_with_state_meta_and_read_side_id(rig: Rig) -> None:
    first_rows = await rig.append("a", SHARD, 2)
    await rig.append("other-shard", SHARD + 1, 1)
    await rig.append("b", SHARD, 1)
    await rig.append("a", SHARD, 2)
    projection = await rig.start()
    await eventually(lambda: len(rig.handler.calls) == 5)
    assert rig.delivered() == [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("a", 4)]
    first = rig.handler.requests[0]
    stored = EventWrapper.FromString(first_rows[0].payload)
    assert first.event == stored.event and first.state == stored.resulting_state and first.meta == stored.meta
    assert first.read_side_id == "accounts"
    assert {shard for _, _, shard in rig.handler.calls} == {SHARD}
    await eventually_equal(rig.offset, 6)
    assert projection.status().state is ProjectionState.RUNNING


async def test_a_projection_resumes_after_its_stored_offset(rig: Rig) -> None:
    rows = await rig.append("a", SHARD, 4)
    await rig.start(record=ShardRecord(offset=rows[1].ordering))
    await eventually(lambda: len(rig.handler.calls) == 2)
    assert rig.delivered() == [("a", 3), ("a", 4)]


async def test_a_wake_up_delivers_new_events_without_waiting_for_the_poll(rig: Rig) -> None:
    projection = await rig.start()
    await asyncio.sleep(0.01)
    await rig.append("a", SHARD, 1)
    projection.wake()
    await eventually(lambda: rig.delivered() == [("a", 1)], timeout_s=1.0)


async def test_offsets_are_stored_in_the_background_every_few_events_or_moments(rig: Rig) -> None:
    await rig.append("a", SHARD, 7)
    await rig.start(delivery=replace(DELIVERY, commit_batch=3, commit_interval_s=0.05, batch_size=100))
    await eventually_equal(rig.offset, 7)
    saved = [offset for _, _, offset in rig.store.saves]
    assert saved == sorted(saved) and len(saved) < 7  # several events per write, never backwards


async def test_close_stores_what_was_handled(rig: Rig) -> None:
    await rig.append("a", SHARD, 2)
    release = asyncio.Event()

    async def answer(request: object) -> bool:
        if len(rig.handler.calls) > 1:
            await release.wait()
        return True

    rig.handler.answer = answer
    projection = await rig.start(delivery=replace(DELIVERY, commit_batch=100, commit_interval_s=3600))
    await eventually(lambda: len(rig.handler.calls) == 2)
    assert rig.store.saves == []
    await projection.close()
    assert await rig.offset() == 1  # the event in flight is delivered again later


async def test_stop_halts_on_the_failing_event_and_persists_the_halt(rig: Rig) -> None:
    await rig.append("a", SHARD, 1)
    failing = (await rig.append("b", SHARD, 1))[0]
    await rig.append("a", SHARD, 1)
    rig.handler.answer = failing_for(("b", 1))
    projection = await rig.start(FailurePolicy.STOP)
    await eventually(lambda: projection.status().state is ProjectionState.HALTED)
    await eventually_equal(halt_stored(rig), True)  # stored after the state changes
    assert rig.delivered() == [("a", 1), ("b", 1)]  # one attempt, nothing after it
    assert await rig.offset() == 1  # the offset stays before the failing event
    halt = (await rig.record()).halt
    assert halt.event_offset == failing.ordering and halt.halted_at_ms == 1_700_000_000_000
    assert "INTERNAL: test failure" in halt.reason and "STOP" in halt.reason
    assert rig.sleep.delays == []


def halt_stored(rig: Rig) -> Callable[[], Awaitable[bool]]:
    async def read() -> bool:
        return (await rig.record()).halt is not None

    return read


# The committer's own interval far beyond any test: an offset stored now was flushed on purpose.
SLOW_COMMITS = replace(DELIVERY, commit_batch=1000, commit_interval_s=600.0)


async def test_a_halt_stores_the_offset_right_before_the_failing_event_at_once(rig: Rig) -> None:
    await rig.append("a", SHARD, 2)
    await rig.append("b", SHARD, 1)
    rig.handler.answer = failing_for(("b", 1))
    projection = await rig.start(FailurePolicy.STOP, delivery=SLOW_COMMITS)
    await eventually(lambda: projection.status().state is ProjectionState.HALTED)
    await eventually_equal(halt_stored(rig), True)  # the halt is stored after the offset's flush
    assert await rig.offset() == 2  # flushed by the halt, not left for the next interval


async def test_commit_batch_events_unstored_hurry_the_committer(rig: Rig) -> None:
    hurried = replace(SLOW_COMMITS, commit_batch=2)
    rows = await rig.append("a", SHARD, 2)
    await rig.start(delivery=hurried)
    await eventually_equal(rig.offset, rows[1].ordering)


async def test_a_halted_projection_stays_halted_when_started_again(rig: Rig) -> None:
    await rig.append("a", SHARD, 2)
    projection = await rig.start(record=ShardRecord(offset=None, halt=Halt(1, "failed", 5)))
    await asyncio.sleep(0.02)
    assert rig.handler.calls == []
    assert projection.status().state is ProjectionState.HALTED
    assert projection.status().detail == "failed"


async def test_skip_skips_the_failing_event_at_once_and_goes_on(rig: Rig) -> None:
    await rig.append("a", SHARD, 3)
    rig.handler.answer = failing_for(("a", 2))
    projection = await rig.start(FailurePolicy.SKIP)
    await eventually_equal(rig.offset, 3)
    assert rig.delivered() == [("a", 1), ("a", 2), ("a", 3)]
    assert projection.skipped == 1 and projection.delivered == 2
    assert rig.sleep.delays == []


@pytest.mark.parametrize(
    ("policy", "final_state"),
    [
        (FailurePolicy.REPLAY_SKIP, ProjectionState.RUNNING),
        (FailurePolicy.REPLAY_STOP, ProjectionState.HALTED),
    ],
)
async def test_replay_policies_make_six_attempts_five_seconds_apart(
    rig: Rig, policy: FailurePolicy, final_state: ProjectionState
) -> None:
    await rig.append("a", SHARD, 3)
    rig.handler.answer = failing_for(("a", 2))
    projection = await rig.start(policy)
    if policy is FailurePolicy.REPLAY_SKIP:
        await eventually_equal(rig.offset, 3)
        assert rig.delivered() == [("a", 1), *[("a", 2)] * 6, ("a", 3)]
    else:
        await eventually(lambda: projection.status().state is ProjectionState.HALTED)
        assert rig.delivered() == [("a", 1), *[("a", 2)] * 6]
        assert await rig.offset() == 1
    assert rig.sleep.delays == [5.0] * 5
    assert projection.status().state is final_state


async def test_a_replayed_event_that_succeeds_is_delivered_not_skipped(rig: Rig) -> None:
    await rig.append("a", SHARD, 1)
    attempts = 0

    async def answer(request: object) -> bool:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise DeliveryFailed("DEADLINE_EXCEEDED: Deadline Exceeded")
        return True

    rig.handler.answer = answer
    projection = await rig.start(FailurePolicy.REPLAY_STOP)
    await eventually_equal(rig.offset, 1)
    assert projection.delivered == 1 and projection.skipped == 0
    assert rig.sleep.delays == [5.0, 5.0]


async def test_successful_false_is_a_failure_for_the_policy(rig: Rig) -> None:
    await rig.append("a", SHARD, 2)
    rig.handler.answer = failing_for(("a", 1), refuse=True)
    projection = await rig.start(FailurePolicy.STOP)
    await eventually(lambda: projection.status().state is ProjectionState.HALTED)
    assert REFUSED in projection.status().detail


async def test_the_breaker_opens_on_call_failures_and_then_fails_fast(rig: Rig) -> None:
    await rig.append("a", SHARD, 5)

    async def down(request: object) -> bool:
        raise DeliveryFailed("UNAVAILABLE: connection refused")

    rig.handler.answer = down
    breaker = CircuitBreaker(BreakerSettings(max_failures=2, call_timeout_s=10, reset_timeout_s=60))
    projection = await rig.start(FailurePolicy.SKIP, breaker=breaker, clock=lambda: 0.0)
    await eventually_equal(rig.offset, 5)
    assert len(rig.handler.calls) == 2  # the other three were skipped without calling the handler
    assert projection.skipped == 5


async def test_successful_false_keeps_the_breaker_closed(rig: Rig) -> None:
    await rig.append("a", SHARD, 5)

    async def refuse(request: object) -> bool:
        return False

    rig.handler.answer = refuse
    breaker = CircuitBreaker(BreakerSettings(max_failures=2, call_timeout_s=10, reset_timeout_s=60))
    await rig.start(FailurePolicy.SKIP, breaker=breaker, clock=lambda: 0.0)
    await eventually_equal(rig.offset, 5)
    assert len(rig.handler.calls) == 5


async def test_store_errors_restart_the_stream_with_exponential_backoff_under_skip(rig: Rig) -> None:
    await rig.append("a", SHARD, 2)
    rig.journal.failures_left = 3
    await rig.start(FailurePolicy.SKIP)
    await eventually_equal(rig.offset, 2)
    assert rig.sleep.delays == [3.0, 6.0, 12.0]
    assert rig.delivered() == [("a", 1), ("a", 2)]


async def test_store_errors_stop_the_projection_under_stop(rig: Rig) -> None:
    await rig.append("a", SHARD, 2)
    rig.journal.failures_left = 1
    projection = await rig.start(FailurePolicy.STOP)
    await eventually(lambda: projection.status().state is ProjectionState.STOPPED)
    assert "the database went away" in projection.status().detail
    assert rig.handler.calls == [] and rig.sleep.delays == []
    assert (await rig.record()).halt is None  # not persisted: the next boot starts it again
    await projection.resume()
    await eventually(lambda: len(rig.handler.calls) == 2)


async def test_pause_stops_delivery_and_resume_continues_from_the_offset(rig: Rig) -> None:
    await rig.append("a", SHARD, 1)
    projection = await rig.start()
    await eventually(lambda: len(rig.handler.calls) == 1)
    await projection.pause()
    assert (await rig.record()).paused is True
    assert projection.status().state is ProjectionState.PAUSED
    await rig.append("a", SHARD, 2)
    projection.wake()
    await asyncio.sleep(0.02)
    assert len(rig.handler.calls) == 1
    await projection.resume()
    assert (await rig.record()).paused is False
    await eventually(lambda: rig.delivered() == [("a", 1), ("a", 2), ("a", 3)])


async def test_resume_retries_the_event_a_halted_projection_stopped_on(rig: Rig) -> None:
    await rig.append("a", SHARD, 2)
    rig.handler.answer = failing_for(("a", 1))
    projection = await rig.start(FailurePolicy.STOP)
    await eventually(lambda: projection.status().state is ProjectionState.HALTED)
    rig.handler.answer = None  # the read handler was fixed
    await projection.resume()
    assert (await rig.record()).halt is None
    await eventually(lambda: rig.delivered() == [("a", 1), ("a", 1), ("a", 2)])


async def test_restart_forgets_the_offset_and_replays_the_shard(rig: Rig) -> None:
    await rig.append("a", SHARD, 2)
    projection = await rig.start()
    await eventually_equal(rig.offset, 2)
    await projection.restart()
    await eventually(lambda: rig.delivered() == [("a", 1), ("a", 2), ("a", 1), ("a", 2)])


async def test_restart_keeps_a_paused_projection_paused(rig: Rig) -> None:
    await rig.append("a", SHARD, 1)
    projection = await rig.start(record=ShardRecord(offset=1, paused=True))
    await projection.restart()
    assert await rig.offset() is None
    await asyncio.sleep(0.02)
    assert rig.handler.calls == [] and projection.status().state is ProjectionState.PAUSED


async def test_skip_moves_past_exactly_the_stuck_event_and_answers_once_it_is_stored(rig: Rig) -> None:
    await rig.append("a", SHARD, 1)
    await rig.append("x", SHARD + 1, 3)  # orderings of other shards sit in between (docs/contract.md §14 #3)
    stuck = (await rig.append("b", SHARD, 1))[0]
    await rig.append("b", SHARD, 1)
    rig.handler.answer = failing_for(("b", 1))
    projection = await rig.start(FailurePolicy.STOP)
    await eventually(lambda: projection.status().state is ProjectionState.HALTED)
    assert await projection.skip() == stuck.ordering
    assert await rig.offset() == stuck.ordering
    assert (await rig.record()).halt is None
    await eventually(lambda: rig.delivered() == [("a", 1), ("b", 1), ("b", 2)])


async def test_skip_with_nothing_to_skip_changes_nothing(rig: Rig) -> None:
    await rig.append("a", SHARD, 1)
    projection = await rig.start()
    await eventually_equal(rig.offset, 1)
    assert await projection.skip() is None
    assert await rig.offset() == 1


async def test_a_failed_operator_action_leaves_the_projection_running(rig: Rig) -> None:
    projection = await rig.start()
    rig.store.failures_left = 1
    with pytest.raises(Exception, match="went away"):
        await projection.pause()
    await rig.append("a", SHARD, 1)
    projection.wake()
    await eventually(lambda: rig.delivered() == [("a", 1)])


async def test_handler_calls_in_flight_are_bounded_across_projections(rig: Rig) -> None:
    for shard in range(4):
        await rig.append(f"e{shard}", shard, 3)

    async def slow(request: object) -> bool:
        await asyncio.sleep(0.005)
        return True

    rig.handler.answer = slow
    slots = asyncio.Semaphore(2)
    read_side = ReadSideSettings("accounts", "127.0.0.1", 1)
    guarded = GuardedReadHandler(read_side, rig.handler, None)
    context = replace(rig.context(), slots=slots)
    for shard in range(4):
        projection = Projection(read_side, shard, guarded, context)
        rig.projections.append(projection)
        await projection.start(ShardRecord())
    await eventually(lambda: len(rig.handler.calls) == 12)
    assert rig.handler.most_in_flight == 2


async def test_each_call_is_a_client_span_named_as_upstreams(rig: Rig) -> None:
    import contextlib
    from collections.abc import Iterator
    from typing import Any

    class RecordingTracing:
        enabled = True

        def __init__(self) -> None:
            self.spans: list[tuple[str, dict[str, Any]]] = []

        @contextlib.contextmanager
        def span(self, name: str, **options: Any) -> Iterator[None]:
            self.spans.append((name, {"kind": options["kind"].name, **options["attributes"]}))
            yield None

        def inject(self) -> list[tuple[str, str]]:
            return [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]

    tracing = RecordingTracing()
    read_side = ReadSideSettings("accounts", "127.0.0.1", 1, protocol="http")
    guarded = GuardedReadHandler(read_side, rig.handler, None, tracing=tracing)  # type: ignore[arg-type]
    await rig.append("a", SHARD, 1)
    projection = Projection(read_side, SHARD, guarded, rig.context())
    rig.projections.append(projection)
    await projection.start(ShardRecord())
    await eventually(lambda: len(tracing.spans) == 2)
    (name, attributes), (client_name, client_attributes) = tracing.spans
    assert name == "HttpReadSideHandler.HandleEvent"
    assert attributes == {
        "kind": "INTERNAL",
        "cos.read_side_id": "accounts",
        "cos.entity_id": "a",
        "cos.revision": 1,
        "cos.event_tag": str(SHARD),
    }
    # inside it, the standard client span of the HTTP call itself
    assert (client_name, client_attributes) == (
        "POST",
        {"kind": "CLIENT", "http.request.method": "POST", "server.address": "127.0.0.1", "server.port": 1},
    )


class PageCountingJournal:
    """The rig's journal, counting the pages read (the positions they were read after)."""

    def __init__(self, inner: FailingJournal) -> None:
        self.inner = inner
        self.reads_after: list[int] = []

    async def read_shard(self, shard: int, after_ordering: int, limit: int) -> list[JournalRow]:
        self.reads_after.append(after_ordering)
        return await self.inner.read_shard(shard, after_ordering, limit)

    async def shard_progress(self, shard: int, after_ordering: int, count_limit: int) -> ShardProgress:
        return await self.inner.shard_progress(shard, after_ordering, count_limit)


async def start_counting(rig: Rig) -> tuple[PageCountingJournal, Projection]:
    counting = PageCountingJournal(rig.journal)
    read_side = ReadSideSettings("accounts", "127.0.0.1", 1, failure_policy=FailurePolicy.STOP)
    context = replace(rig.context(), journal=counting)
    projection = Projection(read_side, SHARD, GuardedReadHandler(read_side, rig.handler, None), context)
    rig.projections.append(projection)
    await projection.start(ShardRecord())
    return counting, projection


async def test_the_next_page_is_read_while_a_full_page_is_delivered_and_no_further(rig: Rig) -> None:
    rows = await rig.append("a", SHARD, 3 * DELIVERY.batch_size)  # three full pages
    released = asyncio.Event()

    async def held_first(request: HandleReadSideRequest) -> bool:
        if request.meta.revision_number == 1:
            await released.wait()
        return True

    rig.handler.answer = held_first
    counting, _ = await start_counting(rig)
    await eventually(lambda: len(counting.reads_after) == 2)
    await asyncio.sleep(0.05)  # the first event is still held: nothing reads a third page meanwhile
    assert counting.reads_after == [0, rows[DELIVERY.batch_size - 1].ordering]
    assert rig.delivered() == [("a", 1)]
    released.set()
    await eventually(lambda: len(rig.handler.calls) == len(rows))
    assert rig.delivered() == [("a", revision) for revision in range(1, len(rows) + 1)]
    await eventually_equal(rig.offset, rows[-1].ordering)


async def test_a_halt_drops_the_page_read_ahead_and_keeps_the_offset_before_the_failure(rig: Rig) -> None:
    rows = await rig.append("a", SHARD, 2 * DELIVERY.batch_size)
    rig.handler.answer = failing_for(("a", 2))
    counting, projection = await start_counting(rig)
    await eventually(lambda: projection.status().state is ProjectionState.HALTED)
    assert rig.delivered() == [("a", 1), ("a", 2)]  # nothing of the page read ahead went out
    await eventually_equal(rig.offset, rows[0].ordering)
    assert projection.status().position == rows[0].ordering
    assert len(counting.reads_after) == 2

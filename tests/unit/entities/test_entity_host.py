"""The entity host on the in-memory journal, with an in-process write handler that counts its calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.wrappers_pb2 import Int64Value

from chiefofstate.core.batching import APPEND_SHARE, MAX_WAIT_S
from chiefofstate.core.command_rules import ProtoValidation
from chiefofstate.core.errors import DeadlineExceeded, Internal, NotFound, ResourceExhausted
from chiefofstate.core.headers import HeaderValue
from chiefofstate.core.snapshots import SnapshotPolicy
from chiefofstate.entities.command_processor import CommandProcessor, CommandSettings
from chiefofstate.entities.deadline import Deadline
from chiefofstate.entities.gate import OPEN_GATE, ShardGate
from chiefofstate.entities.host import SWEEP_CHUNK, EntityHost, HostSettings
from chiefofstate.entities.snapshotter import Snapshotter
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.journal.group_commit import GroupCommitWriter
from chiefofstate.ports.journal import AppendRequest
from chiefofstate.stores.memory.journal import MemoryJournal


def packed_int(value: int) -> AnyProto:
    packed = AnyProto()
    packed.Pack(Int64Value(value=value))
    return packed


def unpacked_int(value: AnyProto) -> int:
    number = Int64Value()
    value.Unpack(number)
    return number.value


@dataclass
class CounterHandler:
    """A counter domain: the command is an Int64Value n, yielding n events of +1 (0 is a no-op)."""

    command_calls: int = 0
    event_calls: int = 0
    command_delay_s: float = 0.0
    gate: asyncio.Event | None = None
    seen_revisions: list[int] = field(default_factory=list)

    async def handle_command(
        self, request: HandleCommandRequest, headers: Sequence[tuple[str, HeaderValue]], timeout_s: float
    ) -> HandleCommandResponse:
        self.command_calls += 1
        if self.gate is not None and request.prior_event_meta.entity_id == "busy":
            await self.gate.wait()
        await asyncio.sleep(self.command_delay_s)
        count = unpacked_int(request.command)
        if count < 0:  # a handler bug: an empty Any among real events
            return HandleCommandResponse(events=[packed_int(1), AnyProto()])
        return HandleCommandResponse(events=[packed_int(1) for _ in range(count)])

    async def handle_event(self, request: HandleEventRequest, timeout_s: float) -> HandleEventResponse:
        self.event_calls += 1
        self.seen_revisions.append(request.event_meta.revision_number)
        prior = 0 if request.prior_state.type_url.endswith("Empty") else unpacked_int(request.prior_state)
        return HandleEventResponse(resulting_state=packed_int(prior + unpacked_int(request.event)))

    async def close(self) -> None:
        return None


@dataclass
class Rig:
    host: EntityHost
    processor: CommandProcessor
    handler: CounterHandler
    journal: MemoryJournal
    snapshotter: Snapshotter
    clock: list[float]

    def deadline(self, seconds: float = 10.0) -> Deadline:
        return Deadline(self.clock[0] + seconds, lambda: self.clock[0])

    async def command(self, entity: str, count: int) -> int:
        state = await self.host.process_command(entity, packed_int(count), [], self.deadline())
        return state.revision


async def build_rig(
    *,
    capacity: int = 100,
    idle_s: float = 0.0,
    mailbox: int = 100,
    policy: SnapshotPolicy | None = None,
    gate: ShardGate = OPEN_GATE,
) -> AsyncIterator[Rig]:
    journal = MemoryJournal()
    writer = GroupCommitWriter(journal)
    writer.start()
    snapshotter = Snapshotter(journal, policy or SnapshotPolicy(enabled=False, frequency=0, retain=0))
    snapshotter.start()
    handler = CounterHandler()
    processor = CommandProcessor(
        handler, journal, writer, snapshotter, CommandSettings((), (), ProtoValidation(), 5.0)
    )
    clock = [1000.0]
    host = EntityHost(
        processor, HostSettings(16, capacity, idle_s, mailbox), clock=lambda: clock[0], gate=gate
    )
    try:
        yield Rig(host, processor, handler, journal, snapshotter, clock)
    finally:
        await host.close()
        await snapshotter.close()
        await writer.close()
        await journal.close()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async for built in build_rig():
        yield built


async def test_several_events_get_consecutive_revisions_and_fold_in_order(rig: Rig) -> None:
    assert await rig.command("e", 3) == 3
    assert rig.handler.seen_revisions == [1, 2, 3]
    state = await rig.host.get_state("e", rig.deadline())
    assert unpacked_int(state.decode().state) == 3


async def test_an_empty_any_among_the_handlers_events_fails_the_command_and_writes_nothing(rig: Rig) -> None:
    await rig.command("e", 1)
    with pytest.raises(Internal, match="empty Any as event 2 of 2"):
        await rig.command("e", -1)
    assert len(await rig.journal.read_events("e")) == 1
    assert rig.handler.event_calls == 1
    assert await rig.command("e", 1) == 2


async def test_no_op_commands_keep_the_entity_not_found(rig: Rig) -> None:
    assert await rig.command("quiet", 0) == 0
    with pytest.raises(NotFound):
        await rig.host.get_state("quiet", rig.deadline())


async def test_the_cache_is_bounded_and_evicted_entities_recover_without_handler_calls() -> None:
    async for rig in build_rig(capacity=3):
        for index in range(10):
            await rig.command(f"e-{index}", 2)
        assert len(rig.host) == 3
        assert rig.host.passivations == 7
        calls_before = (rig.handler.command_calls, rig.handler.event_calls)
        state = await rig.host.get_state("e-0", rig.deadline())  # evicted long ago
        assert state.revision == 2 and unpacked_int(state.decode().state) == 2
        assert (rig.handler.command_calls, rig.handler.event_calls) == calls_before
        assert await rig.command("e-0", 1) == 3


async def test_idle_entities_are_passivated_after_the_timeout() -> None:
    async for rig in build_rig(idle_s=60):
        await rig.command("a", 1)
        rig.clock[0] += 30
        await rig.command("b", 1)
        rig.clock[0] += 31
        assert rig.host.passivate_idle() == 1  # only "a" was idle for over a minute
        assert len(rig.host) == 1
        assert await rig.command("a", 1) == 2


async def test_the_idle_sweep_follows_the_order_of_last_use() -> None:
    async for rig in build_rig(idle_s=60, capacity=10_000):
        for index in range(1_000):
            await rig.command(f"e-{index}", 1)
        rig.clock[0] += 30
        # Used again after the others: "e-0" and "e-1" are now among the most recently used.
        await rig.command("e-1", 1)
        await rig.command("e-0", 1)
        rig.clock[0] += 31  # the other 998 have been idle for 61 s, "e-0" and "e-1" for 31 s
        assert rig.host.passivate_idle(limit=100) == 100  # a chunk stops at its limit
        assert rig.host.passivate_idle() == 898
        assert len(rig.host) == 2 and "e-0" in rig.host and "e-1" in rig.host
        assert rig.host.passivate_idle() == 0


async def test_the_sweeper_passivates_a_burst_larger_than_its_chunk() -> None:
    async for rig in build_rig(idle_s=0.1, capacity=10_000):
        rig.host.start()
        count = SWEEP_CHUNK * 2 + 10
        for first in range(0, count, 500):  # 500 at a time share the journal's commits
            await asyncio.gather(*(rig.command(f"e-{n}", 1) for n in range(first, min(first + 500, count))))
        rig.clock[0] += 1  # the fake clock: every entity has now been idle for ten timeouts
        for _ in range(100):
            if len(rig.host) == 0:
                break
            await asyncio.sleep(0.02)
        assert len(rig.host) == 0
        assert rig.host.passivations == count


async def test_commands_for_one_entity_are_serial_and_a_full_mailbox_is_refused() -> None:
    async for rig in build_rig(mailbox=5):
        rig.handler.gate = asyncio.Event()
        waiting = [asyncio.ensure_future(rig.command("busy", 1)) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert rig.handler.command_calls == 1  # the other four wait for the first
        with pytest.raises(ResourceExhausted, match="limit 5"):
            await rig.command("busy", 1)
        assert await rig.command("other", 1) == 1  # other entities are not affected
        rig.handler.gate.set()
        assert sorted(await asyncio.gather(*waiting)) == [1, 2, 3, 4, 5]


async def test_a_deadline_that_passes_before_the_append_writes_nothing(rig: Rig) -> None:
    rig.handler.command_delay_s = 0.05
    expired_soon = Deadline(asyncio.get_running_loop().time() + 0.01, asyncio.get_running_loop().time)
    with pytest.raises(DeadlineExceeded, match="nothing was written"):
        await rig.host.process_command("late", packed_int(1), [], expired_soon)
    assert await rig.journal.latest_state("late") is None
    assert await rig.command("late", 1) == 1


async def test_snapshots_follow_the_frequency_and_retention() -> None:
    policy = SnapshotPolicy(enabled=True, frequency=2, retain=1, delete_events=True)
    async for rig in build_rig(policy=policy):
        for _ in range(7):
            await rig.command("snap", 1)
        await rig.snapshotter.drain()
        assert [row.sequence_number for row in await rig.journal.list_snapshots("snap")] == [4, 6]
        await rig.command("snap", 3)  # revisions 8, 9, 10 cross two multiples: the highest (10) is saved
        await rig.snapshotter.drain()
        snapshots = [row.sequence_number for row in await rig.journal.list_snapshots("snap")]
        assert snapshots == [10]  # snapshots below 10 - 1*2 are deleted
        events = await rig.journal.read_events("snap")
        # events up to 8 are gone except the highest of them, kept as a deleted marker
        assert [(row.sequence_number, row.deleted) for row in events] == [(8, True), (9, False), (10, False)]
        state = await rig.host.get_state("snap", rig.deadline())
        assert unpacked_int(state.decode().state) == 10


async def test_a_full_cache_evicts_the_least_recently_used_entity() -> None:
    async for rig in build_rig(capacity=1_000):
        for index in range(1_000):
            await rig.command(f"old-{index}", 1)
        await rig.host.get_state("old-0", rig.deadline())  # a read is a use: "old-1" is now the oldest
        await rig.command("newcomer", 1)
        assert len(rig.host) == 1_000
        assert "old-1" not in rig.host and "old-0" in rig.host and "newcomer" in rig.host
        assert rig.host.passivations == 1


async def test_entities_with_callers_are_never_evicted_and_the_cache_shrinks_back_after_them() -> None:
    async for rig in build_rig(capacity=2):
        await rig.command("a", 1)
        await rig.command("b", 1)
        rig.handler.gate = asyncio.Event()
        busy = asyncio.ensure_future(rig.command("busy", 1))
        await asyncio.sleep(0.01)
        try:
            # Over capacity by the one entity with a caller; room is made when callers leave.
            assert rig.host.is_busy("busy") and len(rig.host) == 3
            await rig.command("c", 1)
            assert "busy" in rig.host and "c" in rig.host and len(rig.host) == 2  # "a" and "b" made room
        finally:
            rig.handler.gate.set()
        assert await busy == 1
        assert not rig.host.is_busy("busy") and len(rig.host) == 2
        assert "c" in rig.host and "busy" in rig.host


async def test_lookups_of_entities_without_events_do_not_fill_the_cache(rig: Rig) -> None:
    await rig.command("real", 1)
    for index in range(50):
        with pytest.raises(NotFound):
            await rig.host.get_state(f"unknown-{index}", rig.deadline())
    assert await rig.command("quiet", 0) == 0  # a no-op on a new entity
    assert len(rig.host) == 1  # only the entity with events stays cached


async def test_a_caller_cancelled_during_its_append_waits_for_it_and_the_commit_is_kept(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await rig.command("c", 1) == 1
    gate, entered = asyncio.Event(), asyncio.Event()
    append_batch = rig.journal.append_batch

    async def held_append(requests: Sequence[AppendRequest]) -> list[Exception | None]:
        entered.set()
        await gate.wait()
        return await append_batch(requests)

    monkeypatch.setattr(rig.journal, "append_batch", held_append)
    caller = asyncio.ensure_future(rig.command("c", 1))
    await entered.wait()
    caller.cancel()
    await asyncio.sleep(0.01)
    assert not caller.done()  # decision D4: the entity stays busy until the append's outcome is known
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    recoveries = rig.host._processor.recoveries
    assert await rig.command("c", 1) == 3  # the cancelled caller's event was committed and is cached
    assert rig.host._processor.recoveries == recoveries
    assert "c" in rig.host and not rig.host.is_busy("c")  # cached, with no lock held or waited for


async def test_get_state_of_an_idle_cached_entity_answers_at_once_and_a_busy_one_after_its_commands(
    rig: Rig,
) -> None:
    await rig.command("g", 2)
    recoveries = rig.host._processor.recoveries
    state = await rig.host.get_state("g", rig.deadline())
    assert state.revision == 2 and rig.host._processor.recoveries == recoveries
    assert "g" in rig.host and not rig.host.is_busy("g")  # answered from the cache, not recovered

    assert await rig.command("busy", 1) == 1  # cached at revision 1
    rig.handler.gate = asyncio.Event()
    busy = asyncio.ensure_future(rig.command("busy", 1))
    await asyncio.sleep(0.01)  # the command holds the entity, waiting for its handler
    read = asyncio.ensure_future(rig.host.get_state("busy", rig.deadline()))
    await asyncio.sleep(0.01)
    assert not read.done()  # queued behind the command (§3.2), not answered from the cache
    rig.handler.gate.set()
    assert await busy == 2
    assert (await read).revision == 2


async def test_resting_state_answers_only_entities_at_rest_and_counts_as_a_use() -> None:
    async for rig in build_rig(capacity=2):
        assert rig.host.resting_state("a") is None  # never seen
        await rig.command("a", 1)
        await rig.command("b", 1)
        state = rig.host.resting_state("a")
        assert state is not None and state.revision == 1 and not rig.host.is_busy("a")
        await rig.command("c", 1)  # over capacity: "b" is now the least recently used, not "a"
        assert "a" in rig.host and "b" not in rig.host


async def test_the_group_commit_budget_follows_how_long_commands_take_to_decide(rig: Rig) -> None:
    assert (
        rig.processor.deciding.decide_time.append_wait_s() == 0.0
    )  # no command decided yet: a flush never waits
    await rig.command("quick", 1)
    quick = rig.processor.deciding.decide_time.seconds
    rig.handler.command_delay_s = 0.02
    longest = 0.0  # the slowest whole command, which bounds each decision it contains
    for _ in range(20):
        started = time.perf_counter()
        await rig.command("slow", 1)
        longest = max(longest, time.perf_counter() - started)
    slow = rig.processor.deciding.decide_time.seconds
    # A moving average: it moves toward the 20 ms handler within a few commands, not at once (it stays
    # below the slowest decision it has seen). Bounds relative to this run: a busy machine stretches
    # every sleep.
    assert quick < 0.0025 < slow < longest
    assert rig.processor.deciding.decide_time.append_wait_s() == pytest.approx(
        min(slow * APPEND_SHARE, MAX_WAIT_S)
    )
    assert rig.processor.deciding.count == 0


async def test_revisions_go_up_to_the_highest_uint32_and_no_further(rig: Rig) -> None:
    from chiefofstate.core.command_rules import initial_state
    from chiefofstate.core.errors import SequenceConflict
    from chiefofstate.entities.command_processor import MAX_REVISION
    from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import StateWrapper
    from chiefofstate.ports.journal import SnapshotRow

    # An entity recovered from a snapshot two revisions below the limit. (The journal holds no events
    # below it, so an append that the limit lets through meets a sequence conflict instead.)
    meta = initial_state("old").meta
    meta.revision_number = MAX_REVISION - 2
    wrapper = StateWrapper(state=packed_int(7), meta=meta)
    await rig.journal.save_snapshot(SnapshotRow("old", MAX_REVISION - 2, 0, wrapper.SerializeToString()))
    with pytest.raises(Internal, match="would exceed the highest revision number"):
        await rig.command("old", 3)
    with pytest.raises(SequenceConflict):  # exactly up to the highest revision: past the limit's check
        await rig.command("old", 2)


async def test_an_entity_whose_newest_row_is_a_snapshot_recovers_its_state_from_it(rig: Rig) -> None:
    from chiefofstate.core.command_rules import initial_state
    from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import StateWrapper
    from chiefofstate.ports.journal import SnapshotRow

    meta = initial_state("snapped").meta
    meta.revision_number = 5
    wrapper = StateWrapper(state=packed_int(7), meta=meta)
    await rig.journal.save_snapshot(SnapshotRow("snapped", 5, 0, wrapper.SerializeToString()))
    state = await rig.host.get_state("snapped", rig.deadline())
    assert state.revision == 5 and unpacked_int(state.decode().state) == 7
    assert rig.handler.command_calls == 0  # recovered without the handler

"""The node's projections as a whole: autoStart, enabled, wake-ups, manager checks (D6) and status."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest

from chiefofstate.config.read_sides import DeliverySettings, ReadSideSettings, ReadSidesSettings
from chiefofstate.core.errors import Code, CosError, InvalidArgument, NotFound
from chiefofstate.core.readside_rules import FailurePolicy, ProjectionState
from chiefofstate.ports.offsets import Halt
from chiefofstate.readside.delivery import GuardedReadHandler
from chiefofstate.readside.offset_committer import OffsetCommitter
from chiefofstate.readside.projection import ProjectionContext
from chiefofstate.readside.runtime import ReadSideRuntime
from chiefofstate.stores.memory.journal import MemoryJournal
from chiefofstate.stores.memory.offsets import MemoryOffsetStore
from tests.support.readside import ScriptedHandler, append_events, eventually, eventually_equal

SHARDS = 4


class Rig:
    def __init__(self, *read_sides: ReadSideSettings) -> None:
        self.journal = MemoryJournal()
        self.store = MemoryOffsetStore()
        self.handlers: dict[str, ScriptedHandler] = {}
        self.runtime = ReadSideRuntime(
            ReadSidesSettings(enabled=True, read_sides=read_sides),
            SHARDS,
            ProjectionContext(
                journal=self.journal,
                store=self.store,
                committer=OffsetCommitter(self.store, 0.01),
                delivery=DeliverySettings(poll_interval_s=10.0, commit_interval_s=0.01),
                slots=asyncio.Semaphore(8),
            ),
            self._handler,
        )

    def _handler(self, read_side: ReadSideSettings) -> GuardedReadHandler:
        handler = self.handlers[read_side.read_side_id] = ScriptedHandler()
        return GuardedReadHandler(read_side, handler, None)


async def paused_flags(store: MemoryOffsetStore, read_side_id: str) -> dict[int, bool]:
    return {shard: record.paused for shard, record in (await store.load(read_side_id)).items()}


async def stored_offset(store: MemoryOffsetStore, read_side_id: str, shard: int) -> int | None:
    record = (await store.load(read_side_id)).get(shard)
    return None if record is None else record.offset


def side(read_side_id: str, **options: object) -> ReadSideSettings:
    return ReadSideSettings(read_side_id, "127.0.0.1", 1, **options)  # type: ignore[arg-type]


@pytest.fixture
async def closers() -> AsyncIterator[list[ReadSideRuntime]]:
    runtimes: list[ReadSideRuntime] = []
    yield runtimes
    for runtime in runtimes:
        await runtime.close()


async def started(rig: Rig, closers: list[ReadSideRuntime]) -> Rig:
    closers.append(rig.runtime)
    await rig.runtime.start()
    return rig


async def test_auto_start_false_pauses_every_shard_at_boot(closers: list[ReadSideRuntime]) -> None:
    rig = await started(Rig(side("quiet", auto_start=False)), closers)
    assert await paused_flags(rig.store, "quiet") == {shard: True for shard in range(SHARDS)}
    await append_events(rig.journal, "a", 1)
    rig.runtime.wake_all()
    await asyncio.sleep(0.02)
    assert rig.handlers["quiet"].calls == []
    assert set(rig.runtime.states("quiet").values()) == {ProjectionState.PAUSED}


async def test_auto_start_true_resumes_only_a_read_side_paused_on_every_shard(
    closers: list[ReadSideRuntime],
) -> None:
    rig = Rig(side("all"), side("some"))
    await rig.store.set_paused("all", range(SHARDS), True)
    await rig.store.set_paused("some", [0], True)
    await started(rig, closers)
    paused = await paused_flags(rig.store, "all")
    assert not any(paused[shard] for shard in range(SHARDS))
    assert rig.runtime.states("some")[0] is ProjectionState.PAUSED
    assert rig.runtime.states("some")[1] is ProjectionState.RUNNING


async def test_a_commit_wakes_only_the_projections_of_its_shard(closers: list[ReadSideRuntime]) -> None:
    rig = await started(Rig(side("a"), side("b")), closers)
    await asyncio.sleep(0.01)
    await append_events(rig.journal, "x", 2)
    await append_events(rig.journal, "y", 3)
    rig.runtime.on_committed("x", 2, [])
    await eventually(lambda: len(rig.handlers["a"].calls) == 1 and len(rig.handlers["b"].calls) == 1)
    await asyncio.sleep(0.02)
    assert rig.handlers["a"].calls == [("x", 1, 2)]  # shard 3 was not woken: its event waits for the poll


async def test_unknown_read_sides_are_not_found_and_bad_shards_invalid(
    closers: list[ReadSideRuntime],
) -> None:
    rig = await started(Rig(side("a")), closers)
    for operation in (rig.runtime.pause, rig.runtime.resume, rig.runtime.restart, rig.runtime.skip):
        with pytest.raises(NotFound, match="'nope' is not configured on this node \\(configured: a\\)"):
            await operation("nope")
        with pytest.raises(InvalidArgument, match="between 0 and 3 \\(got 4\\)"):
            await operation("a", 4)
    with pytest.raises(NotFound):
        await rig.runtime.offsets("nope")
    with pytest.raises(InvalidArgument):
        await rig.runtime.offset("a", 9)


async def test_a_disabled_read_side_is_not_run_but_its_offsets_can_be_read(
    closers: list[ReadSideRuntime],
) -> None:
    rig = Rig(side("off", enabled=False))
    await rig.store.save_offsets([("off", 1, 7)])
    await started(rig, closers)
    assert "off" not in rig.handlers
    assert await rig.runtime.offsets("off") == [(0, 0), (1, 7), (2, 0), (3, 0)]
    with pytest.raises(CosError) as caught:
        await rig.runtime.pause("off")
    assert caught.value.code is Code.FAILED_PRECONDITION
    (view,) = await rig.runtime.views("off")
    assert {shard.state for shard in view.shards} == {ProjectionState.DISABLED}


async def test_operations_across_all_shards_and_by_shard(closers: list[ReadSideRuntime]) -> None:
    rig = await started(Rig(side("a", failure_policy=FailurePolicy.STOP)), closers)
    await rig.runtime.pause("a")
    assert set(rig.runtime.states("a").values()) == {ProjectionState.PAUSED}
    await rig.runtime.resume("a", 2)
    assert rig.runtime.states("a")[2] is ProjectionState.RUNNING
    assert rig.runtime.states("a", 1) == {1: ProjectionState.PAUSED}
    await append_events(rig.journal, "x", 2, 2)
    rig.runtime.wake_shards([2])
    await eventually_equal(lambda: stored_offset(rig.store, "a", 2), 2)
    assert await rig.runtime.offset("a", 2) == 2
    await rig.runtime.restart("a", 2)  # the shard is replayed from its first event
    await eventually(lambda: [revision for _, revision, _ in rig.handlers["a"].calls] == [1, 2, 1, 2])


async def test_views_report_offsets_heads_lag_and_halts(closers: list[ReadSideRuntime]) -> None:
    rig = Rig(side("a"))
    await append_events(rig.journal, "x", 1, 3)
    await rig.store.save_halt("a", 1, 1, Halt(2, "read handler answered successful=false", 123))
    await started(rig, closers)
    (view,) = await rig.runtime.views("a", 1)
    (shard,) = view.shards
    assert (shard.shard, shard.offset, shard.head, shard.lag.events) == (1, 1, 3, 2)
    assert shard.state is ProjectionState.HALTED and shard.halt == Halt(
        2, "read handler answered successful=false", 123
    )
    assert "successful=false" in shard.detail
    skipped = await rig.runtime.skip("a", 1)
    assert skipped == [(1, 2)]
    await eventually_equal(lambda: stored_offset(rig.store, "a", 1), 3)


async def test_close_stops_every_projection_and_closes_the_handlers(closers: list[ReadSideRuntime]) -> None:
    rig = Rig(side("a"))
    await rig.runtime.start()
    await rig.runtime.close()
    assert rig.handlers["a"].closed
    with pytest.raises(CosError, match="shutting down"):
        await rig.runtime.pause("a")


async def test_projection_states_and_counts_are_exposed_as_metrics(closers: list[ReadSideRuntime]) -> None:
    from chiefofstate.node.read_side_gauges import register_read_side_readings
    from chiefofstate.telemetry.metrics import NodeMetrics

    rig = Rig(side("a"))
    await append_events(rig.journal, "x", 1, 2)
    await rig.store.save_halt("a", 2, None, Halt(9, "failed", 1))
    await started(rig, closers)
    await eventually_equal(lambda: stored_offset(rig.store, "a", 1), 2)
    metrics = NodeMetrics()
    register_read_side_readings(metrics, rig.runtime)
    text = metrics.exposition().decode()
    assert 'cos_read_side_projections{read_side="a",state="running"} 3.0' in text
    assert 'cos_read_side_projections{read_side="a",state="halted"} 1.0' in text
    assert 'cos_read_side_events_delivered_total{read_side="a"} 2.0' in text
    assert 'cos_read_side_events_skipped_total{read_side="a"} 0.0' in text


async def test_lag_seconds_is_the_age_of_the_oldest_unprocessed_event(closers: list[ReadSideRuntime]) -> None:
    from chiefofstate.node.read_side_gauges import ReadSideGauges
    from chiefofstate.telemetry.metrics import NodeMetrics

    rig = await started(Rig(side("a", auto_start=False)), closers)  # paused: nothing is delivered
    await append_events(rig.journal, "x", 1, written_ms=1_000_000)
    await append_events(rig.journal, "x", 1, written_ms=1_020_000)
    metrics = NodeMetrics()
    gauges = ReadSideGauges(rig.runtime, metrics, wall_clock=lambda: 1_030.0)
    await gauges.refresh()
    text = metrics.exposition().decode()
    assert 'cos_read_side_lag_events{read_side="a",shard="1"} 2.0' in text
    assert 'cos_read_side_lag_seconds{read_side="a",shard="1"} 30.0' in text  # the oldest waits 30 s
    assert 'cos_read_side_lag_seconds{read_side="a",shard="0"} 0.0' in text
    await rig.runtime.resume("a")
    await eventually_equal(lambda: stored_offset(rig.store, "a", 1), 2)  # both delivered and stored
    await gauges.refresh()
    assert 'cos_read_side_lag_seconds{read_side="a",shard="1"} 0.0' in metrics.exposition().decode()


def test_lag_seconds_is_unknown_without_a_write_time_and_never_negative() -> None:
    from chiefofstate.core.readside_rules import Lag
    from chiefofstate.node.read_side_gauges import lag_seconds
    from chiefofstate.readside.runtime import ShardView

    def behind(oldest_ms: int | None) -> ShardView:
        return ShardView(1, 1, 2, Lag(1, False), ProjectionState.RUNNING, "", None, oldest_ms)

    assert math.isnan(lag_seconds(behind(None), 100.0))  # rows written without write_timestamp
    assert lag_seconds(behind(101_000), 100.0) == 0.0  # the writer's clock runs ahead of ours
    assert lag_seconds(behind(99_500), 100.0) == 0.5


async def test_a_whole_read_side_operation_changes_no_shard_when_one_refuses(
    closers: list[ReadSideRuntime],
) -> None:
    rig = await started(Rig(side("a")), closers)
    await rig.runtime.hold("a", 2, 60.0)  # another operation holds shard 2

    with pytest.raises(CosError, match="shard 2") as refused:
        await rig.runtime.pause("a")

    assert refused.value.code is Code.FAILED_PRECONDITION
    assert await paused_flags(rig.store, "a") == {}  # no shard was paused, not even the first ones
    assert rig.runtime.states("a")[0] is ProjectionState.RUNNING
    await rig.runtime.release("a", 2)
    await append_events(rig.journal, "x", 0, 1)
    await append_events(rig.journal, "y", 2, 1)
    rig.runtime.wake_all()
    await eventually_equal(lambda: stored_offset(rig.store, "a", 0), 1)
    await eventually_equal(lambda: stored_offset(rig.store, "a", 2), 2)  # released: it delivers again


async def test_a_whole_read_side_restart_replays_every_shard_and_skip_moves_each_past_one_event(
    closers: list[ReadSideRuntime],
) -> None:
    rig = await started(Rig(side("a")), closers)
    await append_events(rig.journal, "x", 0, 2)
    await append_events(rig.journal, "y", 3, 1)
    rig.runtime.wake_all()
    await eventually(lambda: len(rig.handlers["a"].calls) == 3)
    await rig.runtime.pause("a")
    await rig.runtime.restart("a")
    assert await rig.runtime.offsets("a") == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert set(rig.runtime.states("a").values()) == {ProjectionState.PAUSED}  # a restart keeps the flag
    assert await rig.runtime.skip("a") == [(0, 1), (3, 3)]  # the first event of each non-empty shard
    await rig.runtime.resume("a")
    await eventually(lambda: len(rig.handlers["a"].calls) == 4)  # only shard 0's second event is left
    assert rig.handlers["a"].calls[-1][:2] == ("x", 2)


async def test_a_hold_nobody_releases_ends_by_itself(closers: list[ReadSideRuntime]) -> None:
    rig = await started(Rig(side("a")), closers)
    await rig.runtime.hold("a", 1, 0.2)
    await append_events(rig.journal, "x", 1, 1)
    rig.runtime.wake_all()
    await eventually_equal(lambda: stored_offset(rig.store, "a", 1), 1)

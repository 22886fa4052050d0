"""The group-commit writer on the in-memory journal: batching, failures, limits, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from chiefofstate.core.batching import MAX_WAIT_S
from chiefofstate.core.errors import ResourceExhausted, SequenceConflict, StoreUnavailable
from chiefofstate.journal import group_commit
from chiefofstate.journal.deciding import DecidingCommands
from chiefofstate.journal.group_commit import GroupCommitWriter
from chiefofstate.ports.journal import AppendRequest, JournalRow, SnapshotRow, StoredState
from chiefofstate.stores.memory.journal import MemoryJournal


def request(entity_id: str, expected: int = 0) -> AppendRequest:
    return AppendRequest(entity_id, 0, expected, [f"{entity_id}#{expected + 1}".encode()], 1, "w")


async def append(writer: GroupCommitWriter, request: AppendRequest) -> None:
    """Submit and wait for the outcome as the command processor does (shielded), raising a failure."""
    outcome = await asyncio.shield(writer.submit(request))
    if outcome is not None:
        raise outcome


class RecordingJournal:
    """Delegates to a real journal; records each batch and can hold or fail flushes on demand."""

    def __init__(self, inner: MemoryJournal) -> None:
        self.inner = inner
        self.batches: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.entered_at: list[float] = []  # loop time at which each flush reached the journal
        self.failure: Exception | None = None

    @property
    def description(self) -> str:
        return "recording " + self.inner.description

    async def migrate(self, num_shards: int) -> int:
        return await self.inner.migrate(num_shards)

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[Exception | None]:
        self.batches.append([r.entity_id for r in requests])
        self.entered_at.append(asyncio.get_running_loop().time())
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return await self.inner.append_batch(requests)

    async def latest_state(self, entity_id: str) -> StoredState | None:
        return await self.inner.latest_state(entity_id)

    async def read_events(
        self, entity_id: str, after_sequence: int = 0, limit: int = 1000
    ) -> list[JournalRow]:
        return await self.inner.read_events(entity_id, after_sequence, limit)

    async def read_shard(self, shard: int, after_ordering: int, limit: int) -> list[JournalRow]:
        return await self.inner.read_shard(shard, after_ordering, limit)

    async def save_snapshot(self, snapshot: SnapshotRow) -> None:
        await self.inner.save_snapshot(snapshot)

    async def list_snapshots(self, entity_id: str) -> list[SnapshotRow]:
        return await self.inner.list_snapshots(entity_id)

    async def delete_snapshots_below(self, entity_id: str, sequence_number: int) -> int:
        return await self.inner.delete_snapshots_below(entity_id, sequence_number)

    async def delete_events_up_to(self, entity_id: str, sequence_number: int) -> int:
        return await self.inner.delete_events_up_to(entity_id, sequence_number)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
async def journal() -> AsyncIterator[RecordingJournal]:
    inner = MemoryJournal()
    recording = RecordingJournal(inner)
    try:
        yield recording
    finally:
        await inner.close()


class ScriptedDeciding(DecidingCommands):
    """Commands deciding as a test says: whether appends are on their way, and the flush's budget."""

    def __init__(self) -> None:
        super().__init__()
        self.coming: Callable[[], bool] = lambda: False
        self.budget_s = 0.0

    def script(self, coming: Callable[[], bool], budget_s: float) -> None:
        self.coming, self.budget_s = coming, budget_s

    def appends_coming(self) -> bool:
        return self.coming()

    def append_wait_s(self) -> float:
        return self.budget_s


@pytest.fixture
def deciding() -> ScriptedDeciding:
    return ScriptedDeciding()


@pytest.fixture
async def writer(journal: RecordingJournal, deciding: ScriptedDeciding) -> AsyncIterator[GroupCommitWriter]:
    started = GroupCommitWriter(journal, max_batch=16, max_pending=100, deciding=deciding)
    started.start()
    try:
        yield started
    finally:
        await started.close()


async def test_a_lone_request_is_written_at_once(
    journal: RecordingJournal, writer: GroupCommitWriter
) -> None:
    await append(writer, request("alone"))
    assert journal.batches == [["alone"]]
    assert len(await journal.read_events("alone")) == 1


async def test_requests_arriving_during_a_flush_form_the_next_batches(
    journal: RecordingJournal, writer: GroupCommitWriter
) -> None:
    journal.gate = asyncio.Event()
    first = asyncio.create_task(append(writer, request("first")))
    await journal.entered.wait()
    later = [asyncio.create_task(append(writer, request(f"e{n}"))) for n in range(40)]
    await asyncio.sleep(0)
    journal.gate.set()
    await asyncio.gather(first, *later)

    assert [len(batch) for batch in journal.batches] == [1, 16, 16, 8]  # max_batch is 16
    written = [entity_id for batch in journal.batches for entity_id in batch]
    assert written == ["first", *(f"e{n}" for n in range(40))]  # queue order is kept
    assert len(await journal.read_shard(0, 0, 100)) == 41


@pytest.fixture
def long_cap(monkeypatch: pytest.MonkeyPatch) -> float:
    """A cap on waits far beyond any test's run, so a wait that ends early is told from one that does
    not by seconds rather than milliseconds (timing on a busy machine varies by tens of ms)."""
    monkeypatch.setattr(group_commit, "MAX_WAIT_S", 60.0)
    return 60.0


async def test_a_flush_waits_for_appends_on_their_way_and_ends_with_the_last_of_them(
    journal: RecordingJournal, writer: GroupCommitWriter, deciding: ScriptedDeciding, long_cap: float
) -> None:
    coming = [3]  # three commands are still talking to their write handler
    loop = asyncio.get_running_loop()

    async def arrives_after(delay_s: float, entity_id: str) -> None:
        await asyncio.sleep(delay_s)
        coming[0] -= 1
        await append(writer, request(entity_id))

    deciding.script(lambda: coming[0] > 0, long_cap)
    delays = (0, 0.002, 0.004)
    late = [asyncio.create_task(arrives_after(delay, f"late{n}")) for n, delay in enumerate(delays)]
    started = loop.time()
    await append(writer, request("first"))
    await asyncio.gather(*late)
    assert journal.batches == [["first", "late0", "late1", "late2"]]  # one round trip for all four
    # The last append on its way ended the wait, not its budget of a minute.
    assert journal.entered_at[0] - started < 5.0


async def test_a_flush_waits_no_longer_than_its_budget_for_an_append_that_never_comes(
    journal: RecordingJournal, writer: GroupCommitWriter, deciding: ScriptedDeciding
) -> None:
    loop = asyncio.get_running_loop()
    budget = MAX_WAIT_S / 2
    deciding.script(lambda: True, budget)  # a command whose handler hangs
    started = loop.time()
    await append(writer, request("alone"))
    assert journal.batches == [["alone"]]
    assert budget * 0.9 <= journal.entered_at[0] - started < 5.0

    deciding.script(lambda: True, 60.0)  # a budget beyond the cap
    started = loop.time()
    await append(writer, request("capped"))
    assert journal.batches[1] == ["capped"]
    assert MAX_WAIT_S * 0.9 <= journal.entered_at[1] - started < 5.0


async def test_a_full_batch_ends_the_wait(journal: RecordingJournal, long_cap: float) -> None:
    deciding = ScriptedDeciding()
    writer = GroupCommitWriter(journal, max_batch=4, deciding=deciding)
    writer.start()
    try:
        deciding.script(lambda: True, long_cap)
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = writer.submit(request("e0"))
        await asyncio.sleep(0.001)  # the writer now waits for the appends on their way
        await asyncio.gather(first, *(append(writer, request(f"e{n}")) for n in range(1, 4)))
        assert journal.batches == [["e0", "e1", "e2", "e3"]]
        assert journal.entered_at[0] - started < 5.0  # the fourth request ended the wait, not the cap
    finally:
        await writer.close()


async def test_close_ends_the_wait_and_writes_what_is_queued(
    journal: RecordingJournal, long_cap: float
) -> None:
    deciding = ScriptedDeciding()
    writer = GroupCommitWriter(journal, deciding=deciding)
    writer.start()
    deciding.script(lambda: True, long_cap)
    loop = asyncio.get_running_loop()
    outcome = writer.submit(request("queued"))
    await asyncio.sleep(0.001)  # the writer is waiting for appends that never come
    started = loop.time()
    await writer.close()
    assert loop.time() - started < 5.0
    assert outcome.result() is None
    assert journal.batches == [["queued"]]


async def test_concurrent_callers_share_transactions(
    journal: RecordingJournal, writer: GroupCommitWriter
) -> None:
    await asyncio.gather(*(append(writer, request(f"e{n}")) for n in range(40)))
    assert sum(len(batch) for batch in journal.batches) == 40
    assert len(journal.batches) < 40


async def test_a_conflicting_request_fails_alone(
    journal: RecordingJournal, writer: GroupCommitWriter
) -> None:
    await append(writer, request("taken"))
    journal.batches.clear()

    outcomes = await asyncio.gather(
        append(writer, request("first")),
        append(writer, request("second")),
        append(writer, request("taken")),
        append(writer, request("third")),
        return_exceptions=True,
    )

    assert outcomes[0] is None and outcomes[1] is None and outcomes[3] is None
    assert isinstance(outcomes[2], SequenceConflict)
    assert any(len(batch) > 1 and "taken" in batch for batch in journal.batches)


async def test_a_failed_flush_fails_every_request_in_it(
    journal: RecordingJournal, writer: GroupCommitWriter
) -> None:
    journal.failure = StoreUnavailable("database away")
    outcomes = await asyncio.gather(
        *(append(writer, request(f"f{n}")) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
    assert all(str(outcome) == "database away" for outcome in outcomes)
    journal.failure = None
    await append(writer, request("recovered"))


async def test_a_full_queue_is_resource_exhausted(journal: RecordingJournal) -> None:
    writer = GroupCommitWriter(journal, max_batch=4, max_pending=3)
    writer.start()
    journal.gate = asyncio.Event()
    in_flight = asyncio.create_task(append(writer, request("in-flight")))
    await journal.entered.wait()  # the writer holds it; the queue is empty again
    queued = [asyncio.create_task(append(writer, request(f"q{n}"))) for n in range(3)]
    await asyncio.sleep(0)
    assert writer.pending == 3

    with pytest.raises(ResourceExhausted, match=r"^journal writer queue is full \(3 pending\)$"):
        await append(writer, request("one-too-many"))

    journal.gate.set()
    await asyncio.gather(in_flight, *queued)
    assert journal.batches == [["in-flight"], ["q0", "q1", "q2"]]
    await writer.close()


async def test_a_cancelled_caller_does_not_cancel_the_write(journal: RecordingJournal) -> None:
    writer = GroupCommitWriter(journal)
    writer.start()
    journal.gate = asyncio.Event()
    caller = asyncio.create_task(append(writer, request("abandoned")))
    await journal.entered.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    journal.gate.set()
    await writer.close()
    assert len(await journal.read_events("abandoned")) == 1


async def test_close_writes_what_is_queued_then_refuses(journal: RecordingJournal) -> None:
    writer = GroupCommitWriter(journal)
    writer.start()
    callers = [asyncio.create_task(append(writer, request(f"c{n}"))) for n in range(10)]
    await asyncio.sleep(0)  # every caller has queued its request
    await writer.close()
    assert await asyncio.gather(*callers) == [None] * 10
    assert len(await journal.read_shard(0, 0, 100)) == 10
    with pytest.raises(StoreUnavailable):
        await append(writer, request("late"))


async def test_a_cancelled_writer_fails_what_it_holds(journal: RecordingJournal) -> None:
    writer = GroupCommitWriter(journal)
    writer.start()
    journal.gate = asyncio.Event()
    in_flight = asyncio.create_task(append(writer, request("in-flight")))
    await journal.entered.wait()
    queued = asyncio.create_task(append(writer, request("queued")))
    await asyncio.sleep(0)
    assert writer._task is not None
    writer._task.cancel()  # what the node's task group does on a hard stop
    await writer.close()  # the writer is stopped; close() itself was not cancelled
    with pytest.raises(StoreUnavailable, match="outcome is unknown"):
        await in_flight
    with pytest.raises(StoreUnavailable, match="stopped before writing"):
        await queued


async def test_cancelling_close_cancels_the_writer(journal: RecordingJournal) -> None:
    writer = GroupCommitWriter(journal)
    writer.start()
    journal.gate = asyncio.Event()
    in_flight = asyncio.create_task(append(writer, request("in-flight")))
    await journal.entered.wait()
    closing = asyncio.create_task(writer.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert writer._task is not None and writer._task.cancelled()
    with pytest.raises(StoreUnavailable, match="outcome is unknown"):
        await in_flight

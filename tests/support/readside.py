"""The read-side ports in memory for fast unit tests of projections and the runtime: the real in-memory
stores, thin wrappers that make them fail on demand, and a scripted read handler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.wrappers_pb2 import StringValue

from chiefofstate.core.errors import StoreUnavailable
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest
from chiefofstate.ports.journal import AppendRequest, Journal, JournalRow, ShardProgress
from chiefofstate.ports.offsets import Halt, OffsetStore, ProjectionChange, ShardRecord
from chiefofstate.ports.read_handler import DeliveryFailed, ReadSideCall
from chiefofstate.stores.memory.journal import MemoryJournal
from chiefofstate.stores.memory.offsets import MemoryOffsetStore


def packed(text: str) -> AnyProto:
    value = AnyProto()
    value.Pack(StringValue(value=text))
    return value


async def append_events(
    journal: Journal, entity_id: str, shard: int, count: int = 1, written_ms: int = 0
) -> list[JournalRow]:
    """Append `count` events to the entity through the port, each an `EventWrapper` as the command
    processor writes it, after the entity's newest row; returns the rows stored."""
    state = await journal.latest_state(entity_id)
    revision = 0 if state is None else state.sequence_number
    events = [
        EventWrapper(
            event=packed(f"{entity_id}#{number}"),
            resulting_state=packed(f"state of {entity_id} at {number}"),
            meta=MetaData(entity_id=entity_id, revision_number=number),
        ).SerializeToString()
        for number in range(revision + 1, revision + count + 1)
    ]
    (outcome,) = await journal.append_batch(
        [AppendRequest(entity_id, shard, revision, events, written_ms, "test-writer")]
    )
    if outcome is not None:
        raise outcome
    return await journal.read_events(entity_id, after_sequence=revision)


class FailingJournal:
    """The shard reads of a real in-memory journal (`inner`), the next `failures_left` of which fail with
    StoreUnavailable: the database going away under a projection."""

    def __init__(self) -> None:
        self.inner = MemoryJournal()
        self.failures_left = 0

    def _maybe_fail(self) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise StoreUnavailable("the database went away")

    async def read_shard(self, shard: int, after_ordering: int, limit: int) -> list[JournalRow]:
        self._maybe_fail()
        return await self.inner.read_shard(shard, after_ordering, limit)

    async def shard_progress(self, shard: int, after_ordering: int, count_limit: int) -> ShardProgress:
        self._maybe_fail()
        return await self.inner.shard_progress(shard, after_ordering, count_limit)


class FailingOffsetStore:
    """A real in-memory offset store (`inner`), the next `failures_left` calls to which fail with
    StoreUnavailable; it also keeps every offset it was asked to store (`saves`), for tests about when
    offsets are written."""

    def __init__(self, failures_left: int = 0) -> None:
        self.inner = MemoryOffsetStore()
        self.failures_left = failures_left
        self.saves: list[tuple[str, int, int]] = []

    @property
    def description(self) -> str:
        return "failing " + self.inner.description

    def _maybe_fail(self) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise StoreUnavailable("the database went away")

    async def load(self, read_side_id: str) -> dict[int, ShardRecord]:
        self._maybe_fail()
        return await self.inner.load(read_side_id)

    async def save_offsets(
        self,
        offsets: Sequence[tuple[str, int, int]],
        *,
        lease_tokens: Mapping[tuple[str, int], int] | None = None,
    ) -> set[tuple[str, int]]:
        self._maybe_fail()
        refused = await self.inner.save_offsets(offsets, lease_tokens=lease_tokens)
        self.saves.extend(entry for entry in offsets if (entry[0], entry[1]) not in refused)
        return refused

    async def skip_to(self, read_side_id: str, shard: int, offset: int) -> None:
        self._maybe_fail()
        await self.inner.skip_to(read_side_id, shard, offset)

    async def reset(self, read_side_id: str, shard: int) -> None:
        self._maybe_fail()
        await self.inner.reset(read_side_id, shard)

    async def set_paused(self, read_side_id: str, shards: Sequence[int], paused: bool) -> None:
        self._maybe_fail()
        await self.inner.set_paused(read_side_id, shards, paused)

    async def save_halt(
        self,
        read_side_id: str,
        shard: int,
        offset: int | None,
        halt: Halt,
        *,
        lease_token: int | None = None,
    ) -> bool:
        self._maybe_fail()
        return await self.inner.save_halt(read_side_id, shard, offset, halt, lease_token=lease_token)

    async def clear_halt(self, read_side_id: str, shard: int) -> None:
        self._maybe_fail()
        await self.inner.clear_halt(read_side_id, shard)

    async def apply_change(
        self,
        read_side_id: str,
        change: ProjectionChange,
        *,
        lease_tokens: Mapping[tuple[str, int], int] | None = None,
    ) -> set[tuple[str, int]]:
        self._maybe_fail()
        return await self.inner.apply_change(read_side_id, change, lease_tokens=lease_tokens)

    async def close(self) -> None:
        await self.inner.close()


async def stored_offsets(store: OffsetStore, *read_side_ids: str) -> dict[tuple[str, int], int]:
    """Every offset stored for the read sides, as {(read side, shard): offset}, read through the port."""
    return {
        (read_side_id, shard): record.offset
        for read_side_id in read_side_ids
        for shard, record in (await store.load(read_side_id)).items()
        if record.offset is not None
    }


Answer = Callable[[HandleReadSideRequest], Awaitable[bool]]


@dataclass
class ScriptedHandler:
    """Records every call; `answer` decides each reply (raise DeliveryFailed for a failed call)."""

    answer: Answer | None = None
    calls: list[tuple[str, int, int]] = field(default_factory=list)  # (entity, revision, shard)
    requests: list[HandleReadSideRequest] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    closed: bool = False

    async def handle(self, call: ReadSideCall, shard: int, timeout_s: float) -> bool:
        request = call.message()
        self.calls.append((call.entity_id, request.meta.revision_number, shard))
        self.requests.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.answer is None:
                await asyncio.sleep(0)
                return True
            return await self.answer(request)
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        self.closed = True


def failing_for(*entity_revisions: tuple[str, int], refuse: bool = False) -> Answer:
    """An answer that fails (or says successful=false) for the given (entity, revision) pairs."""

    async def answer(request: HandleReadSideRequest) -> bool:
        await asyncio.sleep(0)
        if (request.meta.entity_id, request.meta.revision_number) in entity_revisions:
            if refuse:
                return False
            raise DeliveryFailed("INTERNAL: test failure")
        return True

    return answer


class RecordingSleep:
    """Stands in for asyncio.sleep: records the delays and yields control without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


Answered = TypeVar("Answered")


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll until `check()` holds, failing with `what` after the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def eventually_equal(
    read: Callable[[], Awaitable[Answered]], expected: Answered, timeout_s: float = 5.0
) -> None:
    """Poll `await read()` until it answers `expected` (a read through a port), failing with the last
    answer after the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (answer := await read()) != expected:
        assert asyncio.get_running_loop().time() < deadline, (
            f"timed out: read {answer!r}, expected {expected!r}"
        )
        await asyncio.sleep(0.005)

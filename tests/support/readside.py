"""In-memory stand-ins for the read-side ports, for fast unit tests of projections and the runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.wrappers_pb2 import StringValue

from chiefofstate.core.errors import StoreUnavailable
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest
from chiefofstate.ports.journal import JournalRow, ShardProgress
from chiefofstate.ports.offsets import Halt, ShardRecord
from chiefofstate.ports.read_handler import DeliveryFailed, ReadSideCall


def packed(text: str) -> AnyProto:
    value = AnyProto()
    value.Pack(StringValue(value=text))
    return value


class MemoryJournal:
    """Rows per shard; `ordering` is global and grows with every append, as in the real journal."""

    def __init__(self) -> None:
        self.rows: list[JournalRow] = []
        self._revisions: dict[str, int] = {}
        self.failures_left = 0  # read_shard raises StoreUnavailable this many times

    def append(self, entity_id: str, shard: int, count: int = 1, written_ms: int = 0) -> list[JournalRow]:
        added = []
        for _ in range(count):
            revision = self._revisions.get(entity_id, 0) + 1
            self._revisions[entity_id] = revision
            wrapper = EventWrapper(
                event=packed(f"{entity_id}#{revision}"),
                resulting_state=packed(f"state of {entity_id} at {revision}"),
                meta=MetaData(entity_id=entity_id, revision_number=revision),
            )
            row = JournalRow(
                ordering=len(self.rows) + 1,
                entity_id=entity_id,
                sequence_number=revision,
                shard=shard,
                deleted=False,
                write_timestamp_ms=written_ms,
                payload=wrapper.SerializeToString(),
            )
            self.rows.append(row)
            added.append(row)
        return added

    async def read_shard(self, shard: int, after_ordering: int, limit: int) -> list[JournalRow]:
        await asyncio.sleep(0)
        if self.failures_left:
            self.failures_left -= 1
            raise StoreUnavailable("the database went away")
        return [row for row in self.rows if row.shard == shard and row.ordering > after_ordering][:limit]

    async def shard_progress(self, shard: int, after_ordering: int, count_limit: int) -> ShardProgress:
        rows = [row for row in (self.rows) if row.shard == shard]
        pending = [row for row in rows if row.ordering > after_ordering]
        return ShardProgress(
            rows[-1].ordering if rows else 0,
            min(len(pending), count_limit),
            pending[0].write_timestamp_ms if pending else None,
        )


@dataclass
class MemoryOffsetStore:
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    paused: dict[tuple[str, int], bool] = field(default_factory=dict)
    halts: dict[tuple[str, int], Halt] = field(default_factory=dict)
    saves: list[tuple[str, int, int]] = field(default_factory=list)
    failures_left: int = 0

    @property
    def description(self) -> str:
        return "memory"

    def _maybe_fail(self) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise StoreUnavailable("the database went away")

    async def load(self, read_side_id: str) -> dict[int, ShardRecord]:
        self._maybe_fail()
        shards = {
            shard for (name, shard) in [*self.offsets, *self.paused, *self.halts] if name == read_side_id
        }
        return {
            shard: ShardRecord(
                self.offsets.get((read_side_id, shard)),
                self.paused.get((read_side_id, shard), False),
                self.halts.get((read_side_id, shard)),
            )
            for shard in sorted(shards)
        }

    async def save_offsets(self, offsets: Sequence[tuple[str, int, int]]) -> None:
        self._maybe_fail()
        for read_side_id, shard, offset in offsets:
            self.offsets[(read_side_id, shard)] = offset
            self.saves.append((read_side_id, shard, offset))

    async def skip_to(self, read_side_id: str, shard: int, offset: int) -> None:
        self._maybe_fail()
        self.offsets[(read_side_id, shard)] = offset
        self.halts.pop((read_side_id, shard), None)

    async def reset(self, read_side_id: str, shard: int) -> None:
        self._maybe_fail()
        self.offsets.pop((read_side_id, shard), None)
        self.halts.pop((read_side_id, shard), None)

    async def set_paused(self, read_side_id: str, shards: Sequence[int], paused: bool) -> None:
        self._maybe_fail()
        for shard in shards:
            self.paused[(read_side_id, shard)] = paused

    async def save_halt(self, read_side_id: str, shard: int, offset: int | None, halt: Halt) -> None:
        self._maybe_fail()
        if offset is not None:
            self.offsets[(read_side_id, shard)] = offset
        self.halts[(read_side_id, shard)] = halt

    async def clear_halt(self, read_side_id: str, shard: int) -> None:
        self._maybe_fail()
        self.halts.pop((read_side_id, shard), None)

    async def close(self) -> None:
        pass


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


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll until `check()` holds, failing with `what` after the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)

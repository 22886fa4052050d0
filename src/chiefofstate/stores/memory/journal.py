"""The journal in memory: the `Journal` port over plain Python objects, for fast unit tests of entities
and read sides and for running the node's parts inside another process. Nothing outlives `close()` or the
process, so `cos serve` never offers it (docs/architecture.md, Storage).

It passes the journal contract suite the SQL stores pass (tests/contract) and keeps their rules:

* `ordering` comes from one counter, drawn while the lock is held, so it grows globally and within a shard
  in commit order (decision D3); here it is also without gaps (1, 2, 3 …), which PostgreSQL's is not.
* A request is checked against the entity's revision (its highest row, a deletion marker included) when
  its turn comes; a conflicting request fails alone and the rest of the batch is written.
* Deletion on snapshot keeps the highest deleted event as a marker (docs/contract.md §4.5); marked rows
  are left out of `read_shard` and of the pending count of `shard_progress`, but still count as the
  shard's head, as their `event_tag` rows do in the SQL stores.
* It keeps no shard leases: like the SQLite file, it serves a node that runs alone, so a request's
  `lease_token` is not compared with anything (cluster mode runs on PostgreSQL, docs/cluster.md).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice

from chiefofstate.ports.journal import (
    AppendRequest,
    JournalRow,
    ShardProgress,
    SnapshotRow,
    StoredState,
)
from chiefofstate.stores.memory.datastore import MemoryDatastore
from chiefofstate.stores.migrations import load_scripts
from chiefofstate.stores.rows import newer_state, parse_shard_tag, sequence_conflict


@dataclass(slots=True)
class _StoredEvent:
    """One event, listed both under its entity and under its shard tag: marking it deleted replaces `row`
    once for both lists."""

    tag: str  # the shard as `event_tag` holds it, as text
    row: JournalRow


def _ordering(event: _StoredEvent) -> int:
    return event.row.ordering


def _sequence_number(event: _StoredEvent) -> int:
    return event.row.sequence_number


class MemoryJournal:
    """`Journal` in this process's memory. Needs no `migrate` before use: there is no schema."""

    def __init__(self) -> None:
        self._datastore = MemoryDatastore("journal")
        self._last_ordering = 0
        self._by_entity: dict[str, list[_StoredEvent]] = {}  # ascending sequence number
        self._by_tag: dict[str, list[_StoredEvent]] = {}  # ascending ordering
        self._snapshots: dict[str, dict[int, SnapshotRow]] = {}  # entity → sequence number → snapshot

    @property
    def description(self) -> str:
        return self._datastore.description

    async def migrate(self, num_shards: int) -> int:
        """Nothing to create or upgrade: there is no schema and no shard row to add. Answers the schema
        version the SQL stores answer in this release (both dialects ship the same versions), so code
        written against the port cannot tell the stores apart by it."""
        scripts = await asyncio.to_thread(load_scripts, "postgres")
        await self._datastore.run(lambda: None)
        return scripts.latest_version

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[Exception | None]:
        if not any(request.events for request in requests):
            # As the SQL stores: nothing to write, so the store is not even asked (nor found closed).
            return [None] * len(requests)
        return await self._datastore.run(lambda: [self._append(request) for request in requests])

    def _append(self, request: AppendRequest) -> Exception | None:
        if not request.events:
            return None
        events = self._by_entity.get(request.entity_id, [])
        current = events[-1].row.sequence_number if events else 0
        if current != request.expected_sequence:
            return sequence_conflict(request, current)
        self._by_entity[request.entity_id] = events
        tag = str(request.shard)
        tagged = self._by_tag.setdefault(tag, [])
        for offset, payload in enumerate(request.events, start=1):
            self._last_ordering += 1
            row = JournalRow(
                ordering=self._last_ordering,
                entity_id=request.entity_id,
                sequence_number=request.expected_sequence + offset,
                shard=parse_shard_tag(tag),
                deleted=False,
                write_timestamp_ms=request.write_timestamp_ms,
                payload=bytes(payload),
            )
            stored = _StoredEvent(tag, row)
            events.append(stored)
            tagged.append(stored)
        return None

    async def latest_state(self, entity_id: str) -> StoredState | None:
        return await self._datastore.run(lambda: self._latest_state(entity_id))

    async def latest_states(self, entity_ids: Sequence[str]) -> dict[str, StoredState | None | Exception]:
        def read() -> dict[str, StoredState | None | Exception]:
            return {entity_id: self._latest_state(entity_id) for entity_id in entity_ids}

        return await self._datastore.run(read)

    def _latest_state(self, entity_id: str) -> StoredState | None:
        candidates: list[StoredState] = []
        events = self._by_entity.get(entity_id)
        if events:
            newest_event = events[-1].row
            candidates.append(StoredState("event", newest_event.sequence_number, newest_event.payload))
        snapshots = self._snapshots.get(entity_id)
        if snapshots:
            newest_snapshot = snapshots[max(snapshots)]
            candidates.append(
                StoredState("snapshot", newest_snapshot.sequence_number, newest_snapshot.payload)
            )
        return newer_state(candidates)

    async def read_events(
        self, entity_id: str, after_sequence: int = 0, limit: int = 1000
    ) -> list[JournalRow]:
        def read() -> list[JournalRow]:
            events = self._by_entity.get(entity_id, [])
            start = bisect_right(events, after_sequence, key=_sequence_number)
            return [event.row for event in events[start : start + limit]]

        return await self._datastore.run(read)

    def _live_rows_after(self, shard: int, after_ordering: int) -> Iterator[JournalRow]:
        """The shard's rows after `after_ordering` that are not marked deleted, ascending by ordering."""
        tagged = self._by_tag.get(str(shard), [])
        start = bisect_right(tagged, after_ordering, key=_ordering)
        for index in range(start, len(tagged)):
            row = tagged[index].row
            if not row.deleted:
                yield row

    async def read_shard(self, shard: int, after_ordering: int, limit: int) -> list[JournalRow]:
        return await self._datastore.run(
            lambda: list(islice(self._live_rows_after(shard, after_ordering), limit))
        )

    async def shard_progress(self, shard: int, after_ordering: int, count_limit: int) -> ShardProgress:
        def read() -> ShardProgress:
            tagged = self._by_tag.get(str(shard))
            head = tagged[-1].row.ordering if tagged else 0
            pending = self._live_rows_after(shard, after_ordering)
            first = next(pending, None)
            if first is None:
                return ShardProgress(head, 0)
            counted = 1 + sum(1 for _ in islice(pending, max(count_limit - 1, 0)))
            return ShardProgress(head, min(counted, count_limit), first.write_timestamp_ms)

        return await self._datastore.run(read)

    async def save_snapshot(self, snapshot: SnapshotRow) -> None:
        def save() -> None:
            stored = replace(snapshot, payload=bytes(snapshot.payload))
            self._snapshots.setdefault(snapshot.entity_id, {})[snapshot.sequence_number] = stored

        await self._datastore.run(save)

    async def list_snapshots(self, entity_id: str) -> list[SnapshotRow]:
        def read() -> list[SnapshotRow]:
            snapshots = self._snapshots.get(entity_id, {})
            return [snapshots[sequence_number] for sequence_number in sorted(snapshots)]

        return await self._datastore.run(read)

    async def delete_snapshots_below(self, entity_id: str, sequence_number: int) -> int:
        def delete() -> int:
            snapshots = self._snapshots.get(entity_id, {})
            below = [stored for stored in snapshots if stored < sequence_number]
            for stored in below:
                del snapshots[stored]
            if not snapshots:
                self._snapshots.pop(entity_id, None)
            return len(below)

        return await self._datastore.run(delete)

    async def delete_events_up_to(self, entity_id: str, sequence_number: int) -> int:
        return await self._datastore.run(lambda: self._delete_events_up_to(entity_id, sequence_number))

    def _delete_events_up_to(self, entity_id: str, sequence_number: int) -> int:
        # Upstream's two steps (docs/contract.md §4.5): mark, then remove every row below the highest
        # marked one, which stays so that the entity's revision stays known.
        events = self._by_entity.get(entity_id, [])
        for event in events[: bisect_right(events, sequence_number, key=_sequence_number)]:
            if not event.row.deleted:
                event.row = replace(event.row, deleted=True)
        marked = [event.row.sequence_number for event in events if event.row.deleted]
        if not marked:
            return 0
        removed = bisect_left(events, max(marked), key=_sequence_number)
        for event in events[:removed]:
            tagged = self._by_tag[event.tag]
            del tagged[bisect_left(tagged, event.row.ordering, key=_ordering)]
        del events[:removed]
        return removed

    async def ping(self) -> None:
        await self._datastore.run(lambda: None)

    async def close(self) -> None:
        def forget() -> None:
            self._by_entity.clear()
            self._by_tag.clear()
            self._snapshots.clear()

        self._datastore.close(forget)

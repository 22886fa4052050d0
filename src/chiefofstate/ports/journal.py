"""The journal port: everything the node needs from storage, independent of the database.

Rows keep upstream's layout (docs/contract.md §4.2, decision D2): one `event_journal` row per event holding a
serialized `EventWrapper`, one `event_tag` row with the shard number, snapshots of `StateWrapper`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

# What upstream writes in the serializer columns; rows with another manifest are refused on read.
SERIALIZER_ID = 5001
EVENT_MANIFEST = "chief_of_state.v1.EventWrapper"
SNAPSHOT_MANIFEST = "chief_of_state.v1.StateWrapper"
OFFSET_MANIFEST = "SEQ"
SCHEMA_VERSION_UPSTREAM = 6


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """All events one command persists, appended atomically (decision D1).

    `events[k]` is the serialized `EventWrapper` with sequence number `expected_sequence + 1 + k`.
    `lease_token` is the token under which this node holds the shard's lease (ports/cluster.py): the
    append is refused unless it is still the shard's current token. None appends unfenced, as a node
    that runs alone does.
    """

    entity_id: str
    shard: int
    expected_sequence: int
    events: Sequence[bytes]
    write_timestamp_ms: int
    writer: str
    lease_token: int | None = None


@dataclass(frozen=True, slots=True)
class StoredState:
    """The newest thing stored for an entity: a snapshot (`StateWrapper`) or an event (`EventWrapper`)."""

    kind: Literal["snapshot", "event"]
    sequence_number: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class JournalRow:
    ordering: int
    entity_id: str
    sequence_number: int
    shard: int
    deleted: bool
    write_timestamp_ms: int | None
    payload: bytes  # serialized EventWrapper


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    entity_id: str
    sequence_number: int
    created_ms: int
    payload: bytes  # serialized StateWrapper


@dataclass(frozen=True, slots=True)
class ShardProgress:
    """The journal side of a projection's progress, for operators."""

    head: int  # highest `ordering` tagged with the shard; 0 when it has none
    pending: int  # events of the shard after the offset, counted up to the limit asked for
    # write_timestamp (epoch ms) of the first event after the offset: how long the shard has waited;
    # None when there is none (or upstream stored none)
    oldest_pending_ms: int | None = None


class StateReader(Protocol):
    """What recovering an entity needs: its newest stored state (a journal, or reads batched over one)."""

    async def latest_state(self, entity_id: str) -> StoredState | None: ...


class Journal(Protocol):
    """Storage of events and snapshots. Every method raises `StoreUnavailable` when the database is away."""

    @property
    def description(self) -> str:
        """Human-readable name of the store in use, for the start-up log (decision D10)."""
        ...

    async def migrate(self, num_shards: int) -> int:
        """Create or upgrade the schema (docs/contract.md §4.6); returns the schema version now in place."""
        ...

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[Exception | None]:
        """Append many commands' events, in one transaction when none conflicts.

        Returns one entry per request, in order: None when committed, otherwise the exception
        (`LeaseLost` when the request's lease token is not its shard's current one, `SequenceConflict`
        when (entity, sequence) already exists). A refused request fails alone, writing none of its
        events; the others are committed. Before drawing `ordering` values the transaction locks the
        shard rows of the shards it writes, in shard order (decision D3), and compares lease tokens
        under those locks, so no lease can change hands between the check and the commit.
        """
        ...

    async def latest_state(self, entity_id: str) -> StoredState | None:
        """The newest of (latest snapshot, latest event row); None when the entity has neither."""
        ...

    async def latest_states(self, entity_ids: Sequence[str]) -> dict[str, StoredState | None | Exception]:
        """`latest_state` of many entities in one round trip: one entry per id asked for. An entity whose
        stored row cannot be read maps to the error (`Internal`), so it fails only its own callers."""
        ...

    async def read_events(
        self, entity_id: str, after_sequence: int = 0, limit: int = 1000
    ) -> list[JournalRow]:
        """Event rows of one entity with sequence number > after_sequence, ascending."""
        ...

    async def read_shard(self, shard: int, after_ordering: int, limit: int) -> list[JournalRow]:
        """Event rows tagged with `shard` whose ordering > after_ordering, ascending by ordering."""
        ...

    async def shard_progress(self, shard: int, after_ordering: int, count_limit: int) -> ShardProgress:
        """How far the journal has got in a shard, seen from a projection at `after_ordering`: the head,
        the events after it (counted up to `count_limit`), and the write time of the first of them."""
        ...

    async def save_snapshot(self, snapshot: SnapshotRow) -> None:
        """Insert or replace the snapshot at (entity, sequence)."""
        ...

    async def list_snapshots(self, entity_id: str) -> list[SnapshotRow]:
        """Snapshots of one entity, ascending by sequence number."""
        ...

    async def delete_snapshots_below(self, entity_id: str, sequence_number: int) -> int:
        """Delete snapshots with sequence < sequence_number; returns how many went."""
        ...

    async def delete_events_up_to(self, entity_id: str, sequence_number: int) -> int:
        """Upstream's deletion on snapshot (§4.5): events <= sequence_number are deleted, except the
        highest of them, which stays as a marker row with deleted = true. Returns rows removed."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a trivial query."""
        ...

    async def close(self) -> None: ...

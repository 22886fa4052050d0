"""Row rules shared by the stores: what upstream writes in the serializer columns, how rows are read, and
which of an entity's newest event and snapshot is its state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from chiefofstate.core.errors import CosError, Internal, LeaseLost, SequenceConflict
from chiefofstate.ports.journal import (
    EVENT_MANIFEST,
    SERIALIZER_ID,
    SNAPSHOT_MANIFEST,
    AppendRequest,
    JournalRow,
    StoredState,
)

# Upstream leaves the adapter manifest empty (docs/contract.md §4.2).
ADAPTER_MANIFEST = ""

# An event row with no readable shard tag; upstream always writes exactly one, so this only shows up in
# databases edited by hand.
UNKNOWN_SHARD = -1


def check_event_serializer(entity_id: str, sequence_number: int, serializer_id: int, manifest: str) -> None:
    """Refuse rows not written as upstream writes them (docs/contract.md §4.3) rather than misread them."""
    if serializer_id != SERIALIZER_ID or manifest != EVENT_MANIFEST:
        raise Internal(
            f"event_journal row ({entity_id!r}, {sequence_number}) has serializer {serializer_id} "
            f"manifest {manifest!r}; only {SERIALIZER_ID} {EVENT_MANIFEST!r} can be read"
        )


def check_snapshot_serializer(
    entity_id: str, sequence_number: int, serializer_id: int, manifest: str
) -> None:
    if serializer_id != SERIALIZER_ID or manifest != SNAPSHOT_MANIFEST:
        raise Internal(
            f"state_snapshot row ({entity_id!r}, {sequence_number}) has serializer {serializer_id} "
            f"manifest {manifest!r}; only {SERIALIZER_ID} {SNAPSHOT_MANIFEST!r} can be read"
        )


def parse_shard_tag(tag: str | None) -> int:
    if tag is None or not tag.isdigit():
        return UNKNOWN_SHARD
    return int(tag)


def event_row(
    ordering: int,
    entity_id: str,
    sequence_number: int,
    tag: str | None,
    deleted: bool,
    write_timestamp_ms: int | None,
    serializer_id: int,
    manifest: str,
    payload: bytes,
) -> JournalRow:
    check_event_serializer(entity_id, sequence_number, serializer_id, manifest)
    return JournalRow(
        ordering=ordering,
        entity_id=entity_id,
        sequence_number=sequence_number,
        shard=parse_shard_tag(tag),
        deleted=bool(deleted),
        write_timestamp_ms=write_timestamp_ms,
        payload=bytes(payload),
    )


def newer_state(candidates: Iterable[StoredState]) -> StoredState | None:
    """The newest of (latest event row, latest snapshot). On a tie the event row wins: it holds the same
    state and is the journal's own record."""
    best: StoredState | None = None
    for candidate in candidates:
        if (
            best is None
            or candidate.sequence_number > best.sequence_number
            or (candidate.sequence_number == best.sequence_number and candidate.kind == "event")
        ):
            best = candidate
    return best


def newest_state(
    entity_id: str, candidates: Sequence[tuple[str, int, int, str, bytes]]
) -> StoredState | None:
    """`newer_state` of stored rows, each as (kind, sequence, ser id, manifest, payload)."""
    states: list[StoredState] = []
    for kind, sequence_number, serializer_id, manifest, payload in candidates:
        if kind == "event":
            check_event_serializer(entity_id, sequence_number, serializer_id, manifest)
            states.append(StoredState("event", sequence_number, bytes(payload)))
        else:
            check_snapshot_serializer(entity_id, sequence_number, serializer_id, manifest)
            states.append(StoredState("snapshot", sequence_number, bytes(payload)))
    return newer_state(states)


def newest_states(
    candidates: Mapping[str, Sequence[tuple[str, int, int, str, bytes]]],
) -> dict[str, StoredState | None | Exception]:
    """`newest_state` of many entities; a row that cannot be read becomes that entity's answer, so it fails
    only the callers of its own entity and not the others read in the same round trip."""
    answers: dict[str, StoredState | None | Exception] = {}
    for entity_id, rows in candidates.items():
        try:
            answers[entity_id] = newest_state(entity_id, rows)
        except CosError as error:
            answers[entity_id] = error
    return answers


def sequence_conflict(request: AppendRequest, current: int | None = None) -> SequenceConflict:
    first = request.expected_sequence + 1
    if current is None:
        held = "it already holds one of them"
    else:
        held = f"it holds revision {current}, not {request.expected_sequence}"
    return SequenceConflict(
        f"cannot append revisions {first}..{request.expected_sequence + len(request.events)} "
        f"of entity {request.entity_id!r}: {held}"
    )


def lease_lost(request: AppendRequest) -> LeaseLost:
    return LeaseLost(
        f"cannot append to entity {request.entity_id!r}: this node no longer holds shard {request.shard} "
        f"(its lease token {request.lease_token} has been superseded); nothing was written"
    )


def append_outcome(request: AppendRequest, current: int, lease_held: bool) -> Exception | None:
    """What became of one request of a batch, from its entity's revision and its lease as the append
    found them under the shard locks. A lost lease comes first: the node must re-route the command
    whatever the revision, since the shard's new owner may already have moved the entity on."""
    if not lease_held:
        return lease_lost(request)
    if current != request.expected_sequence:
        return sequence_conflict(request, current)
    return None


def has_repeated_entity(requests: Sequence[AppendRequest]) -> bool:
    """Two requests of one entity in a batch cannot be checked against one snapshot of the journal;
    such batches are written one request per transaction instead."""
    return len({request.entity_id for request in requests}) != len(requests)


def unstorable_id(request: AppendRequest) -> Exception | None:
    """Why an SQL store cannot keep this request's entity id exactly, or None. PostgreSQL text cannot
    hold NUL, SQLite's JSON functions cut a string at one, and an unpaired surrogate has no UTF-8 form.
    The API refuses such ids (core/command_rules.py); a store still refuses them one by one, before
    its batch runs, so that one of them can never fail the requests it is batched with."""
    entity_id = request.entity_id
    if "\x00" in entity_id:
        return Internal(f"cannot store entity id {entity_id!r}: it contains NUL")
    try:
        entity_id.encode("utf-8")
    except UnicodeEncodeError:
        return Internal(f"cannot store entity id {entity_id!r}: it is not valid Unicode")
    return None

"""The journal contract: every test runs on SQLite, on PostgreSQL and in memory (see conftest.py), through
the port alone. What the SQL stores write in their tables is test_journal_schema.py's."""

from __future__ import annotations

import asyncio
import random

import pytest

from chiefofstate.core.errors import SequenceConflict, StoreUnavailable
from chiefofstate.core.sharding import shard_of
from chiefofstate.ports.journal import (
    AppendRequest,
    Journal,
    ShardProgress,
    SnapshotRow,
    StoredState,
)
from tests.contract.appends import NOW_MS, WRITER, append_ok, payload, request
from tests.contract.conftest import LATEST_VERSION, NUM_SHARDS

DESCRIPTION_PREFIX = {"sqlite": "SQLite", "postgres": "PostgreSQL", "memory": "in-memory"}


def entities_in_shard(shard: int, count: int, prefix: str = "entity") -> list[str]:
    found: list[str] = []
    number = 0
    while len(found) < count:
        candidate = f"{prefix}-{number}"
        if shard_of(candidate, NUM_SHARDS) == shard:
            found.append(candidate)
        number += 1
    return found


async def test_migrate_answers_the_schema_version_every_time(journal: Journal) -> None:
    assert await journal.migrate(NUM_SHARDS) == LATEST_VERSION
    assert await journal.migrate(NUM_SHARDS * 2) == LATEST_VERSION


# ------------------------------------------------------------------------------------------------ appends


async def test_append_single_and_multi_event_requests(journal: Journal) -> None:
    assert await journal.append_batch([request("one", 0), request("many", 0, count=3)]) == [None, None]

    events = await journal.read_events("many")
    assert [row.sequence_number for row in events] == [1, 2, 3]
    assert [row.payload for row in events] == [payload("many", n) for n in (1, 2, 3)]
    assert all(row.shard == shard_of("many", NUM_SHARDS) and not row.deleted for row in events)
    assert events[0].ordering < events[1].ordering < events[2].ordering


async def test_an_empty_batch_and_a_request_without_events_write_nothing(journal: Journal) -> None:
    assert await journal.append_batch([]) == []
    empty = AppendRequest("nothing", 0, 0, [], NOW_MS, WRITER)
    assert await journal.append_batch([empty]) == [None]
    assert await journal.read_events("nothing") == []
    assert await journal.latest_state("nothing") is None
    assert await journal.shard_progress(0, 0, 100) == ShardProgress(head=0, pending=0)


async def test_a_conflicting_request_fails_alone(journal: Journal) -> None:
    await append_ok(journal, request("taken", 0, count=2))

    results = await journal.append_batch([request("fresh-a", 0), request("taken", 0), request("fresh-b", 0)])

    assert results[0] is None and results[2] is None
    assert isinstance(results[1], SequenceConflict)
    assert "'taken'" in str(results[1])
    assert [row.payload for row in await journal.read_events("taken")] == [
        payload("taken", 1),
        payload("taken", 2),
    ]
    assert len(await journal.read_events("fresh-a")) == 1
    assert len(await journal.read_events("fresh-b")) == 1


async def test_two_requests_of_one_entity_in_a_batch_are_checked_in_order(journal: Journal) -> None:
    results = await journal.append_batch([request("twice", 0), request("twice", 1), request("twice", 1)])
    assert results[:2] == [None, None]
    assert isinstance(results[2], SequenceConflict)
    assert [row.sequence_number for row in await journal.read_events("twice")] == [1, 2]


async def test_a_gap_or_a_stale_expected_sequence_is_refused(journal: Journal) -> None:
    await append_ok(journal, request("gappy", 0, count=3))

    for expected in (5, 4, 1):
        (result,) = await journal.append_batch([request("gappy", expected)])
        assert isinstance(result, SequenceConflict), expected
        assert "holds revision 3" in str(result)
    assert [row.sequence_number for row in await journal.read_events("gappy")] == [1, 2, 3]
    (result,) = await journal.append_batch([request("never-written", 2)])
    assert isinstance(result, SequenceConflict)
    assert await journal.read_events("never-written") == []


async def test_a_stale_writer_is_refused_even_below_deleted_events(journal: Journal) -> None:
    await append_ok(journal, request("pruned", 0, count=5))
    await journal.delete_events_up_to("pruned", 3)
    # revision 2 no longer exists, so only the check of the current revision can refuse this
    (result,) = await journal.append_batch([request("pruned", 1)])
    assert isinstance(result, SequenceConflict)
    await append_ok(journal, request("pruned", 5))


async def test_ordering_grows_in_commit_order_within_a_shard(journal: Journal) -> None:
    entities = entities_in_shard(2, 6)
    for index, entity_id in enumerate(entities):
        await append_ok(journal, request(entity_id, 0, count=1 + index % 2))
    rows = await journal.read_shard(2, 0, 100)
    assert [row.entity_id for row in rows] == [
        e for index, e in enumerate(entities) for _ in range(1 + index % 2)
    ]
    orderings = [row.ordering for row in rows]
    assert orderings == sorted(orderings) and len(set(orderings)) == len(orderings)


async def test_a_follower_of_a_shard_misses_nothing_while_appends_to_it_race(journal: Journal) -> None:
    """Orderings must be given in commit order within a shard: a reader that follows the shard from the
    last ordering it saw (as read sides and subscriptions do) would otherwise step over a row that
    committed after it read past that row's ordering. 16 writers append to one shard at once while the
    follower reads, on every store."""
    entities = entities_in_shard(2, 16, prefix="race")
    appends_each, events_each = 6, 20  # long inserts: the appends in flight overlap
    followed: list[tuple[str, int]] = []
    writers_done = asyncio.Event()

    async def write(entity_id: str) -> None:
        for append in range(appends_each):
            await append_ok(journal, request(entity_id, append * events_each, count=events_each))

    async def follow() -> None:
        cursor = 0
        while True:
            last_pass = writers_done.is_set()
            rows = await journal.read_shard(2, cursor, 5000)
            followed.extend((row.entity_id, row.sequence_number) for row in rows)
            cursor = rows[-1].ordering if rows else cursor
            if last_pass and not rows:
                return
            await asyncio.sleep(0)

    follower = asyncio.create_task(follow())
    try:
        await asyncio.gather(*(write(entity_id) for entity_id in entities))
    finally:
        writers_done.set()
        await follower
    everything = [(row.entity_id, row.sequence_number) for row in await journal.read_shard(2, 0, 10_000)]
    sequences = list(range(1, appends_each * events_each + 1))
    assert sorted(everything) == sorted((e, n) for e in entities for n in sequences)
    assert followed == everything  # nothing stepped over, nothing seen twice, the journal's order
    for entity_id in entities:  # and each entity's events in sequence order
        assert [n for e, n in everything if e == entity_id] == sequences


# -------------------------------------------------------------------------------------------------- reads


async def test_latest_state_is_the_newer_of_snapshot_and_event(journal: Journal) -> None:
    assert await journal.latest_state("nobody") is None

    await append_ok(journal, request("e", 0, count=2))
    assert await journal.latest_state("e") == StoredState("event", 2, payload("e", 2))

    await journal.save_snapshot(SnapshotRow("e", 2, NOW_MS, b"snap-2"))
    assert await journal.latest_state("e") == StoredState(
        "event", 2, payload("e", 2)
    )  # a tie keeps the event

    await append_ok(journal, request("e", 2))
    assert await journal.latest_state("e") == StoredState("event", 3, payload("e", 3))

    await journal.save_snapshot(SnapshotRow("only-snapshot", 7, NOW_MS, b"snap-7"))
    assert await journal.latest_state("only-snapshot") == StoredState("snapshot", 7, b"snap-7")
    await journal.save_snapshot(SnapshotRow("e", 9, NOW_MS, b"snap-9"))
    assert await journal.latest_state("e") == StoredState("snapshot", 9, b"snap-9")


async def test_many_concurrent_latest_state_reads_answer_each_entity(journal: Journal) -> None:
    """Recovery of many entities at once (batched on PostgreSQL): every caller gets its own entity's
    state, whatever else is read with it, duplicates and more ids than one batch takes included."""
    expected: dict[str, StoredState | None] = {}
    events_only = [f"events-{n}" for n in range(120)]
    for start in range(0, len(events_only), 40):
        chunk = events_only[start : start + 40]
        await append_ok(journal, *(request(e, 0, count=1 + n % 3) for n, e in enumerate(chunk, start)))
    for n, entity_id in enumerate(events_only):
        expected[entity_id] = StoredState("event", 1 + n % 3, payload(entity_id, 1 + n % 3))
    for n in range(40):
        newer, older, tie = f"snap-newer-{n}", f"snap-older-{n}", f"snap-tie-{n}"
        await append_ok(journal, request(newer, 0, count=2), request(older, 0, count=4), request(tie, 0))
        await journal.save_snapshot(SnapshotRow(newer, 1, NOW_MS, b"old"))
        await journal.save_snapshot(SnapshotRow(newer, 10 + n, NOW_MS, f"snap-{n}".encode()))
        await journal.save_snapshot(SnapshotRow(older, 3, NOW_MS, b"behind"))
        await journal.save_snapshot(SnapshotRow(tie, 1, NOW_MS, b"same"))
        await journal.save_snapshot(SnapshotRow(f"snap-only-{n}", 7, NOW_MS, b"alone"))
        expected[newer] = StoredState("snapshot", 10 + n, f"snap-{n}".encode())
        expected[older] = StoredState("event", 4, payload(older, 4))
        expected[tie] = StoredState("event", 1, payload(tie, 1))
        expected[f"snap-only-{n}"] = StoredState("snapshot", 7, b"alone")
    for n in range(30):
        marker_only, partly = f"deleted-all-{n}", f"deleted-some-{n}"
        await append_ok(journal, request(marker_only, 0, count=3), request(partly, 0, count=4))
        await journal.delete_events_up_to(marker_only, 3)
        await journal.delete_events_up_to(partly, 2)
        expected[marker_only] = StoredState("event", 3, payload(marker_only, 3))
        expected[partly] = StoredState("event", 4, payload(partly, 4))
    for n in range(50):
        expected[f"unknown-{n}"] = None

    asked = list(expected) + random.Random(3).sample(list(expected), 100)  # 100 ids asked for twice
    random.Random(4).shuffle(asked)
    assert len(set(asked)) > 256
    answers = await asyncio.gather(*(journal.latest_state(entity_id) for entity_id in asked))
    for entity_id, answer in zip(asked, answers, strict=True):
        assert answer == expected[entity_id], entity_id


async def test_read_events_filters_by_entity_and_sequence(journal: Journal) -> None:
    await append_ok(journal, request("reader", 0, count=5), request("other", 0, count=2))
    rows = await journal.read_events("reader", after_sequence=2, limit=2)
    assert [(row.entity_id, row.sequence_number) for row in rows] == [("reader", 3), ("reader", 4)]
    assert rows[0].write_timestamp_ms == NOW_MS
    assert await journal.read_events("reader", after_sequence=5) == []


async def test_read_shard_returns_only_that_shard_in_ordering(journal: Journal) -> None:
    in_shard_1 = entities_in_shard(1, 3)
    in_shard_4 = entities_in_shard(4, 2)
    for entity_id in [in_shard_1[0], in_shard_4[0], in_shard_1[1], in_shard_4[1], in_shard_1[2]]:
        await append_ok(journal, request(entity_id, 0, count=2))

    rows = await journal.read_shard(1, 0, 100)
    assert [row.entity_id for row in rows] == [e for e in in_shard_1 for _ in range(2)]
    assert all(row.shard == 1 for row in rows)
    assert [row.ordering for row in rows] == sorted(row.ordering for row in rows)

    after = rows[1].ordering
    page = await journal.read_shard(1, after, 3)
    assert page == rows[2:5]
    assert await journal.read_shard(1, rows[-1].ordering, 10) == []
    assert [row.entity_id for row in await journal.read_shard(4, 0, 100)] == [
        e for e in in_shard_4 for _ in range(2)
    ]
    assert await journal.read_shard(7, 0, 100) == []


# -------------------------------------------------------------------------------------- snapshots, deletion


async def test_snapshots_are_saved_replaced_listed_and_pruned(journal: Journal) -> None:
    for sequence in (300, 100, 200):
        await journal.save_snapshot(SnapshotRow("snap", sequence, NOW_MS + sequence, f"s{sequence}".encode()))
    await journal.save_snapshot(SnapshotRow("snap", 200, NOW_MS, b"s200-again"))
    await journal.save_snapshot(SnapshotRow("other", 100, NOW_MS, b"o"))

    listed = await journal.list_snapshots("snap")
    assert listed == [
        SnapshotRow("snap", 100, NOW_MS + 100, b"s100"),
        SnapshotRow("snap", 200, NOW_MS, b"s200-again"),
        SnapshotRow("snap", 300, NOW_MS + 300, b"s300"),
    ]
    assert await journal.delete_snapshots_below("snap", 300) == 2
    assert [s.sequence_number for s in await journal.list_snapshots("snap")] == [300]
    assert await journal.delete_snapshots_below("snap", 300) == 0
    assert len(await journal.list_snapshots("other")) == 1


async def test_delete_events_keeps_the_highest_as_a_marker_and_cascades_tags(journal: Journal) -> None:
    await append_ok(journal, request("old", 0, count=5), request("neighbour", 0, count=2))

    assert await journal.delete_events_up_to("old", 3) == 2

    rows = await journal.read_events("old")
    assert [(row.sequence_number, row.deleted) for row in rows] == [(3, True), (4, False), (5, False)]
    assert rows[0].payload == payload("old", 3)
    shard_rows = await journal.read_shard(shard_of("old", NUM_SHARDS), 0, 100)
    assert [row.sequence_number for row in shard_rows if row.entity_id == "old"] == [4, 5]
    assert len(await journal.read_events("neighbour")) == 2

    assert await journal.delete_events_up_to("old", 5) == 2
    rows = await journal.read_events("old")
    assert [(row.sequence_number, row.deleted) for row in rows] == [(5, True)]
    # the marker keeps the entity's state and revision known
    assert await journal.latest_state("old") == StoredState("event", 5, payload("old", 5))
    (result,) = await journal.append_batch([request("old", 4)])
    assert isinstance(result, SequenceConflict)
    await append_ok(journal, request("old", 5))


# ------------------------------------------------------------------------------------------------- health


async def test_ping_and_description(store_kind: str, journal: Journal) -> None:
    await journal.ping()
    assert journal.description.startswith(DESCRIPTION_PREFIX[store_kind])


async def test_a_closed_journal_reports_store_unavailable(journal: Journal) -> None:
    await journal.close()
    with pytest.raises(StoreUnavailable):
        await journal.ping()
    with pytest.raises(StoreUnavailable):
        await journal.append_batch([request("late", 0)])
    with pytest.raises(StoreUnavailable):
        await journal.latest_state("late")


async def test_shard_progress_reports_the_head_and_counts_pending_events_up_to_a_limit(
    journal: Journal,
) -> None:
    assert await journal.shard_progress(1, 0, 100) == ShardProgress(head=0, pending=0)
    for revision in range(5):
        result = await journal.append_batch(
            [AppendRequest(f"entity-{revision % 2}", 1, revision // 2, [b"event"], 1000 + revision, "writer")]
        )
        assert result == [None]
    orderings = [row.ordering for row in await journal.read_shard(1, 0, 100)]
    assert len(orderings) == 5
    # the write time of the first event after the offset: how long the shard has waited (lag seconds)
    assert await journal.shard_progress(1, 0, 100) == ShardProgress(orderings[-1], 5, 1000)
    assert await journal.shard_progress(1, orderings[1], 100) == ShardProgress(orderings[-1], 3, 1002)
    assert await journal.shard_progress(1, 0, 2) == ShardProgress(orderings[-1], 2, 1000)
    assert await journal.shard_progress(1, orderings[-1], 100) == ShardProgress(orderings[-1], 0)
    assert await journal.shard_progress(0, 0, 100) == ShardProgress(0, 0)


async def test_shard_progress_leaves_deleted_events_out_but_the_marker_keeps_the_head(
    journal: Journal,
) -> None:
    early, late = entities_in_shard(3, 2)
    await append_ok(journal, request(early, 0, count=3, shard=3))
    await append_ok(journal, request(late, 0, count=2, shard=3))
    orderings = [row.ordering for row in await journal.read_shard(3, 0, 100)]
    assert await journal.delete_events_up_to(late, 2) == 1  # the marker is the shard's newest row

    assert await journal.shard_progress(3, 0, 100) == ShardProgress(orderings[-1], 3, NOW_MS)
    assert await journal.shard_progress(3, orderings[2], 100) == ShardProgress(orderings[-1], 0)
    assert [row.ordering for row in await journal.read_shard(3, 0, 100)] == orderings[:3]
    assert [row.ordering for row in await journal.read_shard(3, 0, 1)] == orderings[:1]

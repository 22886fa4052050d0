"""The journal contract: every test runs on SQLite and on PostgreSQL (see conftest.py)."""

from __future__ import annotations

import asyncio
import random
from importlib import resources

import pytest

from chiefofstate.core.errors import ConfigError, Internal, SequenceConflict, StoreUnavailable
from chiefofstate.core.sharding import shard_of
from chiefofstate.ports.journal import (
    EVENT_MANIFEST,
    SERIALIZER_ID,
    AppendRequest,
    Journal,
    ShardProgress,
    SnapshotRow,
    StoredState,
)
from chiefofstate.stores.migrations import MigrationError, load_scripts, split_statements
from tests.contract.conftest import ADDITIVE_AFTER_7, LATEST_VERSION, NUM_SHARDS, Backend

WRITER = "writer-1"
NOW_MS = 1_700_000_000_000


def request(entity_id: str, expected: int, count: int = 1, shard: int | None = None) -> AppendRequest:
    return AppendRequest(
        entity_id=entity_id,
        shard=shard_of(entity_id, NUM_SHARDS) if shard is None else shard,
        expected_sequence=expected,
        events=[payload(entity_id, expected + offset) for offset in range(1, count + 1)],
        write_timestamp_ms=NOW_MS,
        writer=WRITER,
    )


def payload(entity_id: str, sequence: int) -> bytes:
    return f"{entity_id}#{sequence}".encode()


def entities_in_shard(shard: int, count: int, prefix: str = "entity") -> list[str]:
    found: list[str] = []
    number = 0
    while len(found) < count:
        candidate = f"{prefix}-{number}"
        if shard_of(candidate, NUM_SHARDS) == shard:
            found.append(candidate)
        number += 1
    return found


async def append_ok(journal: Journal, *requests: AppendRequest) -> None:
    assert await journal.append_batch(list(requests)) == [None] * len(requests)


def upstream_script(kind: str, name: str) -> str:
    return (
        resources.files("chiefofstate.stores").joinpath(kind, "migrations", name).read_text(encoding="utf-8")
    )


async def create_tables(backend: Backend, script: str, *, without: str | None = None) -> None:
    """Plant tables as an older release left them (the upstream version 6 schema, optionally minus one)."""
    for statement in split_statements(script):
        if without is None or f"EXISTS {without} " not in statement:
            await backend.raw.execute(statement)


async def recorded_versions(backend: Backend) -> list[tuple[int, bool]]:
    rows = await backend.raw.fetch(
        "SELECT version_number, is_snapshot FROM cos_migrations ORDER BY version_number"
    )
    return [(int(version), bool(snapshot)) for version, snapshot in rows]


# --------------------------------------------------------------------------------------------- migrations


UPSTREAM_COLUMNS = {
    "event_journal": {
        "ordering",
        "persistence_id",
        "sequence_number",
        "deleted",
        "writer",
        "write_timestamp",
        "adapter_manifest",
        "event_ser_id",
        "event_ser_manifest",
        "event_payload",
        "meta_ser_id",
        "meta_ser_manifest",
        "meta_payload",
    },
    "event_tag": {"event_id", "tag"},
    "state_snapshot": {
        "persistence_id",
        "sequence_number",
        "created",
        "snapshot_ser_id",
        "snapshot_ser_manifest",
        "snapshot_payload",
        "meta_ser_id",
        "meta_ser_manifest",
        "meta_payload",
    },
    "read_side_offsets": {
        "projection_name",
        "projection_key",
        "current_offset",
        "manifest",
        "mergeable",
        "last_updated",
    },
    "read_sides": {"projection_name", "projection_key", "paused", "last_updated"},
    "cos_migrations": {"version_number", "upgraded_at", "is_snapshot"},
    "cos_shard_locks": {"shard", "lease_token"},
}
# The entity-shard leases of a cluster (migration 11), on PostgreSQL only: a node on SQLite runs alone.
CLUSTER_LEASE_COLUMNS = {"owner", "expires_at"}


async def test_migrate_creates_every_upstream_table_and_records_6_then_7(backend: Backend) -> None:
    journal = await backend.open()
    assert await journal.migrate(NUM_SHARDS) == LATEST_VERSION

    assert set(UPSTREAM_COLUMNS) <= await backend.raw.tables()
    for table, expected in UPSTREAM_COLUMNS.items():
        if table == "cos_shard_locks" and backend.kind == "postgres":
            expected = expected | CLUSTER_LEASE_COLUMNS
        assert set(await backend.raw.columns(table)) == expected, table
    journal_columns = await backend.raw.columns("event_journal")
    assert journal_columns["persistence_id"] == ("VARCHAR(255)", False)
    assert journal_columns["sequence_number"] == ("BIGINT", False)
    assert journal_columns["write_timestamp"] == ("BIGINT", True)
    assert journal_columns["event_ser_manifest"] == ("VARCHAR(255)", False)
    assert journal_columns["meta_payload"][1] is True
    assert (await backend.raw.columns("event_tag"))["tag"][0] == "VARCHAR(256)"
    assert (await backend.raw.columns("read_side_offsets"))["manifest"][0] == "VARCHAR(4)"
    assert "projection_name_index" in await backend.raw.indexes("read_side_offsets")
    if backend.kind == "postgres":
        assert journal_columns["event_payload"] == ("BYTEA", False)
        assert "event_journal_ordering_idx" in await backend.raw.indexes("event_journal")
    assert await backend.raw.foreign_keys("event_tag") == {
        ("event_id", "event_journal", "ordering", "CASCADE")
    }

    versions = await backend.raw.fetch("SELECT version_number, upgraded_at, is_snapshot FROM cos_migrations")
    assert sorted((int(v), bool(s)) for v, _, s in versions) == [(6, True), (7, False), *ADDITIVE_AFTER_7]
    assert all(upgraded_at > 0 for _, upgraded_at, _ in versions)
    shards = await backend.raw.fetch("SELECT shard, lease_token FROM cos_shard_locks ORDER BY shard")
    assert shards == [(shard, 0) for shard in range(NUM_SHARDS)]


def test_both_stores_ship_the_same_versions() -> None:
    postgres, sqlite = load_scripts("postgres"), load_scripts("sqlite")
    assert postgres.snapshot_version == sqlite.snapshot_version == 6
    assert (
        [v for v, _ in postgres.upgrades]
        == [v for v, _ in sqlite.upgrades]
        == list(range(6, LATEST_VERSION + 1))
    )


async def test_migrate_twice_changes_nothing(backend: Backend) -> None:
    journal = await backend.migrated()
    before = await backend.raw.fetch("SELECT * FROM cos_migrations ORDER BY version_number")
    assert await journal.migrate(NUM_SHARDS) == LATEST_VERSION
    assert await (await backend.open()).migrate(NUM_SHARDS) == LATEST_VERSION
    assert await backend.raw.fetch("SELECT * FROM cos_migrations ORDER BY version_number") == before


async def test_migrate_adds_shard_rows_when_the_shard_count_grows(backend: Backend) -> None:
    journal = await backend.migrated()
    await journal.migrate(NUM_SHARDS * 2)
    rows = await backend.raw.fetch("SELECT count(*) FROM cos_shard_locks")
    assert rows == [(NUM_SHARDS * 2,)]


async def test_initial_version_is_recorded_on_an_empty_history(backend: Backend) -> None:
    await create_tables(backend, upstream_script(backend.kind, "0006_initial.sql"))
    journal = await backend.open(migrations_initial_version="6")
    assert await journal.migrate(NUM_SHARDS) == LATEST_VERSION
    assert await recorded_versions(backend) == [(6, True), (7, False), *ADDITIVE_AFTER_7]
    assert "cos_shard_locks" in await backend.raw.tables()


async def test_initial_version_empty_is_refused(backend: Backend) -> None:
    journal = await backend.open(migrations_initial_version="")
    with pytest.raises(ConfigError) as caught:
        await journal.migrate(NUM_SHARDS)
    assert caught.value.variable == "COS_MIGRATIONS_INITIAL_VERSION"
    assert str(caught.value) == "COS_MIGRATIONS_INITIAL_VERSION: setting provided empty"


@pytest.mark.parametrize("value", ["abc", "6.0", " 6", "1_0", "99999999999"])
async def test_initial_version_not_an_integer_is_refused(backend: Backend, value: str) -> None:
    journal = await backend.open(migrations_initial_version=value)
    with pytest.raises(ConfigError) as caught:
        await journal.migrate(NUM_SHARDS)
    assert caught.value.variable == "COS_MIGRATIONS_INITIAL_VERSION"
    assert caught.value.problem == f"cannot be '{value}'"


async def test_initial_version_is_ignored_once_a_history_exists(backend: Backend) -> None:
    await backend.migrated()
    journal = await backend.open(migrations_initial_version="not a number")
    assert await journal.migrate(NUM_SHARDS) == LATEST_VERSION
    assert await recorded_versions(backend) == [(6, True), (7, False), *ADDITIVE_AFTER_7]


async def test_a_version_5_database_is_upgraded_and_keeps_its_rows(backend: Backend) -> None:
    await create_tables(backend, upstream_script(backend.kind, "0006_initial.sql"), without="read_sides")
    await create_tables(backend, upstream_script(backend.kind, "bootstrap.sql"))
    await backend.raw.execute(
        "INSERT INTO cos_migrations (version_number, upgraded_at, is_snapshot) VALUES ($1, $2, $3)",
        5,
        1,
        True,
    )
    await backend.raw.execute(
        "INSERT INTO state_snapshot (persistence_id, sequence_number, created, snapshot_ser_id, "
        "snapshot_ser_manifest, snapshot_payload) VALUES ($1, $2, $3, $4, $5, $6)",
        "kept",
        3,
        1,
        SERIALIZER_ID,
        "chief_of_state.v1.StateWrapper",
        b"state",
    )
    assert "read_sides" not in await backend.raw.tables()

    journal = await backend.open()
    assert await journal.migrate(NUM_SHARDS) == LATEST_VERSION

    assert "read_sides" in await backend.raw.tables()
    assert await recorded_versions(backend) == [(5, True), (6, False), (7, False), *ADDITIVE_AFTER_7]
    assert await journal.latest_state("kept") == StoredState("snapshot", 3, b"state")


async def test_a_version_4_database_cannot_be_upgraded(backend: Backend) -> None:
    await create_tables(backend, upstream_script(backend.kind, "bootstrap.sql"))
    await backend.raw.execute(
        "INSERT INTO cos_migrations (version_number, upgraded_at, is_snapshot) VALUES ($1, $2, $3)",
        4,
        1,
        True,
    )
    journal = await backend.open()
    with pytest.raises(MigrationError, match="^cannot upgrade from version 4 to 6$"):
        await journal.migrate(NUM_SHARDS)
    assert await recorded_versions(backend) == [(4, True)]
    assert "read_sides" not in await backend.raw.tables()


async def test_a_database_newer_than_the_code_is_refused(backend: Backend) -> None:
    await create_tables(backend, upstream_script(backend.kind, "bootstrap.sql"))
    await backend.raw.execute(
        "INSERT INTO cos_migrations (version_number, upgraded_at, is_snapshot) VALUES ($1, $2, $3)",
        99,
        1,
        False,
    )
    journal = await backend.open()
    with pytest.raises(MigrationError, match="version 99, newer than this release supports"):
        await journal.migrate(NUM_SHARDS)


# ------------------------------------------------------------------------------------------------ appends


async def test_append_single_and_multi_event_requests(backend: Backend, journal: Journal) -> None:
    assert await journal.append_batch([request("one", 0), request("many", 0, count=3)]) == [None, None]

    rows = await backend.raw.fetch(
        "SELECT persistence_id, sequence_number, deleted, writer, write_timestamp, adapter_manifest, "
        "event_ser_id, event_ser_manifest, event_payload, meta_ser_id, meta_ser_manifest, meta_payload "
        "FROM event_journal ORDER BY ordering"
    )
    assert [(row[0], row[1]) for row in rows] == [("one", 1), ("many", 1), ("many", 2), ("many", 3)]
    for row in rows:
        entity_id, sequence = row[0], row[1]
        assert row[2:] == (
            False,
            WRITER,
            NOW_MS,
            "",
            SERIALIZER_ID,
            EVENT_MANIFEST,
            payload(entity_id, sequence),
            None,
            None,
            None,
        )

    tags = await backend.raw.fetch(
        "SELECT j.persistence_id, t.tag FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id"
    )
    assert sorted(tags) == sorted(
        [("one", str(shard_of("one", NUM_SHARDS)))] + [("many", str(shard_of("many", NUM_SHARDS)))] * 3
    )
    events = await journal.read_events("many")
    assert [row.sequence_number for row in events] == [1, 2, 3]
    assert [row.payload for row in events] == [payload("many", n) for n in (1, 2, 3)]
    assert all(row.shard == shard_of("many", NUM_SHARDS) and not row.deleted for row in events)
    assert events[0].ordering < events[1].ordering < events[2].ordering


async def test_an_empty_batch_and_a_request_without_events_write_nothing(
    backend: Backend, journal: Journal
) -> None:
    assert await journal.append_batch([]) == []
    empty = AppendRequest("nothing", 0, 0, [], NOW_MS, WRITER)
    assert await journal.append_batch([empty]) == [None]
    assert await backend.raw.fetch("SELECT count(*) FROM event_journal") == [(0,)]


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


async def test_a_row_with_an_unknown_manifest_is_refused(backend: Backend, journal: Journal) -> None:
    await append_ok(journal, request("odd", 0))
    await backend.raw.execute("UPDATE event_journal SET event_ser_manifest = 'com.example.Other'")
    with pytest.raises(Internal, match=r"\('odd', 1\).*com\.example\.Other"):
        await journal.read_events("odd")
    with pytest.raises(Internal, match="com.example.Other"):
        await journal.latest_state("odd")
    with pytest.raises(Internal, match="com.example.Other"):
        await journal.read_shard(shard_of("odd", NUM_SHARDS), 0, 10)

    await journal.save_snapshot(SnapshotRow("odd-snapshot", 1, NOW_MS, b"s"))
    await backend.raw.execute("UPDATE state_snapshot SET snapshot_ser_id = 42")
    with pytest.raises(Internal, match="serializer 42"):
        await journal.list_snapshots("odd-snapshot")


# -------------------------------------------------------------------------------------- snapshots, deletion


async def test_snapshots_are_saved_replaced_listed_and_pruned(backend: Backend, journal: Journal) -> None:
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
    stored = await backend.raw.fetch(
        "SELECT snapshot_ser_id, snapshot_ser_manifest, meta_payload FROM state_snapshot "
        "WHERE sequence_number = 200"
    )
    assert stored == [(SERIALIZER_ID, "chief_of_state.v1.StateWrapper", None)]

    assert await journal.delete_snapshots_below("snap", 300) == 2
    assert [s.sequence_number for s in await journal.list_snapshots("snap")] == [300]
    assert await journal.delete_snapshots_below("snap", 300) == 0
    assert len(await journal.list_snapshots("other")) == 1


async def test_delete_events_keeps_the_highest_as_a_marker_and_cascades_tags(
    backend: Backend, journal: Journal
) -> None:
    await append_ok(journal, request("old", 0, count=5), request("neighbour", 0, count=2))

    assert await journal.delete_events_up_to("old", 3) == 2

    rows = await journal.read_events("old")
    assert [(row.sequence_number, row.deleted) for row in rows] == [(3, True), (4, False), (5, False)]
    assert rows[0].payload == payload("old", 3)
    tagged = await backend.raw.fetch(
        "SELECT j.sequence_number FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id "
        "WHERE j.persistence_id = 'old' ORDER BY 1"
    )
    assert tagged == [(3,), (4,), (5,)]
    assert await backend.raw.fetch("SELECT count(*) FROM event_tag") == [(5,)]  # 3 of "old", 2 of "neighbour"
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


async def test_ping_and_description(backend: Backend, journal: Journal) -> None:
    await journal.ping()
    assert journal.description.startswith("SQLite" if backend.kind == "sqlite" else "PostgreSQL")


async def test_a_closed_journal_reports_store_unavailable(backend: Backend) -> None:
    journal = await backend.migrated()
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

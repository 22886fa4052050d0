"""The journal's schema on the SQL stores: tables and migrations as upstream has them, and the rows the
journal writes, read back raw. Parametrised over SQLite and PostgreSQL (see conftest.py); the in-memory
journal has no schema, so its behaviour is checked by test_journal_contract.py alone."""

from __future__ import annotations

from importlib import resources

import pytest

from chiefofstate.core.errors import ConfigError, Internal
from chiefofstate.core.sharding import shard_of
from chiefofstate.ports.journal import (
    EVENT_MANIFEST,
    SERIALIZER_ID,
    AppendRequest,
    Journal,
    SnapshotRow,
    StoredState,
)
from chiefofstate.stores.migrations import MigrationError, load_scripts, split_statements
from tests.contract.appends import NOW_MS, WRITER, append_ok, payload, request
from tests.contract.conftest import ADDITIVE_AFTER_7, LATEST_VERSION, NUM_SHARDS, Backend


@pytest.fixture
async def journal(backend: Backend) -> Journal:
    """Here the journal is the SQL one on `backend`, so that what it writes can be read back raw."""
    return await backend.migrated()


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


@pytest.mark.parametrize("value", ["6", " 6\n"])  # trimmed, as upstream does
async def test_initial_version_is_recorded_on_an_empty_history(backend: Backend, value: str) -> None:
    await create_tables(backend, upstream_script(backend.kind, "0006_initial.sql"))
    journal = await backend.open(migrations_initial_version=value)
    assert await journal.migrate(NUM_SHARDS) == LATEST_VERSION
    assert await recorded_versions(backend) == [(6, True), (7, False), *ADDITIVE_AFTER_7]
    assert "cos_shard_locks" in await backend.raw.tables()


async def test_initial_version_empty_is_refused(backend: Backend) -> None:
    journal = await backend.open(migrations_initial_version="")
    with pytest.raises(ConfigError) as caught:
        await journal.migrate(NUM_SHARDS)
    assert caught.value.variable == "COS_MIGRATIONS_INITIAL_VERSION"
    assert str(caught.value) == "COS_MIGRATIONS_INITIAL_VERSION: setting provided empty"


@pytest.mark.parametrize("value", ["abc", "6.0", "6 6", "1_0", "99999999999"])
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
    with pytest.raises(
        MigrationError, match="^the database schema is at version 4, too old for this release to upgrade"
    ):
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


# ------------------------------------------------------------------------------------------- rows written


async def test_appended_rows_are_written_as_upstream_writes_them(backend: Backend, journal: Journal) -> None:
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


async def test_an_empty_batch_and_a_request_without_events_leave_no_row(
    backend: Backend, journal: Journal
) -> None:
    assert await journal.append_batch([]) == []
    empty = AppendRequest("nothing", 0, 0, [], NOW_MS, WRITER)
    assert await journal.append_batch([empty]) == [None]
    assert await backend.raw.fetch("SELECT count(*) FROM event_journal") == [(0,)]


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


async def test_a_replaced_snapshot_is_stored_as_upstream_writes_it(
    backend: Backend, journal: Journal
) -> None:
    for sequence in (300, 100, 200):
        await journal.save_snapshot(SnapshotRow("snap", sequence, NOW_MS + sequence, f"s{sequence}".encode()))
    await journal.save_snapshot(SnapshotRow("snap", 200, NOW_MS, b"s200-again"))
    stored = await backend.raw.fetch(
        "SELECT snapshot_ser_id, snapshot_ser_manifest, meta_payload FROM state_snapshot "
        "WHERE sequence_number = 200"
    )
    assert stored == [(SERIALIZER_ID, "chief_of_state.v1.StateWrapper", None)]


async def test_deleted_events_take_their_event_tag_rows_with_them(backend: Backend, journal: Journal) -> None:
    await append_ok(journal, request("old", 0, count=5), request("neighbour", 0, count=2))

    assert await journal.delete_events_up_to("old", 3) == 2

    tagged = await backend.raw.fetch(
        "SELECT j.sequence_number FROM event_tag t JOIN event_journal j ON j.ordering = t.event_id "
        "WHERE j.persistence_id = 'old' ORDER BY 1"
    )
    assert tagged == [(3,), (4,), (5,)]
    assert await backend.raw.fetch("SELECT count(*) FROM event_tag") == [(5,)]  # 3 of "old", 2 of "neighbour"

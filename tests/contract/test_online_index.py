"""The projection index on event_tag is built without stopping appends (PostgreSQL only: stores/postgres/
online_indexes.py). An upstream database of many millions of rows is taken over in place, with upstream's
nodes or this project's still writing while `cos migrate` builds it."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.contract.conftest import NUM_SHARDS, Target, opened_backend, sql_target

pytestmark = pytest.mark.postgres

INDEX = "cos_event_tag_by_tag_idx"


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: object) -> Target:
    return sql_target("postgres", request, tmp_path)  # type: ignore[arg-type]


async def _index_state(connection: asyncpg.Connection) -> bool | None:
    value = await connection.fetchval(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1",
        INDEX,
    )
    return None if value is None else bool(value)


async def _insert_event(connection: asyncpg.Connection, entity: str) -> None:
    await connection.execute(
        "WITH e AS (INSERT INTO event_journal (persistence_id, sequence_number, deleted, writer, "
        "write_timestamp, adapter_manifest, event_ser_id, event_ser_manifest, event_payload) "
        "VALUES ($1, 1, false, 'w', 1, '', 2, 'm', '\\x00') RETURNING ordering) "
        "INSERT INTO event_tag (event_id, tag) SELECT ordering, 'chiefofstate0' FROM e",
        entity,
    )


async def test_appends_go_on_while_the_index_is_built(target: Target) -> None:
    async with opened_backend(target) as backend:
        journal = await backend.migrated()
        raw = backend.raw.connection  # type: ignore[attr-defined]
        await raw.execute(f"DROP INDEX {INDEX}")
        await journal.close()
        backend.opened.clear()

        # A writer's transaction stays open: a concurrent build waits for it to end before it finishes,
        # which holds the build in progress for as long as the test needs.
        async with raw.transaction():
            await _insert_event(raw, "held-open")
            migrating = asyncio.create_task(backend.migrated())
            assert backend.pg_settings is not None
            other = await asyncpg.connect(
                host=backend.pg_settings.host,
                port=backend.pg_settings.port,
                user=backend.pg_settings.user,
                password=backend.pg_settings.password or None,
                database=backend.pg_settings.database,
            )
            try:
                for _ in range(600):  # up to 60 s on a busy machine
                    if await _index_state(other) is not None:
                        break
                    await asyncio.sleep(0.1)
                assert await _index_state(other) is False, "the build should be under way, not yet valid"
                # A plain CREATE INDEX would hold this insert until the open transaction ended.
                await asyncio.wait_for(_insert_event(other, "during-the-build"), timeout=30)
                assert not migrating.done()
            finally:
                await other.close()
        await asyncio.wait_for(migrating, timeout=120)
        assert await _index_state(raw) is True
        rows = await raw.fetch("SELECT persistence_id FROM event_journal ORDER BY ordering")
        assert [row[0] for row in rows] == ["held-open", "during-the-build"]


async def test_an_index_left_invalid_by_an_interrupted_build_is_built_again(target: Target) -> None:
    async with opened_backend(target) as backend:
        await backend.migrated()
        raw = backend.raw.connection  # type: ignore[attr-defined]
        # What a build cut short (a node killed, a statement cancelled) leaves behind.
        await raw.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = $1::regclass", INDEX)
        assert await _index_state(raw) is False
        journal = await backend.open()
        await journal.migrate(NUM_SHARDS)
        assert await _index_state(raw) is True

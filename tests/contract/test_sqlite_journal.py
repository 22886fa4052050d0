"""What only the embedded store has to show: file settings, several processes on one file, cancellation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chiefofstate.core.errors import StoreUnavailable
from chiefofstate.core.sharding import shard_of
from chiefofstate.ports.journal import AppendRequest
from chiefofstate.stores.sqlite.journal import SqliteJournal
from tests.contract.conftest import LATEST_VERSION


def request(entity_id: str, expected: int) -> AppendRequest:
    return AppendRequest(entity_id, shard_of(entity_id, 8), expected, [b"event"], 1, "w")


async def test_the_file_is_durable_and_shared(tmp_path: Path) -> None:
    journal = await SqliteJournal.open(tmp_path / "cos.db")
    try:
        await journal.migrate(8)
        connection = journal._datastore._connection  # white-box: the pragmas are the point of this test
        assert list(await connection.execute_fetchall("PRAGMA journal_mode")) == [("wal",)]
        assert list(await connection.execute_fetchall("PRAGMA synchronous")) == [(2,)]  # FULL
        assert list(await connection.execute_fetchall("PRAGMA foreign_keys")) == [(1,)]
    finally:
        await journal.close()


async def test_an_unopenable_file_is_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="cannot open the SQLite journal"):
        await SqliteJournal.open(tmp_path / "missing-folder" / "cos.db")


async def test_journals_on_one_file_migrate_once(tmp_path: Path) -> None:
    journals = [await SqliteJournal.open(tmp_path / "cos.db") for _ in range(3)]
    try:
        assert await asyncio.gather(*(journal.migrate(8) for journal in journals)) == [LATEST_VERSION] * 3
        connection = journals[0]._datastore._connection
        rows = await connection.execute_fetchall("SELECT version_number FROM cos_migrations ORDER BY 1")
        assert [row[0] for row in rows] == list(range(6, LATEST_VERSION + 1))
    finally:
        for journal in journals:
            await journal.close()


async def test_a_cancelled_operation_leaves_the_connection_usable(tmp_path: Path) -> None:
    journal = await SqliteJournal.open(tmp_path / "cos.db")
    try:
        await journal.migrate(8)
        for steps in range(6):
            task = asyncio.create_task(journal.append_batch([request(f"cancelled-{steps}", 0)]))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await journal.append_batch([request("after", 0)]) == [None]
        await journal.delete_events_up_to("after", 1)
        assert len(await journal.read_events("after")) == 1
    finally:
        await journal.close()


async def test_read_sides_read_committed_events_while_an_append_holds_the_journal(tmp_path: Path) -> None:
    # A projection's read must not queue behind the group commit in progress, or a read side's lag
    # follows the write load.
    journal = await SqliteJournal.open(tmp_path / "cos.db")
    try:
        await journal.migrate(8)
        assert await journal.append_batch([request("committed", 0)]) == [None]
        shard = shard_of("committed", 8)
        release = asyncio.Event()
        inside = asyncio.Event()

        async def hold_the_journal() -> None:
            # white-box: the journal's connection held in a write transaction, as a group commit holds it
            async with journal._datastore.transaction("hold the journal"):
                inside.set()
                await release.wait()

        holder = asyncio.create_task(hold_the_journal())
        await asyncio.wait_for(inside.wait(), 30)
        try:
            rows = await asyncio.wait_for(journal.read_shard(shard, 0, 10), 30)
            progress = await asyncio.wait_for(journal.shard_progress(shard, 0, 10), 30)
        finally:
            release.set()
            await holder
        assert [row.entity_id for row in rows] == ["committed"]
        assert progress.head == rows[0].ordering
    finally:
        await journal.close()

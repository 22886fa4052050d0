"""One journal and one offset store per adapter, so every contract test runs unchanged on every store.

`journal` is a migrated journal on SQLite, PostgreSQL and in memory: what the port promises. `backend` is
an empty SQL database (SQLite, PostgreSQL) plus a way to open journals on it and a raw connection for
inspecting the catalog or planting rows the journal would never write: the schema's tests use it, and the
in-memory store has no schema. `opened_stores` is the same for offset stores.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg
import pytest

from chiefofstate.ports.journal import Journal
from chiefofstate.ports.offsets import OffsetStore
from chiefofstate.stores.memory.journal import MemoryJournal
from chiefofstate.stores.memory.offsets import MemoryOffsetStore
from chiefofstate.stores.migrations import load_scripts
from chiefofstate.stores.postgres.datastore import ConnectionSettings
from chiefofstate.stores.postgres.journal import PostgresJournal
from chiefofstate.stores.postgres.offsets import PostgresOffsetStore
from chiefofstate.stores.sqlite.journal import SqliteJournal
from chiefofstate.stores.sqlite.offsets import SqliteOffsetStore
from tests.support.postgres import PgServer

NUM_SHARDS = 8
# Later work adds versions after 7; tests name the versions they are about and expect the rest to follow.
LATEST_VERSION = load_scripts("postgres").latest_version
ADDITIVE_AFTER_7 = [(version, False) for version in range(8, LATEST_VERSION + 1)]

SQL_STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
STORES = [*SQL_STORES, "memory"]


class RawDatabase(Protocol):
    """Direct access to the journal's database. SQL uses $1, $2 … placeholders on both stores."""

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    async def tables(self) -> set[str]: ...

    async def columns(self, table: str) -> dict[str, tuple[str, bool]]:
        """column name → (declared type, nullable)."""
        ...

    async def indexes(self, table: str) -> set[str]: ...

    async def foreign_keys(self, table: str) -> set[tuple[str, str, str, str]]:
        """(column, referenced table, referenced column, ON DELETE rule)."""
        ...

    async def close(self) -> None: ...


class SqliteRaw:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    @classmethod
    async def open(cls, path: Path) -> SqliteRaw:
        connection = await aiosqlite.connect(path, isolation_level=None)
        await connection.execute("PRAGMA foreign_keys = ON")
        await connection.execute("PRAGMA busy_timeout = 5000")
        return cls(connection)

    @staticmethod
    def _sql(sql: str) -> str:
        return re.sub(r"\$(\d+)", r"?\1", sql)

    async def execute(self, sql: str, *args: Any) -> None:
        if args:
            await self._connection.execute(self._sql(sql), args)
        else:
            await self._connection.executescript(sql)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._connection.execute_fetchall(self._sql(sql), args)]

    async def tables(self) -> set[str]:
        rows = await self.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}

    async def columns(self, table: str) -> dict[str, tuple[str, bool]]:
        rows = await self.fetch(f"PRAGMA table_info({table})")
        # (cid, name, type, notnull, default, pk); SQLite lets key columns be NULL unless declared otherwise
        return {
            row[1]: (row[2].upper(), not row[3] and not (row[5] and row[2].upper() == "INTEGER"))
            for row in rows
        }

    async def indexes(self, table: str) -> set[str]:
        return {row[1] for row in await self.fetch(f"PRAGMA index_list({table})")}

    async def foreign_keys(self, table: str) -> set[tuple[str, str, str, str]]:
        rows = await self.fetch(f"PRAGMA foreign_key_list({table})")
        # (id, seq, table, from, to, on_update, on_delete, match)
        return {(row[3], row[2], row[4], row[6]) for row in rows}

    async def close(self) -> None:
        await self._connection.close()


class PostgresRaw:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    @classmethod
    async def open(cls, dsn: str) -> PostgresRaw:
        return cls(await asyncpg.connect(dsn))

    @property
    def connection(self) -> asyncpg.Connection:
        return self._connection

    async def execute(self, sql: str, *args: Any) -> None:
        await self._connection.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(record) for record in await self._connection.fetch(sql, *args)]

    async def tables(self) -> set[str]:
        rows = await self.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        return {name for (name,) in rows}

    async def columns(self, table: str) -> dict[str, tuple[str, bool]]:
        rows = await self.fetch(
            "SELECT column_name, data_type, character_maximum_length, is_nullable "
            "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1",
            table,
        )
        names = {
            "character varying": "VARCHAR",
            "bigint": "BIGINT",
            "integer": "INTEGER",
            "boolean": "BOOLEAN",
            "bytea": "BYTEA",
            "text": "TEXT",
            "timestamp with time zone": "TIMESTAMPTZ",
        }
        return {
            name: (names[kind] + (f"({length})" if length else ""), nullable == "YES")
            for name, kind, length, nullable in rows
        }

    async def indexes(self, table: str) -> set[str]:
        rows = await self.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1", table
        )
        return {name for (name,) in rows}

    async def foreign_keys(self, table: str) -> set[tuple[str, str, str, str]]:
        # pg_catalog rather than information_schema: the key references a unique index, not a constraint,
        # which information_schema does not show.
        rows = await self.fetch(
            """
            SELECT a.attname, r.relname, ra.attname,
                   CASE c.confdeltype WHEN 'c' THEN 'CASCADE' ELSE c.confdeltype::text END
            FROM pg_constraint c
            JOIN pg_class t ON t.oid = c.conrelid
            JOIN pg_class r ON r.oid = c.confrelid
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
            JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = c.confkey[1]
            WHERE c.contype = 'f' AND t.relname = $1
            """,
            table,
        )
        return {(row[0], row[1], row[2], row[3]) for row in rows}

    async def close(self) -> None:
        await self._connection.close()


@dataclass
class Backend:
    kind: str
    raw: RawDatabase
    opener: Callable[..., Awaitable[Journal]]
    pg_settings: ConnectionSettings | None = None
    opened: list[Journal] = field(default_factory=list)

    async def open(self, **options: Any) -> Journal:
        """An unmigrated journal on this database (closed by the fixture)."""
        journal = await self.opener(**options)
        self.opened.append(journal)
        return journal

    async def migrated(self, **options: Any) -> Journal:
        journal = await self.open(**options)
        await journal.migrate(NUM_SHARDS)
        return journal


@dataclass(frozen=True)
class Target:
    kind: str
    sqlite_path: Path | None = None
    pg: tuple[PgServer, str] | None = None


def sql_target(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if kind == "sqlite":
        return Target("sqlite", sqlite_path=tmp_path / "journal.db")
    return Target("postgres", pg=request.getfixturevalue("pg_database"))


@contextlib.asynccontextmanager
async def opened_backend(target: Target) -> AsyncIterator[Backend]:
    if target.sqlite_path is not None:
        path = target.sqlite_path

        async def open_sqlite(**options: Any) -> Journal:
            return await SqliteJournal.open(path, **options)

        result = Backend("sqlite", await SqliteRaw.open(path), open_sqlite)
    else:
        assert target.pg is not None
        server, database = target.pg
        settings = ConnectionSettings(
            host=server.host,
            port=server.port,
            database=database,
            user=server.user,
            password=server.password,
            pool_max_size=4,
        )

        async def open_postgres(**options: Any) -> Journal:
            return await PostgresJournal.open(settings, **options)

        result = Backend("postgres", await PostgresRaw.open(server.dsn(database)), open_postgres, settings)
    try:
        yield result
    finally:
        for journal in result.opened:
            await journal.close()
        await result.raw.close()


@pytest.fixture(params=SQL_STORES)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return sql_target(request.param, request, tmp_path)


@pytest.fixture
async def backend(target: Target) -> AsyncIterator[Backend]:
    async with opened_backend(target) as result:
        yield result


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def journal(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    if store_kind == "memory":
        memory = MemoryJournal()
        await memory.migrate(NUM_SHARDS)
        try:
            yield memory
        finally:
            await memory.close()
        return
    async with opened_backend(sql_target(store_kind, request, tmp_path)) as sql:
        yield await sql.migrated()


# ----------------------------------------------------------------------------------------- offset stores

OFFSET_SHARDS = 4
OFFSETS_NOW = 1_700_000_000.0


@dataclass
class Stores:
    """An offset store; on SQL, with the journal that migrated its schema and a raw connection."""

    kind: str
    offsets: OffsetStore
    journal: Journal | None = None
    raw: Any = None  # aiosqlite.Connection or asyncpg.Connection

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            rows = await self.raw.execute_fetchall(re.sub(r"\$(\d+)", r"?\1", sql), args)
            return [tuple(row) for row in rows]
        return [tuple(row) for row in await self.raw.fetch(sql, *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        if self.kind == "sqlite":
            await self.raw.execute(re.sub(r"\$(\d+)", r"?\1", sql), args)
        else:
            await self.raw.execute(sql, *args)


@contextlib.asynccontextmanager
async def opened_stores(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    if kind == "memory":
        memory = MemoryOffsetStore()
        try:
            yield Stores(kind, memory)
        finally:
            await memory.close()
        return
    clock = lambda: OFFSETS_NOW  # noqa: E731
    if kind == "sqlite":
        path = tmp_path / "cos.db"
        journal: Journal = await SqliteJournal.open(path)
        await journal.migrate(OFFSET_SHARDS)
        offsets: OffsetStore = await SqliteOffsetStore.open(path, clock=clock)
        raw: Any = await aiosqlite.connect(path, isolation_level=None)
    else:
        server, database = request.getfixturevalue("pg_database")
        settings = ConnectionSettings(
            host=server.host,
            port=server.port,
            database=database,
            user=server.user,
            password=server.password,
            pool_max_size=2,
        )
        journal = await PostgresJournal.open(settings)
        await journal.migrate(OFFSET_SHARDS)
        offsets = await PostgresOffsetStore.open(settings, clock=clock)
        raw = await asyncpg.connect(server.dsn(database))
    try:
        yield Stores(kind, offsets, journal, raw)
    finally:
        await offsets.close()
        await journal.close()
        await raw.close()

"""One SQLite file as every adapter of this folder sees it: opening it with the pragmas the guarantees
need, one operation at a time on its connection, and the one place where sqlite3's failures become the
node's errors.

The journal (one for appends and entity reads, one for the read sides' shard reads) and the offset
store each open their own datastore (their own connection) on the same file, so shard reads, offset
writes and status queries never queue behind appends; WAL lets them all work on the file, and SQLite's
busy timeout orders the writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator

import aiosqlite

from chiefofstate.core.errors import StoreFailed, StoreFull, StoreUnavailable

# Primary SQLite result codes that mean the file cannot serve us now (busy, locked, out of memory,
# read-only, I/O error, corrupt, disk full, cannot open, lock protocol, not a database), as opposed to a
# statement that is wrong. Every adapter classifies by these codes, never by exception class: sqlite3
# raises OperationalError for a syntax error too, and that is a refusal, not an outage.
UNAVAILABLE_RESULT_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})
SQLITE_FULL = 13
DEFAULT_BUSY_TIMEOUT_MS = 5000


def _probe_file(name: str) -> None:
    sqlite3.connect(name).close()


def is_unavailable(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in UNAVAILABLE_RESULT_CODES
    # Errors raised by the module itself (a closed connection, a misuse) carry no result code.
    return isinstance(error, sqlite3.OperationalError)


@contextlib.asynccontextmanager
async def write_transaction(connection: aiosqlite.Connection) -> AsyncIterator[None]:
    # IMMEDIATE takes the write lock up front, so the transaction cannot fail half-way for want of it.
    try:
        # Inside the try: a caller cancelled while BEGIN is queued must still roll it back.
        await connection.execute("BEGIN IMMEDIATE")
        yield
        await connection.execute("COMMIT")
    except BaseException:
        # The connection's worker runs statements in order, so this ROLLBACK follows whatever the failed
        # or cancelled body had queued, even when we are cancelled while waiting for it.
        with contextlib.suppress(sqlite3.Error):
            await connection.execute("ROLLBACK")
        raise


class SqliteDatastore:
    """One connection to one file, used by one operation at a time (an asyncio lock), so no operation
    ever sees another's uncommitted rows. Build it with `await SqliteDatastore.open(path, role=...)`."""

    def __init__(self, connection: aiosqlite.Connection, path: str, role: str) -> None:
        self._connection = connection
        self.path = path
        self._role = role  # "journal", "offset store": named in errors so the operator knows which
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, role: str, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
    ) -> SqliteDatastore:
        """Open (or create) the file; raises StoreUnavailable when it cannot be opened."""
        name = os.fspath(path)
        try:
            # aiosqlite stops its worker thread without waiting when the file cannot be opened, and that
            # thread may then report to an event loop already closed; a probe on a thread we await keeps
            # the common failures (missing folder, no permission) out of aiosqlite.
            await asyncio.to_thread(_probe_file, name)
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), never the sqlite3 module's.
            connection = await aiosqlite.connect(name, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open the SQLite {role} {name}: {exc}") from exc
        try:
            # WAL lets readers in other processes (the CLI) work beside the node; FULL makes every
            # acknowledged commit survive a power cut, as "acknowledged ⇒ durable" requires
            # (docs/contract.md §3.14).
            await connection.execute("PRAGMA journal_mode = WAL")
            await connection.execute("PRAGMA synchronous = FULL")
            await connection.execute("PRAGMA foreign_keys = ON")
            await connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        except (sqlite3.Error, OSError) as exc:
            await connection.close()
            raise StoreUnavailable(f"cannot use the SQLite {role} {name}: {exc}") from exc
        return cls(connection, name, role)

    @property
    def description(self) -> str:
        return f"SQLite {self.path}"

    @contextlib.contextmanager
    def translated(self, action: str) -> Iterator[None]:
        """Turn sqlite3's exceptions into ours, so none leaks above the stores."""
        try:
            yield
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == SQLITE_FULL:
                raise StoreFull(f"the SQLite {self._role} {self.path} could not {action}: {exc}") from exc
            if is_unavailable(exc):
                raise StoreUnavailable(
                    f"the SQLite {self._role} {self.path} could not {action}: {exc}"
                ) from exc
            raise StoreFailed(f"the SQLite {self._role} refused to {action}: {exc}") from exc
        except OSError as exc:
            raise StoreUnavailable(f"the SQLite {self._role} {self.path} could not {action}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def session(self, action: str) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, alone, for one operation; failures come out translated."""
        async with self._lock:
            if self._closed:
                raise StoreUnavailable(f"the SQLite {self._role} {self.path} is closed")
            with self.translated(action):
                yield self._connection

    @contextlib.asynccontextmanager
    async def transaction(self, action: str) -> AsyncIterator[aiosqlite.Connection]:
        """`session` inside one write transaction."""
        async with self.session(action) as connection, write_transaction(connection):
            yield connection

    async def close(self) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            with self.translated("close"):
                await self._connection.close()

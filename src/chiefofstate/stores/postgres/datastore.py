"""One PostgreSQL database as every adapter of this folder sees it: connection settings, a pool, and the
one place where asyncpg's and the socket's failures become the node's errors.

The journal and the offset store each open their own datastore (their own pool), as upstream keeps a
read-side pool apart from the journal's (docs/contract.md §4.1): a slow read handler or a status query
never takes a connection an append needs. Both translate failures by the same rules, so a lost database
looks the same to every caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from chiefofstate.config.settings import DatabaseSettings
from chiefofstate.core.errors import StoreFailed, StoreUnavailable

# SQLSTATE classes that mean "the database cannot serve us right now", not "the request is wrong":
# connection exception, invalid authorization, invalid catalog (database missing), transaction rollback
# (serialization failure, deadlock), insufficient resources, operator intervention (shutdown), system error.
UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "28", "3D", "40", "53", "57", "58"})
_CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What one pool needs: where the database is, who we are, and how the pool behaves (COS_DB_*)."""

    host: str = "localhost"
    port: int = 5432
    database: str = "postgres"
    user: str = "postgres"
    password: str = ""
    schema: str = "public"
    pool_max_size: int = 5
    pool_min_size: int = 1
    idle_timeout_ms: int = 60_000
    max_lifetime_ms: int = 120_000
    connect_timeout_s: float = 10.0
    statement_timeout_s: float = 30.0
    acquire_timeout_s: float = 10.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}/{self.database}"


def is_unavailable(error: BaseException) -> bool:
    """Whether the failure means "the database cannot serve us now" rather than "this request's data is
    wrong": the same classification as `PostgresDatastore.translated`."""
    if isinstance(error, asyncpg.PostgresError):
        return str(error.sqlstate)[:2] in UNAVAILABLE_SQLSTATE_CLASSES
    if isinstance(error, asyncpg.InterfaceError):
        return not isinstance(error, ValueError)
    return isinstance(error, OSError)


def connection_settings(config: DatabaseSettings, *, pool_min_size: int | None = None) -> ConnectionSettings:
    """The COS_DB_* settings as a pool takes them; `pool_min_size` overrides the configured minimum (the
    read-side pool keeps fewer idle connections than the journal's)."""
    return ConnectionSettings(
        host=config.host,
        port=config.port,
        database=config.database,
        user=config.user,
        password=config.password,
        schema=config.schema,
        pool_max_size=config.pool_max_size,
        pool_min_size=config.pool_min_idle if pool_min_size is None else pool_min_size,
        idle_timeout_ms=int(config.pool_idle_timeout_s * 1000),
        max_lifetime_ms=int(config.pool_max_lifetime_s * 1000),
        connect_timeout_s=config.connect_timeout_s,
    )


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


IDLE_IN_TRANSACTION_TIMEOUT_MS = 5000


class _AgedConnection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg has no maximum connection lifetime; connections remember when they were opened so the
    datastore can retire them (COS_DB_POOL_MAX_LIFETIME_MS), as upstream's HikariCP pool does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened_at = time.monotonic()


async def _keep_session_state(connection: Any) -> None:
    """Skip asyncpg's reset query on release: it costs a round trip per operation, and no adapter changes
    session state (no SET, no LISTEN on pooled connections, only transaction-scoped advisory locks).
    asyncpg still rolls back any transaction left open before the connection returns to the pool."""


class PostgresDatastore:
    """A pool on one database. Build it with `await PostgresDatastore.open(settings, purpose=...)`."""

    def __init__(self, pool: Any, settings: ConnectionSettings, *, max_kept: int = 0) -> None:
        self._pool = pool
        self.settings = settings
        # Connections kept between the calls of one-at-a-time callers (see kept_connection); never all of
        # the pool, so that everything else still gets one.
        self._kept: list[Any] = []
        self._max_kept = max(0, min(max_kept, settings.pool_max_size - 1))
        self._closing = False

    @classmethod
    async def open(
        cls, settings: ConnectionSettings, *, application_name: str, max_kept: int = 0
    ) -> PostgresDatastore:
        """Connect the pool; raises StoreUnavailable when the server cannot be reached or refuses us."""
        try:
            pool = await asyncpg.create_pool(
                host=settings.host,
                port=settings.port,
                database=settings.database,
                user=settings.user,
                password=settings.password,
                min_size=min(settings.pool_min_size, settings.pool_max_size),
                max_size=settings.pool_max_size,
                max_inactive_connection_lifetime=settings.idle_timeout_ms / 1000,
                timeout=settings.connect_timeout_s,
                command_timeout=settings.statement_timeout_s,
                # Upstream selects COS_DB_SCHEMA as the connection's current schema (docs/contract.md §4.1).
                server_settings={
                    "search_path": quote_identifier(settings.schema),
                    "application_name": application_name,
                    # A member paused or cut off in the middle of a transaction (an offset commit holds
                    # its projection lease row share-locked) would keep its locks until its connection
                    # died, and other members' lease acquisitions and renewals would wait on them. The
                    # node's transactions never wait on anything between their statements.
                    "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS),
                },
                connection_class=_AgedConnection,
                reset=_keep_session_state,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {settings.address}: {exc}") from exc
        return cls(pool, settings, max_kept=max_kept)

    @property
    def description(self) -> str:
        return f"PostgreSQL {self.settings.address} (schema {self.settings.schema})"

    @contextlib.contextmanager
    def translated(self, action: str) -> Iterator[None]:
        """Turn asyncpg's and the socket's exceptions into ours, so none leaks above the stores."""
        address = self.settings.address
        try:
            yield
        except asyncpg.PostgresError as exc:
            if str(exc.sqlstate)[:2] in UNAVAILABLE_SQLSTATE_CLASSES:
                raise StoreUnavailable(f"PostgreSQL at {address} could not {action}: {exc}") from exc
            raise StoreFailed(f"PostgreSQL refused to {action}: {exc}") from exc
        except asyncpg.InterfaceError as exc:
            if isinstance(exc, ValueError):  # a value the driver cannot encode: our bug, not an outage
                raise StoreFailed(f"cannot {action}: {exc}") from exc
            raise StoreUnavailable(f"PostgreSQL at {address} is unavailable ({action}): {exc}") from exc
        except OSError as exc:  # includes TimeoutError and refused or reset connections
            raise StoreUnavailable(f"PostgreSQL at {address} is unavailable ({action}): {exc!r}") from exc

    def _past_lifetime(self, connection: Any) -> bool:
        try:
            opened_at: float = connection.opened_at  # _AgedConnection
        except AttributeError:
            # The pool's proxy no longer holds a connection (the server ended the session and the pool
            # let it go): nothing is left to age or close.
            return False
        return (time.monotonic() - opened_at) * 1000 > self.settings.max_lifetime_ms

    @contextlib.asynccontextmanager
    async def connection(self, action: str) -> AsyncIterator[Any]:
        """A pooled connection for one operation; failures come out translated."""
        with self.translated(action):
            async with self._pool.acquire(timeout=self.settings.acquire_timeout_s) as connection:
                yield connection
                if self._past_lifetime(connection):
                    # A closed connection goes back to the pool, which opens a fresh one when needed.
                    await connection.close(timeout=_CLOSE_TIMEOUT_S)

    @contextlib.asynccontextmanager
    async def kept_connection(self, action: str) -> AsyncIterator[Any]:
        """A connection kept out of the pool between calls, for the callers that run one call at a time
        and call often (the group-commit writer, the recovery reader): a pool acquire and release cost
        ≈ 35 µs of Python per call, as much as the rest of the batch's client work. A call that fails,
        a connection past COS_DB_POOL_MAX_LIFETIME_MS or a closing datastore returns it to the pool, which
        then replaces a broken one as it would any other."""
        with self.translated(action):
            connection = self._usable_kept_connection()
            if connection is None:
                connection = await self._pool.acquire(timeout=self.settings.acquire_timeout_s)
            kept = False
            try:
                yield connection
                if self._past_lifetime(connection):
                    await connection.close(timeout=_CLOSE_TIMEOUT_S)
                elif not self._closing and len(self._kept) < self._max_kept and not connection.is_closed():
                    self._kept.append(connection)
                    kept = True
            finally:
                if not kept:
                    await self._pool.release(connection)

    def _usable_kept_connection(self) -> Any | None:
        """A kept connection that is still ours and open, or None. A kept connection can die while it
        waits (the server restarts, the network drops it): asyncpg then hands it back to the pool by
        itself, and its proxy refuses every call ("connection has been released back to the pool"),
        so such a connection is dropped here, never used."""
        while self._kept:
            connection = self._kept.pop()
            try:
                if not connection.is_closed():
                    return connection
            except asyncpg.InterfaceError:
                pass  # released back to the pool already: nothing of ours to return
            else:
                # Closed but not yet released: return it, so that the pool replaces it.
                connection.terminate()
        return None

    async def close(self) -> None:
        self._closing = True
        while self._kept:
            await self._pool.release(self._kept.pop())
        try:
            await asyncio.wait_for(self._pool.close(), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            self._pool.terminate()


async def connect_dedicated(settings: ConnectionSettings, *, application_name: str) -> Any:
    """A connection outside any pool, for a session that holds state of its own (LISTEN). Raises the
    driver's exceptions: its one caller reconnects on any of them."""
    return await asyncpg.connect(
        host=settings.host,
        port=settings.port,
        database=settings.database,
        user=settings.user,
        password=settings.password,
        timeout=settings.connect_timeout_s,
        server_settings={"application_name": application_name},
    )

"""Which store the node uses and how it is opened: PostgreSQL when COS_DB_HOST is set, the embedded
SQLite file otherwise (decision D10, docs/contract.md §0). The only module that names the adapters."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack

from chiefofstate.config.settings import Settings, StoreSettings
from chiefofstate.core.errors import StoreUnavailable
from chiefofstate.journal.deciding import DecidingCommands
from chiefofstate.journal.state_reads import CoalescedStateReads
from chiefofstate.ports.cluster import ClusterStore
from chiefofstate.ports.journal import Journal, StateReader
from chiefofstate.ports.offsets import OffsetStore
from chiefofstate.stores.postgres.datastore import ConnectionSettings, connection_settings
from chiefofstate.stores.postgres.wakeups import AppendListener

log = logging.getLogger("chiefofstate.node")

_FIRST_RETRY_DELAY_S = 0.5
_LONGEST_RETRY_DELAY_S = 10.0


async def open_journal(store: StoreSettings) -> Journal:
    initial = store.migrations_initial_version
    if store.postgres is None:
        from chiefofstate.stores.sqlite.journal import SqliteJournal

        return await SqliteJournal.open(store.sqlite_path, migrations_initial_version=initial)
    from chiefofstate.stores.postgres.journal import PostgresJournal

    return await PostgresJournal.open(connection_settings(store.postgres), migrations_initial_version=initial)


async def open_memory_store(settings: Settings) -> Journal:
    """The journal in this process's memory (library mode): nothing to connect to, gone with the process."""
    from chiefofstate.stores.memory.journal import MemoryJournal

    journal = MemoryJournal()
    await journal.migrate(settings.num_shards)
    return journal


def memory_offset_store() -> OffsetStore:
    """Read-side offsets in this process's memory, beside the memory journal (library mode)."""
    from chiefofstate.stores.memory.offsets import MemoryOffsetStore

    return MemoryOffsetStore()


async def open_store(settings: Settings, on_migrated: Callable[[int], None] | None = None) -> Journal:
    """Connect and migrate, retrying a bounded number of times while the database is unreachable;
    `on_migrated` is told the schema version in place."""
    store = settings.store
    retries = store.postgres.startup_retries if store.postgres else 0
    delay = _FIRST_RETRY_DELAY_S
    for attempt in range(retries + 1):
        journal: Journal | None = None
        try:
            journal = await open_journal(store)
            version = await journal.migrate(settings.num_shards)
        except StoreUnavailable as error:
            if journal is not None:
                await journal.close()
            if attempt == retries:
                raise
            log.warning("store unreachable (attempt %d of %d): %s", attempt + 1, retries + 1, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _LONGEST_RETRY_DELAY_S)
            continue
        except BaseException:
            if journal is not None:
                await journal.close()
            raise
        if on_migrated is not None:
            on_migrated(version)
        if store.postgres is None:
            log.warning(
                "JOURNAL STORE: embedded %s (schema version %d); this node runs alone."
                " Set COS_DB_HOST to use PostgreSQL.",
                journal.description,
                version,
            )
        else:
            log.warning("JOURNAL STORE: %s (schema version %d)", journal.description, version)
        return journal
    raise AssertionError("unreachable")


def exclusive_use(store: StoreSettings, purpose: str) -> contextlib.AbstractContextManager[None]:
    """What `cos serve` and `cos migrate` hold while they use the store: on SQLite, the file's lock (one
    node per file, refused with ConfigError while another holds it); nothing on PostgreSQL, where
    several members share the database by design."""
    if store.postgres is not None:
        return contextlib.nullcontext()
    from chiefofstate.stores.sqlite.file_lock import exclusive_use as lock_file

    return lock_file(store.sqlite_path, purpose)


def state_reads(
    store: StoreSettings, journal: Journal, deciding: DecidingCommands, closers: AsyncExitStack
) -> StateReader:
    """Recoveries share round trips on PostgreSQL; SQLite reads in process, where there is none to share."""
    if store.postgres is None:
        return journal
    reads = CoalescedStateReads(journal, deciding)
    closers.push_async_callback(reads.close)
    return reads


def read_side_connection(store: StoreSettings) -> ConnectionSettings | None:
    """The read sides' pool keeps at most one idle connection, fewer than the journal's; None on SQLite."""
    if store.postgres is None:
        return None
    return connection_settings(store.postgres, pool_min_size=min(1, store.postgres.pool_max_size))


def cluster_wakeups(store: StoreSettings, wake: Callable[[], None]) -> AppendListener:
    """LISTEN for other members' lease releases and departures (one connection of its own), calling
    `wake` on each, and once after every (re)connection, since notifications meanwhile are lost."""
    if store.postgres is None:
        raise AssertionError("cluster mode runs on PostgreSQL only")
    from chiefofstate.stores.postgres.cluster import CLUSTER_CHANNEL

    return AppendListener(
        connection_settings(store.postgres),
        lambda _: wake(),
        wake,
        purpose="cluster",
        channel=CLUSTER_CHANNEL,
    )


async def open_cluster_store(store: StoreSettings) -> ClusterStore:
    """Membership and leases on their own small pool: a busy journal never delays a lease renewal."""
    if store.postgres is None:
        raise AssertionError("cluster mode runs on PostgreSQL only")
    from chiefofstate.stores.postgres.cluster import PostgresClusterStore

    return await PostgresClusterStore.open(
        dataclasses.replace(connection_settings(store.postgres), pool_min_size=1, pool_max_size=2)
    )


async def open_offset_store(store: StoreSettings) -> OffsetStore:
    connection = read_side_connection(store)
    if connection is None:
        from chiefofstate.stores.sqlite.offsets import SqliteOffsetStore

        return await SqliteOffsetStore.open(store.sqlite_path)
    from chiefofstate.stores.postgres.offsets import PostgresOffsetStore

    return await PostgresOffsetStore.open(connection)

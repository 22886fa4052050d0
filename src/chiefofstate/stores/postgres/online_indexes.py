"""Indexes built after the versioned migrations, without blocking writes (docs/migrating-from-upstream.md).

A plain `CREATE INDEX` holds a lock that stops every insert into the table until the build ends: on an
upstream journal of many millions of rows, minutes of refused appends. These indexes are built with
`CREATE INDEX CONCURRENTLY` instead, which lets inserts go on while it reads the table. It cannot run
inside a transaction, so it is not a versioned script: after the scripts, `cos migrate` and every
booting node check each index here and build what is missing.

Only one process builds at a time, under a session advisory lock taken with a *try*: a node that finds
another one building goes on without waiting (the index only speeds up reads). Waiting would deadlock,
because a concurrent build itself waits for every transaction open when it began to end.
"""

from __future__ import annotations

import logging
import time
from typing import Any

_LOG = logging.getLogger("chiefofstate.migrations")

# pg_try_advisory_lock key of the online index builds ("cos_onix").
_ONLINE_LOCK_KEY = 0x636F735F6F6E6978

# (index, table, definition after "ON"): projections read "tag = s AND event_id > offset ORDER BY
# event_id"; upstream's primary key leads with event_id, so without this a replay scans every shard's rows.
ONLINE_INDEXES: tuple[tuple[str, str, str], ...] = (
    ("cos_event_tag_by_tag_idx", "event_tag", "event_tag (tag, event_id)"),
)

# current_schema() is matched by name: a cast to regnamespace would parse it as an identifier, which a
# schema such as "Cos Schema" is not without quotes.
_STATE = """
SELECT i.indisvalid
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = $1 AND n.nspname = current_schema()
"""
_ROWS = """
SELECT greatest(c.reltuples, 0)::bigint
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = $1 AND n.nspname = current_schema()
"""


async def build_online_indexes(connection: Any, *, statement_timeout_s: float) -> list[str]:
    """Builds every missing or invalid online index on `connection` (outside any transaction); returns
    the names built. Returns at once, building nothing, while another process holds the build lock."""
    missing = [entry for entry in ONLINE_INDEXES if await _state(connection, entry[0]) is not True]
    if not missing:
        return []
    if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", _ONLINE_LOCK_KEY):
        _LOG.info("another process is building %s; this node goes on without waiting", missing[0][0])
        return []
    built: list[str] = []
    try:
        for name, table, definition in missing:
            state = await _state(connection, name)
            if state is True:
                continue
            if state is False:
                # A concurrent build that was interrupted leaves an invalid index behind, which
                # IF NOT EXISTS would keep forever: drop it and build again.
                await connection.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            rows = await connection.fetchval(_ROWS, table)
            _LOG.warning(
                "building index %s on about %s rows of %s, without blocking writes", name, rows, table
            )
            started = time.monotonic()
            await connection.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {definition}",
                timeout=statement_timeout_s,
            )
            _LOG.warning("built index %s in %.1fs", name, time.monotonic() - started)
            built.append(name)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _ONLINE_LOCK_KEY)
    return built


async def _state(connection: Any, name: str) -> bool | None:
    """True: valid; False: left invalid by an interrupted build; None: absent."""
    value = await connection.fetchval(_STATE, name)
    return None if value is None else bool(value)

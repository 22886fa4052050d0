"""Reading what the journal holds for one entity, for `cos events` and `cos state`.

Read-only: a SQLite file that does not exist is reported, never created, and a store without the
journal's tables is named in the error (docs/cli.md, "Commands").
"""

from __future__ import annotations

from typing import Any

from chiefofstate.config.settings import Settings, StoreSettings
from chiefofstate.core.errors import CosError
from chiefofstate.entities.recovery import state_from_stored
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.inspect.decoding import any_view, meta_view
from chiefofstate.inspect.descriptors import MessageTypes
from chiefofstate.ports.journal import Journal

JsonObject = dict[str, Any]


class NothingStored(Exception):
    """The store the settings name holds no journal; the text names it and the setting."""


def _where(store: StoreSettings) -> str:
    if store.postgres is None:
        return f"the SQLite file {store.sqlite_path} (COS_DB_PATH)"
    database = store.postgres
    return f"PostgreSQL database {database.database} on {database.host}:{database.port} (COS_DB_*)"


async def _open(store: StoreSettings) -> Journal:
    from chiefofstate.node.stores import open_journal

    if store.postgres is None and not store.sqlite_path.exists():
        raise NothingStored(f"{_where(store)} does not exist; point COS_DB_PATH at the file the node uses")
    return await open_journal(store)


def _missing_journal(store: StoreSettings, error: Exception) -> NothingStored | None:
    text = str(error).lower()
    if "no such table" in text or "does not exist" in text:
        return NothingStored(
            f"{_where(store)} holds no journal (is it the node's? `cos migrate` creates one)"
        )
    return None


async def read_events(
    settings: Settings, entity_id: str, limit: int, types: MessageTypes
) -> list[JsonObject]:
    journal = await _open(settings.store)
    try:
        rows = await journal.read_events(entity_id, 0, limit)
    except CosError as error:
        raise _missing_journal(settings.store, error) or error from None
    finally:
        await journal.close()
    events: list[JsonObject] = []
    for row in rows:
        wrapper = EventWrapper.FromString(row.payload)
        meta = meta_view(wrapper.meta)
        events.append(
            {
                "entity_id": row.entity_id,
                "revision": row.sequence_number,
                "revision_date": meta["revision_date"],
                "deleted": row.deleted,
                "ordering": row.ordering,
                "shard": row.shard,
                "event": any_view(wrapper.event, types),
                "headers": meta["headers"],
            }
        )
    return events


async def read_state(settings: Settings, entity_id: str, types: MessageTypes) -> JsonObject | None:
    journal = await _open(settings.store)
    try:
        stored = await journal.latest_state(entity_id)
    except CosError as error:
        raise _missing_journal(settings.store, error) or error from None
    finally:
        await journal.close()
    if stored is None:
        return None
    state = state_from_stored(entity_id, stored).decode()
    meta = meta_view(state.meta)
    return {
        "entity_id": entity_id,
        "revision": meta["revision"],
        "revision_date": meta["revision_date"],
        "state": any_view(state.state, types),
        "state_size_bytes": len(state.state.value),
        "read_from": {"kind": stored.kind, "sequence_number": stored.sequence_number},
        "headers": meta["headers"],
    }

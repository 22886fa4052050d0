"""Reading what the journal holds for one entity, for `cos events` and `cos state`."""

from __future__ import annotations

from datetime import UTC

from chiefofstate.config.settings import Settings
from chiefofstate.entities.recovery import state_from_stored
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper


def _date(meta: MetaData) -> str:
    if not meta.HasField("revision_date"):
        return "-"
    moment = meta.revision_date.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _headers(meta: MetaData) -> str:
    shown = []
    for header in meta.headers:
        value = (
            header.string_value if header.WhichOneof("value") == "string_value" else header.bytes_value.hex()
        )
        shown.append(f"{header.key}={value}")
    return ", ".join(shown) or "-"


async def read_events(settings: Settings, entity_id: str, limit: int) -> list[tuple[str, ...]]:
    from chiefofstate.node.stores import open_journal

    journal = await open_journal(settings.store)
    try:
        rows = await journal.read_events(entity_id, 0, limit)
    finally:
        await journal.close()
    table: list[tuple[str, ...]] = []
    for row in rows:
        wrapper = EventWrapper.FromString(row.payload)
        table.append(
            (
                str(row.sequence_number) + (" (deleted)" if row.deleted else ""),
                _date(wrapper.meta),
                wrapper.event.type_url,
                _headers(wrapper.meta),
                str(row.ordering),
                str(row.shard),
            )
        )
    return table


async def read_state(settings: Settings, entity_id: str) -> dict[str, str] | None:
    from chiefofstate.node.stores import open_journal

    journal = await open_journal(settings.store)
    try:
        stored = await journal.latest_state(entity_id)
    finally:
        await journal.close()
    if stored is None:
        return None
    state = state_from_stored(entity_id, stored).decode()
    return {
        "entity id": entity_id,
        "state type": state.state.type_url,
        "revision": str(state.meta.revision_number),
        "revision date": _date(state.meta),
        "state size": f"{len(state.state.value)} bytes",
        "read from": f"{stored.kind} at sequence {stored.sequence_number}",
        "headers": _headers(state.meta),
    }

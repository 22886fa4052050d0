"""Rebuilding an entity's state from storage without calling any handler (docs/contract.md §3.15)."""

from __future__ import annotations

from chiefofstate.core.command_rules import initial_state
from chiefofstate.core.errors import Internal
from chiefofstate.entities.entity import EntityState
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper, StateWrapper
from chiefofstate.ports.journal import StateReader, StoredState


def state_from_stored(entity_id: str, stored: StoredState | None) -> EntityState:
    """Every event row carries its resulting state, so the newest row alone is the current state."""
    if stored is None:
        return EntityState.of_wrapper(initial_state(entity_id))
    try:
        if stored.kind == "snapshot":
            return EntityState.of_wrapper(StateWrapper.FromString(stored.payload))
        event = EventWrapper.FromString(stored.payload)
    except Exception as error:  # protobuf raises DecodeError, a bare Exception subclass
        raise Internal(
            f"cannot decode stored {stored.kind} {entity_id}#{stored.sequence_number}: {error}"
        ) from None
    return EntityState.of(event.resulting_state, event.meta)


async def recover(states: StateReader, entity_id: str) -> EntityState:
    return state_from_stored(entity_id, await states.latest_state(entity_id))

"""One entity in memory: its cached state and the lock that makes its commands run one at a time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from google.protobuf.any_pb2 import Any as AnyProto

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import StateWrapper
from chiefofstate.gen.chief_of_state.v1.service_pb2 import GetStateResponse


@dataclass(frozen=True, slots=True)
class EntityState:
    """An entity's state as the node keeps it: serialized, as the reply that carries it.

    `GetStateResponse` and `ProcessCommandResponse` have the same fields with the same numbers
    (state = 1, meta = 2), so these bytes are the body of either reply and are sent without being
    built or serialized again. As bytes a cached state costs a quarter of the memory of the message
    objects; a command decodes it once (about 2 µs) to hand the prior state to the write handler.
    """

    reply: bytes
    revision: int

    @classmethod
    def of(cls, state: AnyProto, meta: MetaData) -> EntityState:
        return cls(GetStateResponse(state=state, meta=meta).SerializeToString(), meta.revision_number)

    @classmethod
    def of_wrapper(cls, wrapper: StateWrapper) -> EntityState:
        return cls.of(wrapper.state, wrapper.meta)

    def decode(self) -> GetStateResponse:
        return GetStateResponse.FromString(self.reply)


@dataclass(eq=False, slots=True)
class Entity:
    """`asyncio.Lock` wakes waiters first-in first-out, which gives arrival order per entity (§3.2).

    `users` counts callers holding or waiting for the lock; an entity with users is never evicted,
    so two incarnations of one entity can never run side by side on this node. The lock exists only
    while the entity has users: an idle cached entity carries none (the host drops it), which keeps
    the memory of a cache of idle entities small.
    """

    entity_id: str
    shard: int
    state: EntityState | None = None  # None until recovered, and again after a failed append
    writer_id: str = ""  # one per incarnation, drawn at its first append
    lock: asyncio.Lock | None = None
    users: int = 0
    last_used: float = 0.0

    @property
    def idle(self) -> bool:
        return self.users == 0

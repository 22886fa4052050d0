"""One entity in memory: its cached state and the lock that makes its commands run one at a time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import StateWrapper


@dataclass(eq=False, slots=True)
class Entity:
    """`asyncio.Lock` wakes waiters first-in first-out, which gives arrival order per entity (§3.2).

    `users` counts callers holding or waiting for the lock; an entity with users is never evicted,
    so two incarnations of one entity can never run side by side on this node.
    """

    entity_id: str
    shard: int
    state: StateWrapper | None = None  # None until recovered, and again after a failed append
    writer_id: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    last_used: float = 0.0

    @property
    def idle(self) -> bool:
        return self.users == 0

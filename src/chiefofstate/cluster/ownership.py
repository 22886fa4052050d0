"""The leases this member holds, and whether it may act on each one now, by its own monotonic clock.

`ShardOwnership` is the entities' gate in cluster mode (entities/gate.py): a shard is admitted only
while its lease is held, usable (core/leases.py: confirmed renewal + TTL − margin not yet reached) and
not being handed over. The admitted token is the one every append of the shard carries, so the journal
refuses the append if the lease has moved on meanwhile (docs/cluster.md, "Fencing").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from chiefofstate.core.errors import ShardNotHere
from chiefofstate.core.leases import HeldLease, LeaseTiming, granted, is_usable, renewed
from chiefofstate.ports.cluster import LeaseKey


class LeaseBook:
    """Held leases by key; the coordinator writes it, the gates read it."""

    def __init__(self, timing: LeaseTiming, clock: Callable[[], float] = time.monotonic) -> None:
        self.timing = timing
        self._clock = clock
        self._held: dict[LeaseKey, HeldLease] = {}
        self._handing_over: set[LeaseKey] = set()

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def keys(self) -> list[LeaseKey]:
        return list(self._held)

    def held(self) -> list[tuple[LeaseKey, int]]:
        """(key, token) of every lease held, usable or not: what a renewal presents."""
        return [(key, lease.token) for key, lease in self._held.items()]

    def token(self, key: LeaseKey) -> int | None:
        lease = self._held.get(key)
        return None if lease is None else lease.token

    def usable_token(self, key: LeaseKey) -> int | None:
        """The token when the lease may be acted on now; None otherwise."""
        lease = self._held.get(key)
        if lease is None or key in self._handing_over or not is_usable(lease, self._clock()):
            return None
        return lease.token

    def granted(self, key: LeaseKey, token: int, sent_at: float) -> None:
        self._held[key] = granted(str(key), token, sent_at, self.timing)
        self._handing_over.discard(key)

    def renewed(self, keys: Iterable[LeaseKey], sent_at: float) -> None:
        for key in keys:
            lease = self._held.get(key)
            if lease is not None:
                self._held[key] = renewed(lease, sent_at, self.timing)

    def handing_over(self, key: LeaseKey) -> None:
        """Stop admitting work for the key while it is handed to another member."""
        if key in self._held:
            self._handing_over.add(key)

    def dropped(self, key: LeaseKey) -> None:
        """Lost or released: nothing more is admitted under it."""
        self._held.pop(key, None)
        self._handing_over.discard(key)

    def lapsed(self) -> list[LeaseKey]:
        """Leases held whose usable window has passed without a confirmed renewal."""
        now = self._clock()
        return [key for key, lease in self._held.items() if not is_usable(lease, now)]


class ShardGateOfLeases:
    """The entities' gate (entities/gate.py) over the entity-shard leases of a `LeaseBook`."""

    __slots__ = ("_book", "_keys")

    def __init__(self, book: LeaseBook, num_shards: int) -> None:
        self._book = book
        # Keys made once: the gate is asked on every command.
        self._keys = [LeaseKey.entity_shard(shard) for shard in range(num_shards)]

    def admit(self, shard: int) -> int | None:
        token = self._book.usable_token(self._keys[shard])
        if token is None:
            raise ShardNotHere(shard)
        return token

    def serves(self, shard: int, tenure: int | None) -> bool:
        return tenure is not None and self._book.usable_token(self._keys[shard]) == tenure

"""Entity recoveries through the journal's multi-key read: ids asked for while a read is in flight go
together in the next, so recovering many entities (a restart, a shard taken over) costs a few round
trips instead of one per entity (coalescing.py). Under steady load a read from idle waits for company
for a share of the decide time (journal/deciding.py).

For a store whose reads cost no round trip (the embedded SQLite file) the node reads the journal
directly instead: there is nothing to share.
"""

from __future__ import annotations

from chiefofstate.core.errors import StoreUnavailable, copy_for_another_caller
from chiefofstate.journal.coalescing import CoalescingReader
from chiefofstate.journal.deciding import DecidingCommands
from chiefofstate.ports.journal import Journal, StoredState


def _closed() -> Exception:
    return StoreUnavailable("the journal was closed before the state was read")


class CoalescedStateReads:
    """A `StateReader` over `Journal.latest_states`; owns one reader task, `await close()` it."""

    def __init__(self, journal: Journal, deciding: DecidingCommands) -> None:
        self._reader: CoalescingReader[str, StoredState | None | Exception] = CoalescingReader(
            journal.latest_states, stopped=_closed, name="journal-latest-states"
        )
        self._reader.wait_for_company(deciding.read_wait_s)

    async def latest_state(self, entity_id: str) -> StoredState | None:
        answer = await self._reader.get(entity_id)
        if isinstance(answer, Exception):
            # A row that cannot be read fails only the callers of its entity, each with its own copy.
            raise copy_for_another_caller(answer)
        return answer

    async def close(self) -> None:
        await self._reader.close()

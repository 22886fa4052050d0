"""What both in-memory stores share: one lock over their objects, and being open or closed.

Every operation is a plain function run under the lock by `MemoryDatastore.run`, so it cannot await while
it holds the lock: the lock never blocks another task of the event loop, and it keeps each operation
whole for callers on other threads (an embedding application may use one store from several), as the
`eventsourcing` library's POPO recorders keep theirs. No asyncio lock is needed, since nothing inside an
operation suspends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

from chiefofstate.core.errors import StoreUnavailable

Result = TypeVar("Result")


class MemoryDatastore:
    def __init__(self, role: str) -> None:
        self._role = role  # "journal", "offset store": named in errors so the reader knows which
        self._lock = threading.Lock()
        self._closed = False

    @property
    def description(self) -> str:
        return f"in-memory {self._role} (not durable)"

    async def run(self, work: Callable[[], Result]) -> Result:
        """`work()` alone on the store's objects; StoreUnavailable once the store is closed."""
        # Suspend first, as a round trip to a database does: a caller looping over the store (a projection
        # catching up on its shard) still lets other tasks run, and a caller cancelled here has changed
        # nothing, as with a statement that was never sent.
        await asyncio.sleep(0)
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"the {self.description} is closed")
            return work()

    def close(self, forget: Callable[[], None]) -> None:
        """Refuse every later operation and drop what was stored (`forget`), as a process exit would."""
        with self._lock:
            self._closed = True
            forget()

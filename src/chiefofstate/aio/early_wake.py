"""A wait that ends after a time or as soon as someone says it may, whichever comes first.

The group-commit writer and the batched reader wait like this for work to join a round trip: one timer
per wait and a wake-up from whoever completes the batch, with no polling of the event loop meanwhile.
"""

from __future__ import annotations

import asyncio


class EarlyWake:
    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: asyncio.Future[None] | None = None

    @property
    def waiting(self) -> bool:
        return self._waiting is not None

    async def at_most(self, seconds: float) -> None:
        """Wait `seconds` or until `wake()`; one wait at a time."""
        if seconds <= 0:
            return
        if self._waiting is not None:
            raise RuntimeError("already waiting")
        loop = asyncio.get_running_loop()
        waiting = self._waiting = loop.create_future()
        timer = loop.call_later(seconds, _end, waiting)
        try:
            await waiting
        finally:
            timer.cancel()
            self._waiting = None

    def wake(self) -> None:
        if self._waiting is not None:
            _end(self._waiting)


def _end(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)

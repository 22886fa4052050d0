"""The time budget of one command (decision D4): the caller's deadline and COS_COMMAND_HANDLER_TIMEOUT."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from chiefofstate.core.errors import DeadlineExceeded

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Deadline:
    expires_at: float  # on the clock below
    clock: Callable[[], float]

    def remaining(self) -> float:
        return self.expires_at - self.clock()

    def check(self, stage: str) -> float:
        """Seconds left; raises when none are, naming where the command was abandoned."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded(
                f"deadline exceeded {stage}; the command was abandoned and nothing was written"
            )
        return left


async def wait_to_the_end(task: asyncio.Future[T]) -> T:
    """Await work that must finish even if the caller is cancelled (the append of D4).

    A cancelled caller still waits for the outcome, so the entity never starts its next command
    while the append of its previous one is in flight; the cancellation is re-raised afterwards.
    """
    caller_cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            caller_cancelled = True
        except Exception:  # the task's own failure is read from it below
            break
    if caller_cancelled:
        raise asyncio.CancelledError
    return task.result()

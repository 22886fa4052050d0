"""The time budget of one command (decision D4): the caller's deadline and COS_COMMAND_HANDLER_TIMEOUT."""

from __future__ import annotations

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

"""Circuit breaker state machine (docs/contract.md §3.11, §5.5); time is passed in, never read."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from chiefofstate.core.errors import Internal

OPEN_MESSAGE = "Circuit Breaker is open; calls are failing fast"


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    max_failures: int
    call_timeout_s: float
    reset_timeout_s: float


@dataclass
class CircuitBreaker:
    """Opens after `max_failures` consecutive failures; after `reset_timeout_s` lets one trial through."""

    settings: BreakerSettings
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    _trial_in_flight: bool = field(default=False, repr=False)

    def before_call(self, now: float) -> bool:
        """Raise when the call must fail fast; otherwise the caller may go ahead, and True says that its
        call is the half-open trial (which the caller must `record` or `abandon`)."""
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.settings.reset_timeout_s:
                raise Internal(OPEN_MESSAGE)
            self.state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN:
            if self._trial_in_flight:
                raise Internal(OPEN_MESSAGE)
            self._trial_in_flight = True
            return True
        return False

    def abandon(self) -> None:
        """A call cancelled before it finished says nothing about the target's health; the half-open
        trial it may have held is released so that the next call can be the trial."""
        self._trial_in_flight = False

    def record(self, *, succeeded: bool, duration_s: float, now: float) -> None:
        # A call slower than call_timeout counts as a failure even when it returned (§3.11).
        failed = not succeeded or duration_s > self.settings.call_timeout_s
        if failed:
            self.consecutive_failures += 1
            if (
                self.state is BreakerState.HALF_OPEN
                or self.consecutive_failures >= self.settings.max_failures
            ):
                self.state = BreakerState.OPEN
                self.opened_at = now
        else:
            self.consecutive_failures = 0
            self.state = BreakerState.CLOSED
        self._trial_in_flight = False

"""Pure rules of read-side delivery (docs/contract.md §5.5, §5.6, decisions D6 and D7): no I/O, no clock.

Failure policies, the replay schedule, the restart backoff after database errors, the autoStart rule
at boot, and how a projection's progress is summarised for operators.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class FailurePolicy(Enum):
    """What a projection does with an event its read handler keeps failing (docs/contract.md §5.5)."""

    STOP = "STOP"
    SKIP = "SKIP"
    REPLAY_SKIP = "REPLAY_SKIP"
    REPLAY_STOP = "REPLAY_STOP"

    @classmethod
    def parse(cls, text: str) -> FailurePolicy | None:
        """Case-insensitive; empty means STOP, as upstream. None for an unknown name.

        Upstream's runtime also knew `REPLAY-SKIP`, but its validator rejects it, so it never runs.
        """
        cleaned = text.strip().upper()
        if not cleaned:
            return cls.STOP
        return cls.__members__.get(cleaned)


# Upstream hands REPLAY_* to the projection library as "5 retries", i.e. 6 attempts in all (§5.5).
REPLAY_RETRIES = 5


class AfterFailure(Enum):
    RETRY = "retry"
    SKIP = "skip"
    HALT = "halt"


def after_failure(policy: FailurePolicy, attempts_made: int) -> AfterFailure:
    """The next step once `attempts_made` deliveries of one event have all failed."""
    if policy is FailurePolicy.SKIP:
        return AfterFailure.SKIP
    if policy is FailurePolicy.STOP:
        return AfterFailure.HALT
    if attempts_made <= REPLAY_RETRIES:
        return AfterFailure.RETRY
    return AfterFailure.SKIP if policy is FailurePolicy.REPLAY_SKIP else AfterFailure.HALT


def restarts_after_store_errors(policy: FailurePolicy) -> bool:
    """Upstream disables the restart-with-backoff of the projection stream under STOP/REPLAY_STOP."""
    return policy in (FailurePolicy.SKIP, FailurePolicy.REPLAY_SKIP)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with random jitter, as the projection library's restart settings (§5.5)."""

    minimum_s: float = 3.0
    maximum_s: float = 30.0
    jitter: float = 0.2

    def delay(self, restarts_so_far: int, random_unit: float) -> float:
        """Seconds before restart number `restarts_so_far + 1`; `random_unit` is uniform in [0, 1)."""
        base = min(self.maximum_s, self.minimum_s * float(2 ** min(restarts_so_far, 32)))
        return base * (1.0 + self.jitter * random_unit)


class BootAction(Enum):
    PAUSE_ALL = "pause all shards"
    RESUME_ALL = "resume all shards"
    KEEP = "keep the stored pause flags"


def boot_action(auto_start: bool, paused: dict[int, bool], num_shards: int) -> BootAction:
    """§5.6: autoStart=false pauses every shard at each boot; autoStart=true resumes a read side only
    when it is paused on every shard, and leaves a partly paused one as it is."""
    if not auto_start:
        return BootAction.PAUSE_ALL
    if num_shards > 0 and all(paused.get(shard, False) for shard in range(num_shards)):
        return BootAction.RESUME_ALL
    return BootAction.KEEP


class ProjectionState(Enum):
    """What an operator sees for one (read side, shard)."""

    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"  # STOP/REPLAY_STOP gave up on an event; persisted (decision D7)
    STOPPED = "stopped"  # a database error under STOP/REPLAY_STOP; not persisted, as upstream
    RESTARTING = "restarting"  # waiting out the backoff after a database error
    DISABLED = "disabled"  # `enabled: false`
    UNASSIGNED = "unassigned"  # cluster mode: no member runs it right now (its lease is moving)


def projection_state(
    *,
    enabled: bool,
    paused: bool,
    halted: bool,
    stopped: bool,
    restarting: bool,
) -> ProjectionState:
    """Paused wins over halted: a paused projection does nothing, whatever it was doing before."""
    if not enabled:
        return ProjectionState.DISABLED
    if paused:
        return ProjectionState.PAUSED
    if halted:
        return ProjectionState.HALTED
    if stopped:
        return ProjectionState.STOPPED
    if restarting:
        return ProjectionState.RESTARTING
    return ProjectionState.RUNNING


@dataclass(frozen=True, slots=True)
class Lag:
    """How far one projection is behind its shard of the journal."""

    events: int  # events of the shard after the offset, counted up to `capped_at`
    capped: bool

    def __str__(self) -> str:
        return f"{self.events}+" if self.capped else str(self.events)


def lag(pending_counted: int, count_limit: int) -> Lag:
    """`pending_counted` is a count of the shard's events after the offset, stopped at `count_limit`
    so a projection far behind does not make a status query scan the whole shard."""
    return Lag(min(pending_counted, count_limit), pending_counted >= count_limit)


def check_shard(shard: int, num_shards: int) -> str | None:
    """Decision D6: a shard out of range is the caller's mistake; None when it is valid."""
    if 0 <= shard < num_shards:
        return None
    return f"cluster_shard_number must be between 0 and {num_shards - 1} (got {shard})"

"""How long the journal may wait to gather work into one round trip (group commit, batched reads).

Each round trip to the database costs the node and the database a fixed amount of CPU whatever it
carries, so under load fewer, larger batches leave more CPU for commands. Waiting costs latency, so
the waits are sized by how long commands take to decide (HandleCommand and HandleEvent, queueing
included): a bounded share of a command's latency at any load, long when the node is busy and short
when it is not. Reads also wait only when others are arriving often enough to join them.
"""

from __future__ import annotations

# Shares of the average decide time. An append waits for commands still deciding, and the wait ends as
# soon as the last of them has appended; a read cannot know who is coming, so it waits less. Twice the
# decide time was measured against once (benchmarks.node_load, three interleaved pairs each): batches
# of 15-17 instead of 8 at 64 in flight, 3-8 % more hot commands per second and a quarter less database
# CPU per command, and at 4 and 16 in flight more throughput with a lower p50 and p99 too; four times
# gave nothing more.
APPEND_SHARE = 2.0
READ_SHARE = 0.5
MAX_WAIT_S = 0.020
_SMOOTHING = 1 / 32  # moving averages over about the last 32 observations


def no_wait() -> float:
    """The wait of a batcher nobody has told how long it may wait: none."""
    return 0.0


class DecideTime:
    """A moving average of how long commands take to decide, and the waits it allows."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0

    def record(self, seconds: float) -> None:
        self.seconds += (seconds - self.seconds) * _SMOOTHING

    def append_wait_s(self) -> float:
        return min(self.seconds * APPEND_SHARE, MAX_WAIT_S)

    def read_wait_s(self) -> float:
        return min(self.seconds * READ_SHARE, MAX_WAIT_S)


class ArrivalRate:
    """A moving average of the gap between arrivals, as a rate per second."""

    __slots__ = ("_gap_s", "_last")

    def __init__(self) -> None:
        self._gap_s: float | None = None  # until two arrivals have been seen
        self._last: float | None = None

    def arrived(self, now: float) -> None:
        if self._last is not None:
            gap = max(now - self._last, 0.0)
            self._gap_s = gap if self._gap_s is None else self._gap_s + (gap - self._gap_s) * _SMOOTHING
        self._last = now

    @property
    def per_second(self) -> float:
        if self._gap_s is None:
            return 0.0
        return 1.0 / self._gap_s if self._gap_s > 0 else float("inf")

    def worth_waiting(self, wait_s: float) -> bool:
        """Whether at least one more arrival is expected within `wait_s`."""
        return wait_s > 0 and self.per_second * wait_s >= 1.0

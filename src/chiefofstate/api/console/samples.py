"""The overview's charts: a bounded ring of readings of the node's own metrics, and what the rates,
latency quantiles and batch sizes between two readings are. Pure: the sampler (sampler.py) reads the
registry and the clock and hands the figures here."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative counters as read at `at_s` (seconds, any monotonic origin)."""

    at_s: float
    commands: float = 0.0
    errors: float = 0.0
    # (upper bound in seconds, cumulative count) per latency bucket, ascending, +Inf last
    latency_buckets: tuple[tuple[float, float], ...] = ()
    batch_sum: float = 0.0
    batch_count: float = 0.0
    delivered: Mapping[str, float] = field(default_factory=dict)  # by read side


@dataclass(frozen=True, slots=True)
class Interval:
    """What happened between two samples."""

    ended_at_s: float
    commands_per_s: float
    errors_per_s: float
    p50_ms: float | None  # None when no command finished in the interval
    p99_ms: float | None
    batch_size: float | None  # mean commands per group commit; None when nothing was appended
    delivered_per_s: Mapping[str, float]


class SampleRing:
    """The last `capacity` samples; the oldest falls out when a new one comes."""

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError("a ring needs room for two samples to tell a rate")
        self._samples: deque[Sample] = deque(maxlen=capacity)

    @property
    def capacity(self) -> int:
        return self._samples.maxlen or 0

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)

    def samples(self) -> list[Sample]:
        return list(self._samples)

    def intervals(self) -> list[Interval]:
        samples = list(self._samples)
        return [interval(before, after) for before, after in zip(samples, samples[1:], strict=False)]


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of the observations counted in `buckets` (upper bound, count in that bucket and
    below), interpolated linearly inside the bucket it falls in, as Prometheus' histogram_quantile
    does; the +Inf bucket answers its lower bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank:
            if math.isinf(upper_bound):
                return lower_bound
            if count == lower_count:
                return upper_bound
            return lower_bound + (upper_bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = upper_bound, count
    return lower_bound


def interval(before: Sample, after: Sample) -> Interval:
    elapsed = after.at_s - before.at_s
    if elapsed <= 0:
        elapsed = math.inf  # two readings at one instant: no rate to tell
    earlier = dict(before.latency_buckets)
    window = tuple(
        (bound, max(0.0, count - earlier.get(bound, 0.0))) for bound, count in after.latency_buckets
    )
    p50, p99 = quantile(window, 0.5), quantile(window, 0.99)
    appended = after.batch_count - before.batch_count
    return Interval(
        ended_at_s=after.at_s,
        commands_per_s=max(0.0, after.commands - before.commands) / elapsed,
        errors_per_s=max(0.0, after.errors - before.errors) / elapsed,
        p50_ms=p50 * 1000 if p50 is not None else None,
        p99_ms=p99 * 1000 if p99 is not None else None,
        batch_size=(after.batch_sum - before.batch_sum) / appended if appended > 0 else None,
        delivered_per_s={
            read_side: max(0.0, count - before.delivered.get(read_side, 0.0)) / elapsed
            for read_side, count in after.delivered.items()
        },
    )


def sparkline(values: Sequence[float | None], width: int = 240, height: int = 40) -> str:
    """An inline SVG polyline of `values` (None: a gap), scaled to the largest; numbers only, so the
    markup needs no escaping."""
    points: list[list[str]] = [[]]
    top = max((value for value in values if value is not None), default=0.0) or 1.0
    step = width / max(1, len(values) - 1)
    for index, value in enumerate(values):
        if value is None:
            if points[-1]:
                points.append([])
            continue
        x = index * step
        y = height - 2 - (height - 4) * value / top
        points[-1].append(f"{x:.1f},{y:.1f}")
    lines = "".join(
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{" ".join(run)}"/>'
        for run in points
        if run
    )
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img">{lines}</svg>'
    )

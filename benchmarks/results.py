"""Turning the generators' raw windows into medians, and the figures every table shows."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES = (50.0, 99.0, 99.9)


def percentile(sorted_values: Sequence[float], rank: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when there are none)."""
    if not sorted_values:
        return math.nan
    index = max(math.ceil(rank / 100 * len(sorted_values)) - 1, 0)
    return sorted_values[min(index, len(sorted_values) - 1)]


@dataclass(frozen=True)
class CpuShares:
    """CPU seconds per operation (in µs) of each group of processes, over the measured windows."""

    per_op_us: dict[str, float]
    cores: dict[str, float]  # average cores busy per group, including "other" (not ours)


@dataclass
class Cell:
    """One (system, workload, concurrency) measurement: medians over its windows."""

    system: str  # "floor", "echo", "node/postgres", "node/sqlite", ...
    workload: str  # "ProcessCommand new", "ProcessCommand hot", "GetState cached", "GetState cold"
    concurrency: int
    throughput: float  # operations per second
    p50_ms: float
    p99_ms: float
    p999_ms: float
    samples_per_window: int
    errors: dict[str, int]
    exhausted: bool
    cpu: CpuShares | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def summarise(
    system: str,
    workload: str,
    concurrency: int,
    window_s: float,
    generator_results: Sequence[Mapping[str, Any]],
    cpu: CpuShares | None = None,
) -> Cell:
    """Merge the generators' windows (window i of every generator is the same wall-clock interval)."""
    windows = len(generator_results[0]["windows"])
    throughputs: list[float] = []
    per_rank: dict[float, list[float]] = {rank: [] for rank in PERCENTILES}
    errors: dict[str, int] = {}
    samples: list[int] = []
    for index in range(windows):
        parts = [result["windows"][index] for result in generator_results]
        latencies = sorted(value for part in parts for value in part["latencies_us"])
        ok = sum(int(part["ok"]) for part in parts)
        throughputs.append(ok / window_s)
        samples.append(len(latencies))
        for rank in PERCENTILES:
            per_rank[rank].append(percentile(latencies, rank) / 1000)
        for part in parts:
            for code, count in part["errors"].items():
                errors[code] = errors.get(code, 0) + int(count)
    return Cell(
        system=system,
        workload=workload,
        concurrency=concurrency,
        throughput=statistics.median(throughputs),
        p50_ms=statistics.median(per_rank[50.0]),
        p99_ms=statistics.median(per_rank[99.0]),
        p999_ms=statistics.median(per_rank[99.9]),
        samples_per_window=int(statistics.median(samples)),
        errors=errors,
        exhausted=any(bool(result["exhausted"]) for result in generator_results),
        cpu=cpu,
    )

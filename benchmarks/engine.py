"""Measurements: split the concurrency over generators, release them, account the CPU, retry noisy rounds.

A cell (system × workload × concurrency) is measured in `rounds` rounds of warm-up + one window. The
suite interleaves rounds of different systems, so the floor and the node at one concurrency see the
same background load, and every figure is the median over rounds. A round during which the machine
had more than `QuietPolicy.threshold_cores` busy outside the benchmark's processes is measured again
(within a bounded total), so that another job on a shared box does not decide a ratio.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Workload
from benchmarks.processes import GeneratorPool, cpu_seconds, machine_busy_seconds
from benchmarks.results import Cell, CpuShares, summarise

# Workload name → (rpc, entity kind) as the load generator understands them.
WORKLOADS: dict[str, tuple[str, str]] = {
    "ProcessCommand": ("process", "new"),
    "ProcessCommand new": ("process", "new"),
    "ProcessCommand hot": ("process", "hot"),
    "GetState": ("get", "hot"),
    "GetState cached": ("get", "hot"),
    "GetState cold": ("get", "cold"),
}


@dataclass(frozen=True)
class Timing:
    warmup_s: float
    window_s: float
    rounds: int


@dataclass
class Target:
    """A system under test: where to send calls, and which processes do its work (resolved when sampled)."""

    system: str
    addresses: list[str]
    process_groups: Callable[[], dict[str, list[int]]]  # {"server": [...], "handler": [...], ...}


@dataclass
class QuietPolicy:
    """When a round counts as noisy, and how long in total the run may spend re-measuring noisy rounds.

    A round is noisy when processes that are not ours used more than `threshold_cores` while the
    machine had less than `idle_cores` left idle: other jobs then took CPU our processes could have
    used. (Other jobs that only use what we leave idle do not change the measurement.)
    """

    threshold_cores: float = 0.35
    idle_cores: float = 0.25
    budget_s: float = 0.0
    retries_per_round: int = 2
    spent_s: float = 0.0

    def noisy(self, other_cores: float, idle_cores: float) -> bool:
        return other_cores > self.threshold_cores and idle_cores < self.idle_cores


@dataclass
class Round:
    results: list[dict[str, Any]]
    cpu_seconds: dict[str, float]  # per process group, over the window
    elapsed_s: float
    other_cores: float
    idle_cores: float = math.nan
    attempts: int = 1


@dataclass
class ColdCursor:
    """Hands out consecutive slices of a range of seeded cold ids, one per round."""

    start: int
    end: int
    slice_size: int
    position: int = field(init=False)

    def __post_init__(self) -> None:
        self.position = self.start

    def take(self) -> tuple[int, int]:
        taken = (self.position, min(self.position + self.slice_size, self.end))
        self.position = taken[1]
        return taken


class Engine:
    def __init__(
        self,
        log_dir: Path,
        pool: GeneratorPool,
        timing: Timing,
        generators: int,
        seed: int,
        quiet: QuietPolicy | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.pool = pool
        self.timing = timing
        self.generators = generators
        self.seed = seed
        self.quiet = quiet or QuietPolicy()
        self.noisy_rounds = 0
        self._serial = itertools.count()
        self._primed: set[tuple[str, str]] = set()

    def cold_cursor(self, start: int, end: int) -> ColdCursor:
        """Slices of a seeded range such that every round, and every retry of a noisy one, reads ids
        nobody read before."""
        retries = self.quiet.retries_per_round if self.quiet.budget_s > 0 else 0
        attempts = self.timing.rounds * (1 + retries)
        return ColdCursor(start, end, (end - start) // attempts)

    def measure(
        self,
        target: Target,
        workload: str,
        concurrency: int,
        *,
        cold: ColdCursor | None = None,
        route_by: str = "shard",
        timing: Timing | None = None,
        on_measure_start: Callable[[], None] | None = None,
        generators: int | None = None,
    ) -> Cell:
        """Every round of one cell in a row (the suite interleaves cells with `run_round`)."""
        timing = timing or self.timing
        rounds = [
            self.run_round(
                target,
                workload,
                concurrency,
                cold=cold,
                route_by=route_by,
                timing=timing,
                on_measure_start=on_measure_start,
                generators=generators,
            )
            for _ in range(timing.rounds)
        ]
        return self.combine(target.system, workload, concurrency, rounds, timing)

    def load(self, target: Target, concurrency: int, cold_range: tuple[int, int]) -> Cell:
        """Read every id of a cold range once (a bounded load, not a measurement: nothing is timed)."""
        timing = Timing(warmup_s=0.0, window_s=3600.0, rounds=1)
        cold = ColdCursor(cold_range[0], cold_range[1], cold_range[1] - cold_range[0])
        done = self._attempt(
            target, "GetState cold", concurrency, cold.take(), "shard", timing, None, None, False
        )
        return summarise(target.system, "GetState cold", concurrency, timing.window_s, done.results)

    def run_round(
        self,
        target: Target,
        workload: str,
        concurrency: int,
        *,
        cold: ColdCursor | None = None,
        route_by: str = "shard",
        timing: Timing | None = None,
        on_measure_start: Callable[[], None] | None = None,
        generators: int | None = None,
        shard_targets: tuple[int, ...] = (),
    ) -> Round:
        timing = timing or self.timing
        attempts = 0
        while True:
            attempts += 1
            cold_range = cold.take() if cold is not None else (0, 0)
            done = self._attempt(
                target,
                workload,
                concurrency,
                cold_range,
                route_by,
                timing,
                on_measure_start,
                generators,
                True,
                shard_targets,
            )
            done.attempts = attempts
            quiet = self.quiet
            noisy = quiet.noisy(done.other_cores, done.idle_cores)
            if noisy:
                self.noisy_rounds += 1
            if not noisy or attempts > quiet.retries_per_round or quiet.spent_s >= quiet.budget_s:
                return done
            pause = 1.0
            time.sleep(pause)
            quiet.spent_s += pause + timing.warmup_s + timing.window_s

    def _attempt(
        self,
        target: Target,
        workload: str,
        concurrency: int,
        cold_range: tuple[int, int],
        route_by: str,
        timing: Timing,
        on_measure_start: Callable[[], None] | None,
        generators: int | None,
        sample_cpu: bool,
        shard_targets: tuple[int, ...] = (),
    ) -> Round:
        rpc, entities = WORKLOADS[workload]
        serial = next(self._serial)
        # Hot ids stay the same from round to round (they must stay cached); new ids never repeat.
        prefix = f"b{self.seed}-{target.system}-{workload}-c{concurrency}".replace(" ", "_")
        if entities == "new":
            prefix += f"-r{serial}"
        prime_key = (prefix, ",".join(target.addresses))
        prime = entities == "hot" and prime_key not in self._primed
        self._primed.add(prime_key)
        count = max(1, min(generators or self.generators, concurrency))
        shares = [concurrency // count + (1 if index < concurrency % count else 0) for index in range(count)]
        workloads = []
        first = 0
        for share in shares:
            workloads.append(
                Workload(
                    targets=target.addresses,
                    rpc=rpc,
                    entities=entities,
                    prefix=prefix,
                    workers=share,
                    first_worker=first,
                    total_workers=concurrency,
                    warmup_s=timing.warmup_s,
                    window_s=timing.window_s,
                    windows=1,
                    prime=prime,
                    cold_start=cold_range[0],
                    cold_end=cold_range[1],
                    seed=self.seed,
                    route_by=route_by,
                    shard_targets=shard_targets,
                )
            )
            first += share
        samples: list[_Sample] = []

        def sample_during_window(started_at: float, generator_pids: list[int]) -> None:
            for instant in (started_at + timing.warmup_s, started_at + timing.warmup_s + timing.window_s):
                time.sleep(max(0.0, instant - time.monotonic()))
                samples.append(_sample(target, generator_pids))
                if on_measure_start is not None and len(samples) == 1:
                    on_measure_start()

        results = self.pool.run(workloads, sample_during_window if sample_cpu else None)
        if len(samples) < 2:
            return Round(results, {}, timing.window_s, math.nan)
        first_sample, last_sample = samples
        elapsed = last_sample.at - first_sample.at
        used = {
            name: max(seconds - first_sample.cpu.get(name, 0.0), 0.0)
            for name, seconds in last_sample.cpu.items()
        }
        machine_cores = (last_sample.machine_busy - first_sample.machine_busy) / elapsed
        other = max(machine_cores - sum(used.values()) / elapsed, 0.0)
        idle = max((os.cpu_count() or 1) - machine_cores, 0.0)
        return Round(results, used, elapsed, other, idle)

    def combine(
        self, system: str, workload: str, concurrency: int, rounds: list[Round], timing: Timing
    ) -> Cell:
        results = [
            {
                "exhausted": any(r.results[i]["exhausted"] for r in rounds),
                "windows": [window for r in rounds for window in r.results[i]["windows"]],
            }
            for i in range(len(rounds[0].results))
        ]
        cell = summarise(system, workload, concurrency, timing.window_s, results)
        operations = sum(sum(int(w["ok"]) for result in r.results for w in result["windows"]) for r in rounds)
        elapsed = sum(r.elapsed_s for r in rounds)
        used: dict[str, float] = {}
        for r in rounds:
            for name, seconds in r.cpu_seconds.items():
                used[name] = used.get(name, 0.0) + seconds
        if used and operations and elapsed:
            cores = {name: seconds / elapsed for name, seconds in used.items()}
            cores["other"] = sum(r.other_cores * r.elapsed_s for r in rounds) / elapsed
            per_op = {name: seconds / operations * 1e6 for name, seconds in used.items()}
            cell.cpu = CpuShares(per_op_us=per_op, cores=cores)
        cell.extra["rounds"] = len(rounds)
        cell.extra["retried_rounds"] = sum(r.attempts - 1 for r in rounds)
        cell.extra["noisy_rounds_kept"] = sum(
            1 for r in rounds if self.quiet.noisy(r.other_cores, r.idle_cores)
        )
        if elapsed and not math.isnan(rounds[0].idle_cores):
            cell.extra["idle_cores"] = sum(r.idle_cores * r.elapsed_s for r in rounds) / elapsed
        cell.extra["generators"] = len(rounds[0].results)
        return cell


@dataclass(frozen=True)
class _Sample:
    at: float
    cpu: dict[str, float]
    machine_busy: float


def _sample(target: Target, generator_pids: list[int]) -> _Sample:
    groups = {**target.process_groups(), "generator": generator_pids}
    cpu = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}
    busy, _total = machine_busy_seconds()
    return _Sample(time.monotonic(), cpu, busy)

"""The stand-alone benchmarks `make bench` also runs: read-side replay and lag, and start-up.

Each runs as its own process (`python -m benchmarks.readside_bench`, `python -m benchmarks.startup`),
with its own stores and processes, and prints one JSON object, which the report renders as a table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1800


def run_json(args: list[str], progress: Callable[[str], None]) -> dict[str, Any]:
    """One stand-alone benchmark's JSON answer; an error names the benchmark and ends with its stderr."""
    progress("running " + " ".join(args))
    finished = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{finished.stderr[-3000:]}")
    answer: dict[str, Any] = json.loads(finished.stdout)
    return answer


def measure_readside(
    stores: tuple[str, ...], events: int, lag_seconds: float, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Replay throughput against the raw call rate, then lag at half the saturation rate, per store."""
    results = []
    for store in stores:
        replay = run_json(
            ["benchmarks.readside_bench", "throughput", "--events", str(events), "--store", store], progress
        )
        lag = run_json(
            [
                "benchmarks.readside_bench",
                "lag",
                "--rate",
                "half",
                "--seconds",
                str(lag_seconds),
                "--store",
                store,
            ],
            progress,
        )
        results.append({"store": store, "replay": replay, "lag": lag})
        progress(
            f"read side on {store}: replay {replay['ratio']} x raw, lag p99 "
            f"{lag['event_to_delivery_ms']['p99']} ms at {lag['commands_per_s']} commands/s"
        )
    return results


def measure_startup(
    events: int, rounds: int, postgres_server: str, progress: Callable[[str], None]
) -> dict[str, Any]:
    result = run_json(
        ["benchmarks.startup", "--events", str(events), "--rounds", str(rounds), "--pg", postgres_server],
        progress,
    )
    progress(
        f"start-up: empty {result['empty']['median_ms']} ms, {result['full']['events']:,} events "
        f"{result['full']['median_ms']} ms"
    )
    return result

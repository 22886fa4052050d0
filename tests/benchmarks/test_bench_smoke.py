"""The benchmark still runs end to end: `python -m benchmarks --quick --store sqlite` prints its table.

Only that it ran is checked; the figures belong to docs/performance.md, not to a test on a shared CI box.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(200)  # about 80 s on a busy two-core machine
def test_quick_benchmark_prints_a_table() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--store", "sqlite"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=190,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    table = finished.stdout
    assert "## Throughput and latency" in table
    for system in ("| floor ", "| echo ", "| node/sqlite "):
        assert system in table
    assert "ProcessCommand hot" in table and "GetState cold" in table


def test_more_or_longer_rounds_seed_more_cold_ids() -> None:
    from benchmarks.__main__ import cold_ids_needed
    from benchmarks.engine import Timing

    default = cold_ids_needed(Timing(warmup_s=0.5, window_s=2.0, rounds=3))
    five_rounds = cold_ids_needed(Timing(warmup_s=0.5, window_s=2.0, rounds=5))
    # every round reads fresh ids for 2.5 s at up to 5,000 reads per second
    assert five_rounds >= 5 * 2.5 * 5_000 > default >= 3 * 2.5 * 5_000

"""The cluster benchmark still runs end to end: both comparisons measured, every call answered.

Only that it ran (and that forwarded commands and workers were served without errors) is checked; the
figures belong to docs/performance.md, not to a test on a shared CI box.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_the_cluster_benchmark_measures_the_hop_and_the_workers(tmp_path: Path) -> None:
    out = tmp_path / "cells.json"
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.cluster_bench", "--rounds", "1", "--warmup", "0.5"]
        + ["--window", "1", "--concurrency", "8", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    cells = json.loads(out.read_text())
    measured = {(cell["system"], cell["workload"]) for cell in cells if cell["throughput"] > 0}
    for system in ("2 members, local", "2 members, forwarded", "one node", "--workers 2"):
        assert (system, "ProcessCommand hot") in measured and (system, "ProcessCommand new") in measured
    assert ("floor + hop", "ProcessCommand") in measured
    assert all(not cell["errors"] for cell in cells), [
        (c["system"], c["errors"]) for c in cells if c["errors"]
    ]
    assert "forwarded ÷ floor + hop" in finished.stdout

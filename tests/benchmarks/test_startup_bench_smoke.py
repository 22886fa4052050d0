"""The start-up benchmark still runs end to end (a small journal); its times are not checked here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(180)
def test_the_startup_benchmark_boots_on_an_empty_and_a_filled_journal() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.startup", "--events", "3000", "--rounds", "1", "--pg", "local"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(finished.stdout)
    assert result["full"]["events"] == 3000  # the bulk write landed in the node's own tables
    for journal in ("empty", "full"):
        assert len(result[journal]["rounds_ms"]) == 1
        assert result[journal]["median_ms"] > 0 and result[journal]["median_cpu_ms"] > 0

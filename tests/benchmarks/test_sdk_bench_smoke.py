"""The SDK benchmark still runs end to end (in process and over gRPC) and prints its table; the figures
belong to docs/performance.md, not to a test on a shared machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(180)
def test_the_sdk_benchmark_prints_both_variants() -> None:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.sdk_in_process",
            "--seconds",
            "0.5",
            "--rounds",
            "1",
            "--concurrency",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "| in process |" in finished.stdout and "| over gRPC |" in finished.stdout
    assert "in process / over gRPC:" in finished.stdout

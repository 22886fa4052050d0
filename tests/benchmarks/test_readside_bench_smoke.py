"""The read-side benchmarks still run end to end (tiny sizes); their figures are not checked here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> dict[str, object]:
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.readside_bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    result: dict[str, object] = json.loads(finished.stdout)
    return result


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_replay_and_lag_benchmarks_run() -> None:
    replay = run("throughput", "--events", "2000", "--raw-seconds", "0.3", "--segment-seconds", "1")
    assert replay["events"] == 2000 and float(str(replay["ratio"])) > 0
    lag = run("lag", "--rate", "50", "--seconds", "1", "--entities", "5")
    assert lag["events"] == 50 and "p99" in str(lag["reply_to_delivery_ms"])

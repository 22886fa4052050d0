"""The console page-time benchmark still runs end to end and every page answers; its figures belong to
docs/console.md. The bound here is loose (a shared CI box), the target of 200 ms is the benchmark's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(150)
def test_console_page_times_are_measured_with_ten_thousand_events_and_eighty_projections() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.console_pages", "--rounds", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    rows = [line for line in finished.stdout.splitlines() if line.startswith("| ") and "| 200 |" in line]
    assert len(rows) == 9, finished.stdout
    medians = {row.split("|")[1].strip(): float(row.split("|")[3]) for row in rows}
    assert "entity, last page of 10,000" in medians
    slow = {page: median for page, median in medians.items() if median > 2000}
    assert not slow, f"pages far over the 200 ms target even for a busy machine: {slow}"

"""benchmarks.compare: each run's ratios come from its own floor and echo server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.compare import main, ratios


def report(floor: float, hot: float, new: float, echo: float, cached: float) -> dict[str, object]:
    def cell(system: str, workload: str, throughput: float, p99: float) -> dict[str, object]:
        return {
            "system": system,
            "workload": workload,
            "concurrency": 64,
            "throughput": throughput,
            "p99_ms": p99,
        }

    return {
        "cells": [
            cell("floor", "ProcessCommand", floor, 40.0),
            cell("echo", "GetState", echo, 10.0),
            cell("node/postgres", "ProcessCommand hot", hot, 50.0),
            cell("node/postgres", "ProcessCommand new", new, 60.0),
            cell("node/postgres", "GetState cached", cached, 12.0),
        ]
    }


def test_ratios_are_taken_against_the_same_runs_references() -> None:
    figures = ratios(report(1000, 900, 800, 4000, 3600), 64)
    assert figures == pytest.approx(
        {
            "hot ÷ floor": 0.9,
            "hot p99 ÷ floor p99": 1.25,
            "new ÷ floor": 0.8,
            "new p99 ÷ floor p99": 1.5,
            "GetState cached ÷ echo": 0.9,
        }
    )


def test_the_table_gives_medians_and_their_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for name, hot in (("b1", 800), ("b2", 900), ("b3", 850), ("a1", 950)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(report(1000, hot, 800, 4000, 3600)))
        paths.append(str(path))
    assert main(["--before", *paths[:3], "--after", paths[3]]) == 0
    hot_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| hot ÷ floor"))
    assert hot_row == "| hot ÷ floor | 0.80, 0.90, 0.85 | 0.95 | 0.85 | 0.95 | +0.10 |"

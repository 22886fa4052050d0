"""The lone-client targets `make bench` prints: a p50 budget of the floor's plus one durable commit."""

from __future__ import annotations

from benchmarks.report import Report, render, report_from_json
from benchmarks.results import Cell


def cell(system: str, workload: str, concurrency: int, throughput: float, p50_ms: float) -> Cell:
    return Cell(system, workload, concurrency, throughput, p50_ms, p50_ms * 2, p50_ms * 3, 100, {}, False)


def lone_report(node_p50_ms: float, node_throughput: float) -> Report:
    return Report(
        cells=[
            cell("floor", "ProcessCommand hot", 1, 400.0, 2.5),
            cell("node/postgres", "ProcessCommand hot", 1, node_throughput, node_p50_ms),
        ],
        commit_probe={1: {"commits": 500, "p50_ms": 1.0, "p99_ms": 3.0}},
    )


def target_lines(report: Report) -> list[str]:
    return [line for line in render(report).splitlines() if "ProcessCommand hot c=1" in line]


def test_a_node_within_the_floor_plus_one_commit_meets_the_lone_client_targets() -> None:
    p50, throughput = target_lines(lone_report(node_p50_ms=3.7, node_throughput=330.0))
    assert "= 3.80" in p50 and "| yes" in p50  # 2.5 + 1.0 + 0.3
    assert "0.82" in throughput and "| yes" in throughput


def test_a_node_over_the_budget_or_below_the_throughput_share_is_marked_not_met() -> None:
    p50, throughput = target_lines(lone_report(node_p50_ms=3.9, node_throughput=310.0))
    assert "| NO" in p50 and "+1.40" in p50
    assert "0.78" in throughput and "| NO" in throughput


def test_the_commit_probe_survives_a_json_round_trip() -> None:
    report = lone_report(node_p50_ms=3.7, node_throughput=330.0)
    again = report_from_json(
        {"cells": [vars(c) for c in report.cells], "commit_probe": {"1": report.commit_probe[1]}}
    )
    assert again.commit_probe == report.commit_probe
    assert "## Single-row PostgreSQL commit" in render(again)

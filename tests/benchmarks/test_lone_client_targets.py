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


def test_the_read_side_and_start_up_tables_say_which_targets_are_met() -> None:
    replay = {
        "events": 100_000,
        "delivered_events_per_s": 1_800,
        "raw_unary_calls_per_s": 1_900,
        "ratio": 0.947,
        "node_cpu_ms_per_1000_events": 210.0,
        "raw_client_cpu_ms_per_1000_calls": 200.0,
    }
    lag = {
        "commands_per_s": 300.0,
        "saturation_commands_per_s": 600.0,
        "event_to_delivery_ms": {"p50": 6.0, "p99": 72.5},
    }
    startup = {
        "first_boot_ms": 900.0,
        "empty": {"median_ms": 610.0, "median_cpu_ms": 420.0, "rounds_ms": [600.0, 610.0, 650.0]},
        "full": {"median_ms": 1_250.0, "median_cpu_ms": 430.0, "rounds_ms": [1_250.0], "events": 1_000_000},
        "load_average": [1.0, 1.0, 1.0],
    }
    text = render(Report(readside=[{"store": "sqlite", "replay": replay, "lag": lag}], startup=startup))
    (sqlite,) = [line for line in text.splitlines() if line.startswith("| sqlite")]
    assert "0.95" in sqlite and "| yes" in sqlite  # replay at or above 0.9 of the raw rate
    assert "6.0 / 72.5" in sqlite and sqlite.rstrip(" |").endswith("NO")  # lag p99 over 50 ms
    (empty,) = [line for line in text.splitlines() if line.startswith("| 0 events")]
    (full,) = [line for line in text.splitlines() if line.startswith("| 1,000,000 events")]
    assert "610" in empty and "| yes" in empty
    assert "1,250" in full and "| NO" in full

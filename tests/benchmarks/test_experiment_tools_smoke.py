"""The experiment tools of benchmarks/ still run (tiny sizes); their figures belong to
docs/performance.md, so only their shape is checked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import PgServer

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> str:
    finished = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=110
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stdout


@pytest.mark.timeout(60)
def test_command_path_cost_reports_every_workload() -> None:
    out = run("benchmarks.command_path_cost", "--commands", "500")
    costs = dict(re.findall(r"(?:ProcessCommand|GetState) (hot|new|cached|forwarded): ([0-9.]+) µs", out))
    assert set(costs) == {"hot", "new", "cached", "forwarded"}
    assert all(float(cost) > 0 for cost in costs.values())


@pytest.mark.timeout(100)
def test_microbench_reports_the_request_cost_at_capacity_and_the_memory_per_entity() -> None:
    out = run("benchmarks.microbench")
    assert re.search(r"\| 100,000 \| [0-9.]+ µs \|", out), out
    per_entity = re.search(r"\| EntityHost, states as recovered \| ([0-9]+) B \| (-?[0-9]+) B \|", out)
    assert per_entity is not None, out
    assert int(per_entity.group(1)) > 0
    assert int(per_entity.group(2)) < 1024  # the bound on a cached entity's overhead beyond its state


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_node_load_measures_a_node_on_postgres(pg_server: PgServer) -> None:
    out = run(
        "benchmarks.node_load",
        *("--workload", "new", "--concurrency", "4", "--seconds", "1", "--warmup", "0.5"),
        *("--pg-host", pg_server.host, "--pg-port", str(pg_server.port), "--pg-user", pg_server.user),
    )
    found = re.search(r"new c=4: ([0-9,]+) ops/s .* batch ([0-9.]+) .* node ([0-9]+) ", out)
    assert found is not None, out
    assert int(found.group(1).replace(",", "")) > 0
    assert float(found.group(2)) >= 1.0  # every command appended, in batches of one or more


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_subscription_fanout_reports_delivery_against_bare_grpc_and_the_cost_to_commands() -> None:
    out = run(
        "benchmarks.subscription_fanout",
        *("--duration", "0.5", "--concurrency", "2", "--subscribers", "1,3"),
    )
    delivery = re.findall(r"^\| ([0-9]+) \| ([0-9,]+) \| ([0-9,]+) \| ([0-9.]+) \| ([0-9.]+) \|", out, re.M)
    assert [row[0] for row in delivery] == ["1", "3"], out
    assert all(int(row[2].replace(",", "")) > 0 for row in delivery), out  # the bare server streamed
    assert all(float(row[4]) > 0.9 for row in delivery), out  # every subscriber got (nearly) every event
    commands = re.findall(
        r"^\| ([0-9]+) \| ([0-9,]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| [0-9]+% \|$", out, re.M
    )
    assert [row[0] for row in commands] == ["0", "1", "3", "0"], out
    assert "1.00" in (commands[0][2], commands[3][2]), out  # the better run alone is the baseline
    assert all(int(row[1].replace(",", "")) > 0 for row in commands), out


@pytest.mark.timeout(60)
def test_otlp_metrics_cost_reports_the_node_against_the_sdk() -> None:
    out = run("benchmarks.otlp_metrics_cost", "--calls", "2000", "--repeats", "2")
    found = re.search(r"node ([0-9.]+) µs, OpenTelemetry SDK instrument ([0-9.]+) µs", out)
    assert found is not None and float(found.group(1)) > 0 and float(found.group(2)) > 0
    assert re.search(r"node ÷ SDK: [0-9.]+", out)


@pytest.mark.timeout(60)
def test_forward_hop_cost_reports_both_ways_of_forwarding() -> None:
    out = run("benchmarks.forward_hop_cost", "--requests", "640", "--rounds", "1")
    costs = dict(re.findall(r"forwarding hop, (unary call per request|stream): ([0-9.]+) µs", out))
    assert set(costs) == {"unary call per request", "stream"}, out
    assert all(float(cost) > 0 for cost in costs.values())

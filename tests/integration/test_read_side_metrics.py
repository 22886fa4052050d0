"""Read-side series in a real Prometheus scrape: deliveries, offsets, journal heads, lag (in events and in
seconds) and states."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chiefofstate.cli.processes import Process, start_bank_read_handler
from chiefofstate.gen.chief_of_state.v1 import manager_pb2 as mpb
from tests.integration.conftest import NodeFactory
from tests.support.readside_processes import (
    FAST,
    DeliveryLog,
    cos,
    manager,
    open_and_deposit,
    read_side,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)]


@pytest.fixture
def deliveries(tmp_path: Path) -> DeliveryLog:
    return DeliveryLog(tmp_path / "deliveries.jsonl")


@pytest.fixture
def read_handler(tmp_path: Path, deliveries: DeliveryLog) -> Iterator[Process]:
    process = start_bank_read_handler(tmp_path / "logs", None, http=False, deliveries=deliveries.path)
    yield process
    process.stop()


def scrape(node: Process) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = httpx.get(f"http://127.0.0.1:{node.ports['metrics']}/metrics", timeout=5).text
    series: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return series


def test_read_side_metrics_follow_deliveries(
    node_factory: NodeFactory, read_handler: Process, deliveries: DeliveryLog
) -> None:
    node = node_factory(
        **FAST, **read_side("balances", read_handler.ports["read_side"]), COS_HEALTH_CHECK_INTERVAL="200ms"
    )
    opened, stub = cos(node)
    with opened:
        revisions = {
            account: open_and_deposit(stub, account, deposits=2) for account in ("rm-1", "rm-2", "rm-3")
        }
    total = sum(revisions.values())
    deliveries.wait_until(lambda log: len(log.all("balances")) >= total, what="every event delivered")

    def caught_up() -> bool:
        series = scrape(node)
        lags = series.get("cos_read_side_lag_events", {})
        offsets = series.get("cos_read_side_offset", {})
        return bool(lags) and all(value == 0 for value in lags.values()) and sum(offsets.values()) > 0

    wait_for(caught_up, what="offsets stored and lag back to 0")
    text = httpx.get(f"http://127.0.0.1:{node.ports['metrics']}/metrics", timeout=5).text
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert len(families) == len(set(families)), "a metric family is exposed twice"
    documented = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    # prometheus_client adds a `_created` family (a start time) beside each counter and histogram
    own = [family for family in families if not family.endswith("_created")]
    undocumented = [family for family in own if f"`{family}`" not in documented]
    assert not undocumented, f"document {undocumented} in docs/operations.md"
    series = scrape(node)
    assert series["cos_read_side_events_delivered_total"][(("read_side", "balances"),)] >= total
    assert series["cos_read_side_projections"][(("read_side", "balances"), ("state", "running"))] == 16
    heads = series["cos_read_side_journal_head"]
    offsets = series["cos_read_side_offset"]
    assert len(heads) == 16 and heads == offsets  # every shard processed up to its newest event
    assert max(heads.values()) > 0
    lag_seconds = series["cos_read_side_lag_seconds"]
    assert set(lag_seconds) == set(heads) and set(lag_seconds.values()) == {0.0}  # caught up everywhere

    # Paused, the shard's new event waits: its age is the lag in seconds, growing until resumed.
    opened, stub = cos(node)
    with opened:
        manager(opened).PauseReadSide(mpb.PauseReadSideRequest(read_side_id="balances"), timeout=10)
        open_and_deposit(stub, "rm-1", deposits=1)

    def waiting() -> list[float]:
        return [value for value in scrape(node)["cos_read_side_lag_seconds"].values() if value > 0]

    wait_for(lambda: len(waiting()) == 1, what="one shard behind")
    first = waiting()[0]
    wait_for(lambda: waiting()[0] > first, what="the lag in seconds to grow while paused")
    opened, stub = cos(node)
    with opened:
        manager(opened).ResumeReadSide(mpb.ResumeReadSideRequest(read_side_id="balances"), timeout=10)
    wait_for(lambda: not waiting(), what="lag back to 0 seconds after resuming")
    grpc_series = scrape(node)["grpc_server_handled_total"]
    paused = (
        ("grpc_code", "OK"),
        ("grpc_method", "PauseReadSide"),
        ("grpc_service", "chief_of_state.v1.ReadSideManagerService"),
        ("grpc_type", "unary"),
    )
    assert grpc_series[paused] == 1  # the manager's calls are counted like every other service's

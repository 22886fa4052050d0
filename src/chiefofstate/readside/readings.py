"""Read-side counts that Prometheus reads at scrape time: projections by state (a halted one is visible
until an operator acts, decision D7) and events delivered and skipped per read side."""

from __future__ import annotations

from chiefofstate.readside.runtime import ReadSideRuntime
from chiefofstate.telemetry.metrics import NodeMetrics


def register_read_side_readings(metrics: NodeMetrics, runtime: ReadSideRuntime) -> None:
    metrics.read_at_scrape(
        "cos_read_side_projections",
        "Projections on this node by read side and state (running, paused, halted, stopped, restarting).",
        runtime.state_counts,
    )
    metrics.read_at_scrape(
        "cos_read_side_events_delivered",
        "Events the read handler accepted, by read side.",
        lambda: runtime.event_counts("delivered"),
        monotonic=True,
    )
    metrics.read_at_scrape(
        "cos_read_side_events_skipped",
        "Events skipped under SKIP or REPLAY_SKIP after failed deliveries, by read side.",
        lambda: runtime.event_counts("skipped"),
        monotonic=True,
    )

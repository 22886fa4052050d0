"""Read-side offsets, journal heads and lag for Prometheus, refreshed by one owned task (a scrape cannot
wait for the database); states and delivery counts are read at scrape time (register_read_side_readings).

Lag in seconds is how long the oldest unprocessed event of the shard has waited: now minus the write
time of the first event after the stored offset, 0 when there is none. It comes from the same status
query as the lag in events, so both describe one moment (the refresh), and it keeps growing while a
projection is paused, halted or failing, however long the shard was idle before that event."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from chiefofstate.aio.tasks import cancel_and_wait
from chiefofstate.core.errors import CosError
from chiefofstate.readside.runtime import ReadSideRuntime, ReadSideView, ShardView
from chiefofstate.telemetry.metrics import NodeMetrics, Samples

log = logging.getLogger("chiefofstate.metrics")


class ReadSideGauges:
    def __init__(
        self,
        runtime: ReadSideRuntime,
        metrics: NodeMetrics,
        refresh_s: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._runtime = runtime
        self._refresh_s = refresh_s
        self._wall_clock = wall_clock
        self._views: list[ReadSideView] = []
        self._refreshed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        metrics.read_at_scrape(
            "cos_read_side_offset", "Stored offset (journal ordering) per shard.", self._offsets
        )
        metrics.read_at_scrape(
            "cos_read_side_journal_head", "Newest journal ordering per shard.", self._heads
        )
        metrics.read_at_scrape(
            "cos_read_side_lag_events",
            "Events of the shard not yet processed (counted up to a cap).",
            self._lags,
        )
        metrics.read_at_scrape(
            "cos_read_side_lag_seconds",
            "Age of the oldest event of the shard not yet processed; 0 when caught up.",
            self._lag_seconds,
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever(), name="read-side-gauges")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def refresh(self) -> None:
        views = await self._runtime.views()
        self._views, self._refreshed_at = views, self._wall_clock()

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except CosError as error:  # the store is away: keep the last values, try again later
                log.debug("read-side gauges not refreshed: %s", error)
            await asyncio.sleep(self._refresh_s)

    def _per_shard(self, value: Callable[[ShardView], float]) -> Samples:
        return [
            ({"read_side": view.settings.read_side_id, "shard": str(shard.shard)}, float(value(shard)))
            for view in self._views
            for shard in view.shards
        ]

    def _offsets(self) -> Samples:
        return self._per_shard(lambda shard: shard.offset or 0)

    def _heads(self) -> Samples:
        return self._per_shard(lambda shard: shard.head)

    def _lags(self) -> Samples:
        return self._per_shard(lambda shard: shard.lag.events)

    def _lag_seconds(self) -> Samples:
        return self._per_shard(lambda shard: lag_seconds(shard, self._refreshed_at))


def lag_seconds(shard: ShardView, now: float) -> float:
    """0 when caught up; NaN (unknown) when the waiting event has no write time (rows written by old
    upstream versions); never negative when the writing node's clock runs ahead of ours."""
    if shard.lag.events == 0:
        return 0.0
    if shard.oldest_pending_ms is None:
        return math.nan
    return max(0.0, now - shard.oldest_pending_ms / 1000)


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
